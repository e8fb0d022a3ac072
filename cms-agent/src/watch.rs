//! The daemon's side of the watch channel: a task that holds a `Watch`
//! stream open and passes the server's converge-now commands to the daemon
//! over a channel, which is one of the daemon's event sources. When the
//! stream breaks it reconnects with exponential backoff and full jitter, so
//! a restarted server is not hit by the whole fleet at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cms_proto::v1 as pb;

use crate::client::{Connectors, ServerAddress};
use crate::identity::load_identity;
use crate::schedule::{MAX_ATTEMPT, backoff_delay, jitter_seed};

/// A converge the server asked for over the watch channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConvergeRequest {
    /// The fleet trigger that asked; empty for a run of the agent's own
    /// schedule.
    pub trigger_id: String,
    pub noop: bool,
}

/// How long the agent waits for a first heartbeat before it gives up on a
/// silent server; afterwards three of the server's announced intervals.
const FIRST_HEARTBEAT_WAIT: Duration = Duration::from_secs(90);

/// Holds a watch stream open and passes converge-now commands on, until the
/// daemon drops its receiver.
pub async fn watch_loop(
    state_dir: PathBuf,
    server: String,
    connectors: Connectors,
    requests: tokio::sync::mpsc::Sender<ConvergeRequest>,
) {
    let seed = jitter_seed();
    let mut attempt = 0u32;
    loop {
        match watch_once(&state_dir, &server, &connectors, &requests, &mut attempt).await {
            Ok(()) => {}
            Err(error) if attempt == 0 => {
                tracing::warn!("the watch stream ended: {error:#}; reconnecting");
            }
            Err(_) => {}
        }
        if requests.is_closed() {
            return;
        }
        tokio::time::sleep(backoff_delay(attempt, seed)).await;
        attempt = (attempt + 1).min(MAX_ATTEMPT);
    }
}

async fn watch_once(
    state_dir: &Path,
    server: &str,
    connectors: &Connectors,
    requests: &tokio::sync::mpsc::Sender<ConvergeRequest>,
    attempt: &mut u32,
) -> anyhow::Result<()> {
    let dir = state_dir.to_path_buf();
    let identity = tokio::task::spawn_blocking(move || load_identity(&dir))
        .await??
        .context("not enrolled")?;
    let address = ServerAddress::parse(server)?;
    let mut channel = connectors
        .for_identity(&address, &identity)?
        .open_watch()
        .await?;
    let mut patience = FIRST_HEARTBEAT_WAIT;
    loop {
        let event = tokio::time::timeout(patience, channel.next_event())
            .await
            .map_err(|_| anyhow::anyhow!("the server sent nothing for {patience:?}"))??;
        match event.event {
            Some(pb::watch_event::Event::Heartbeat(beat)) => {
                // The server answered: the next break starts the backoff
                // afresh.
                *attempt = 0;
                if beat.interval_seconds > 0 {
                    patience = Duration::from_secs(3 * u64::from(beat.interval_seconds));
                }
            }
            Some(pb::watch_event::Event::ConvergeNow(command)) => {
                *attempt = 0;
                let _ = requests
                    .send(ConvergeRequest {
                        trigger_id: command.trigger_id,
                        noop: command.noop,
                    })
                    .await;
            }
            Some(pb::watch_event::Event::Refused(refused)) => {
                bail!("the server refused the watch channel: {}", refused.message)
            }
            None => {}
        }
    }
}
