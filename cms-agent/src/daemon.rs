//! The daemon (`cms-agent run`) as a loop over events, in the style of
//! rust-analyzer's main loop: [`Daemon::next_event`] waits for whichever
//! comes first (the scheduled run, queued reports coming due, the
//! certificate coming due for renewal, a converge-now from the watch
//! channel, a signal) and [`Daemon::handle_event`] does what it says. All
//! the daemon's state is in [`Daemon`]; all its I/O is behind [`Runner`],
//! which [`ServerRunner`] implements with the real server and state
//! directory, and the tests with a double.
//!
//! What the daemon does: converge at boot (enrolling first when there is a
//! token and no identity), then every interval plus this node's splay,
//! until SIGTERM or Ctrl-C. A failed run is reported and the next one comes
//! on schedule. Meanwhile it holds a watch channel open (`watch`): a
//! converge-now from the server runs at once, or right after the run in
//! progress. Reports the server did not take are offered again with backoff
//! and jitter. The certificate is renewed when two thirds of its lifetime
//! have passed, and a node whose certificate expired enrolls again.
//!
//! The daemon owns its clock: every time it waits for is tokio's `Instant`
//! plus a duration from `schedule`, and the wall clock it compares
//! certificate dates with is a [`WallClock`], so tests run it with paused
//! time.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::client::{Connectors, ServerAddress};
use crate::clock::WallClock;
use crate::config::AgentConfig;
use crate::output::{Format, Terminal, print_report};
use crate::schedule::{
    ENROLL_BACKOFF_START, FAR, MAX_ATTEMPT, NOTHING_QUEUED, between_runs, delivery_retry_wait,
    enroll_retry_wait, expired, next_enroll_backoff, renewal_retry_wait, renewal_wait, reseed,
};
pub use crate::watch::ConvergeRequest;

/// Everything the daemon reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The scheduled run is due: at boot, every interval plus the splay,
    /// and, before enrollment, each new enrollment attempt.
    Tick,
    /// The server asked for a run over the watch channel (`trigger_id` is
    /// the fleet trigger's; `noop` for a dry run).
    ConvergeNow { trigger_id: String, noop: bool },
    /// Reports the server has not taken yet are due to be offered again.
    DeliverReports,
    /// The node certificate is due for renewal.
    Renew,
    /// SIGTERM or Ctrl-C: stop.
    Shutdown,
}

/// What the daemon knows of the node's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The certificate itself (its hash is the node's splay).
    pub pem: String,
    /// The end of its validity (Unix seconds), if it parses.
    pub not_after: Option<i64>,
    /// When it is due for renewal (Unix seconds), if that can be worked out.
    pub renewal_due: Option<i64>,
}

/// The daemon's I/O: the node's identity, the server, the state directory.
/// One implementation talks to the server ([`ServerRunner`]); the tests
/// have a double. Errors a method returns as `Err` stop the daemon, as an
/// unreadable state directory did before; failures the daemon retries are
/// values.
pub(crate) trait Runner {
    /// The node's certificate; `None` before enrollment.
    async fn certificate(&mut self) -> anyhow::Result<Option<Certificate>>;
    /// Moves an expired identity aside, so the node enrolls again.
    async fn retire_identity(&mut self) -> anyhow::Result<()>;
    /// Enrolls with `server`; returns the node id the server gave.
    async fn enroll(&mut self, server: &str, token: &str) -> anyhow::Result<String>;
    /// The server recorded at enrollment.
    async fn enrolled_server(&mut self) -> Option<String>;
    /// Starts holding the watch channel to `server` open, passing the
    /// server's converge-now requests to `requests`.
    fn watch(&mut self, server: &str, requests: mpsc::Sender<ConvergeRequest>) -> JoinHandle<()>;
    /// One run: pull, converge, queue and deliver the report, and show it.
    async fn converge(&mut self, server: &str, request: &ConvergeRequest) -> anyhow::Result<()>;
    /// Whether reports wait for the server.
    async fn reports_queued(&mut self) -> bool;
    /// Offers the queued reports; the inner result is the server's answer
    /// (how many it took), the outer one whether the state could be read.
    async fn deliver_reports(&mut self, server: &str) -> anyhow::Result<anyhow::Result<usize>>;
    /// Renews the certificate; returns its new end of validity.
    async fn renew(&mut self, server: &str) -> anyhow::Result<i64>;
}

/// Where the daemon is between events.
#[derive(Debug)]
enum Phase {
    /// At boot, or waiting to enroll again after a refusal: nothing but
    /// the run at `at` and a shutdown happens until then.
    Starting { at: Instant },
    /// Enrolled, between runs: the next scheduled run is at `next_run`.
    Between { next_run: Instant, server: String },
}

/// Whether the loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// The daemon's state, and the one function that changes it.
pub(crate) struct Daemon<R> {
    runner: R,
    config: AgentConfig,
    clock: WallClock,
    /// This node's jitter, drawn once at start.
    seed: u64,
    phase: Phase,
    /// Converge-now requests from the watch task.
    requests: mpsc::Receiver<ConvergeRequest>,
    requests_sender: mpsc::Sender<ConvergeRequest>,
    /// Signals, from a task that listens for them.
    shutdown: mpsc::Receiver<()>,
    watcher: Option<JoinHandle<()>>,
    /// A converge-now that waits for enrollment to succeed.
    pending: Option<ConvergeRequest>,
    enroll_backoff: std::time::Duration,
    enroll_attempt: u32,
    delivery_attempt: u32,
    renewal_failures: u64,
    /// After a failed renewal, nothing but a shutdown is heard until then.
    hold_until: Option<Instant>,
}

impl<R: Runner> Daemon<R> {
    /// A daemon that starts with a run at once. `shutdown` receiving (or
    /// its senders all going away) stops it.
    pub(crate) fn new(
        runner: R,
        config: AgentConfig,
        clock: WallClock,
        seed: u64,
        shutdown: mpsc::Receiver<()>,
    ) -> Daemon<R> {
        let (requests_sender, requests) = mpsc::channel(16);
        Daemon {
            runner,
            config,
            clock,
            seed,
            phase: Phase::Starting { at: Instant::now() },
            requests,
            requests_sender,
            shutdown,
            watcher: None,
            pending: None,
            enroll_backoff: ENROLL_BACKOFF_START,
            enroll_attempt: 0,
            delivery_attempt: 0,
            renewal_failures: 0,
            hold_until: None,
        }
    }

    /// Handles events until one says stop.
    pub(crate) async fn run(mut self) -> anyhow::Result<()> {
        let result = loop {
            let event = self.next_event().await;
            match self.handle_event(event).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        result
    }

    /// Waits for the next event.
    async fn next_event(&mut self) -> Event {
        if let Some(until) = self.hold_until.take() {
            tokio::select! {
                _ = sleep_until(until) => {}
                _ = self.shutdown.recv() => return Event::Shutdown,
            }
        }
        let next_run = match &self.phase {
            Phase::Starting { at } => {
                let at = *at;
                return tokio::select! {
                    biased;
                    _ = self.shutdown.recv() => Event::Shutdown,
                    _ = sleep_until(at) => Event::Tick,
                };
            }
            Phase::Between { next_run, .. } => *next_run,
        };
        let renew_at = self.renewal_at().await;
        // Reports the server did not take are offered again soon, with
        // backoff and jitter, not only at the next run.
        let deliver_at = if self.runner.reports_queued().await {
            Instant::now() + delivery_retry_wait(self.delivery_attempt, self.seed)
        } else {
            next_run + NOTHING_QUEUED
        };
        tokio::select! {
            biased;
            _ = self.shutdown.recv() => Event::Shutdown,
            request = self.requests.recv() => match request {
                Some(ConvergeRequest { trigger_id, noop }) => Event::ConvergeNow { trigger_id, noop },
                None => Event::Tick,
            },
            _ = sleep_until(next_run) => Event::Tick,
            _ = sleep_until(renew_at) => Event::Renew,
            _ = sleep_until(deliver_at) => Event::DeliverReports,
        }
    }

    /// When to renew the certificate; far away when there is none.
    async fn renewal_at(&mut self) -> Instant {
        match self.runner.certificate().await {
            Ok(Some(Certificate {
                renewal_due: Some(due),
                ..
            })) => Instant::now() + renewal_wait(due, self.clock.unix_secs()),
            _ => Instant::now() + FAR,
        }
    }

    /// Does what `event` says.
    pub(crate) async fn handle_event(&mut self, event: Event) -> anyhow::Result<Flow> {
        match event {
            Event::Shutdown => return Ok(Flow::Stop),
            Event::Tick => self.run_once().await?,
            Event::ConvergeNow { trigger_id, noop } => {
                self.pending = Some(ConvergeRequest { trigger_id, noop });
                self.run_once().await?;
            }
            Event::DeliverReports => self.deliver().await?,
            Event::Renew => self.renew().await,
        }
        Ok(Flow::Continue)
    }

    /// A run: enroll first when needed (an expired certificate is retired
    /// first), make sure the watch channel is held, converge, and schedule
    /// the next run.
    async fn run_once(&mut self) -> anyhow::Result<()> {
        if let Some(certificate) = self.runner.certificate().await?
            && certificate
                .not_after
                .is_some_and(|end| expired(end, self.clock.unix_secs()))
            && self.config.token.is_some()
        {
            eprintln!(
                "the node certificate has expired (the agent was away too long): enrolling again"
            );
            self.runner.retire_identity().await?;
            if let Some(watcher) = self.watcher.take() {
                watcher.abort();
            }
        }
        if self.runner.certificate().await?.is_none() {
            let (Some(server), Some(token)) =
                (self.config.server.clone(), self.config.token.clone())
            else {
                bail!(
                    "Failed to start: this agent is not enrolled and its configuration has no server and token\nhint: set server and token (or token_file) in /etc/cms/agent.toml, or run cms-agent enroll"
                );
            };
            match self.runner.enroll(&server, &token).await {
                Ok(node_id) => tracing::info!("enrolled as {node_id}"),
                Err(error) => {
                    // Jittered, so a fleet refused at once does not come
                    // back at once.
                    let wait =
                        enroll_retry_wait(self.enroll_backoff, self.enroll_attempt, self.seed);
                    tracing::error!("{error:#}; retrying in {} s", wait.as_secs());
                    self.phase = Phase::Starting {
                        at: Instant::now() + wait,
                    };
                    self.enroll_backoff = next_enroll_backoff(self.enroll_backoff);
                    self.enroll_attempt = self.enroll_attempt.saturating_add(1);
                    return Ok(());
                }
            }
        }
        let server = match self.config.server.clone() {
            Some(server) => Some(server),
            None => self.runner.enrolled_server().await,
        }
        .context("Failed to find the server: set `server` in /etc/cms/agent.toml")?;
        if self.watcher.as_ref().is_none_or(|w| w.is_finished()) {
            self.watcher = Some(self.runner.watch(&server, self.requests_sender.clone()));
        }
        let request = self.pending.take().unwrap_or_default();
        if !request.trigger_id.is_empty() {
            tracing::info!(
                "converging now for trigger {}{}",
                request.trigger_id,
                if request.noop { " (noop)" } else { "" }
            );
        }
        if let Err(error) = self.runner.converge(&server, &request).await {
            tracing::error!("{error:#}");
        }
        // The first run at boot is never delayed; later ones come every
        // interval plus this node's splay, or at once when asked.
        let certificate = match self.runner.certificate().await {
            Ok(Some(certificate)) => certificate.pem,
            _ => String::new(),
        };
        self.phase = Phase::Between {
            next_run: Instant::now()
                + between_runs(self.config.interval, &certificate, self.config.splay),
            server,
        };
        self.delivery_attempt = 0;
        Ok(())
    }

    /// Offers the queued reports again.
    async fn deliver(&mut self) -> anyhow::Result<()> {
        let Phase::Between { server, .. } = &self.phase else {
            return Ok(());
        };
        match self.runner.deliver_reports(server).await? {
            Ok(count) => {
                tracing::info!("delivered {count} queued report(s)");
                self.delivery_attempt = 0;
            }
            Err(_) => self.delivery_attempt = (self.delivery_attempt + 1).min(MAX_ATTEMPT),
        }
        Ok(())
    }

    /// Renews the certificate; after a failure, pauses a little before
    /// anything else, then tries again (it is still due).
    async fn renew(&mut self) {
        let Phase::Between { server, .. } = &self.phase else {
            return;
        };
        match self.runner.renew(server).await {
            Ok(not_after) => tracing::info!(
                "renewed the node certificate; it is valid until {not_after} (Unix time)"
            ),
            Err(error) => {
                tracing::warn!(
                    "Failed to renew the node certificate: {error:#}; trying again soon"
                );
                self.renewal_failures += 1;
                self.hold_until = Some(
                    Instant::now() + renewal_retry_wait(reseed(self.seed, self.renewal_failures)),
                );
            }
        }
    }
}

/// The daemon with the real server: `cms-agent run`.
pub async fn run_daemon(
    state_dir: &Path,
    config: AgentConfig,
    terminal: Terminal,
) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop, shutdown) = mpsc::channel(1);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop.send(()).await;
    });
    let runner = ServerRunner {
        state_dir: state_dir.to_path_buf(),
        metadata_endpoint: config.metadata_endpoint.clone(),
        textfile: config.textfile.clone(),
        terminal,
        connectors: Connectors::new(),
    };
    Daemon::new(
        runner,
        config,
        WallClock::System,
        crate::schedule::jitter_seed(),
        shutdown,
    )
    .run()
    .await
}

/// The daemon's I/O with the real server and state directory. Its one
/// [`Connectors`] serves every run, delivery, renewal and watch channel, so
/// they resume each other's TLS sessions.
pub struct ServerRunner {
    state_dir: PathBuf,
    metadata_endpoint: Option<String>,
    textfile: crate::textfile::Textfile,
    terminal: Terminal,
    connectors: Connectors,
}

impl ServerRunner {
    /// Runs blocking work on the state directory off the runtime's workers.
    async fn with_state<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Path) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || work(&dir)).await?
    }
}

impl Runner for ServerRunner {
    async fn certificate(&mut self) -> anyhow::Result<Option<Certificate>> {
        self.with_state(|dir| {
            let Some(identity) = crate::identity::load_identity(dir)? else {
                return Ok(None);
            };
            let pem = identity.certificate_pem;
            let received = crate::identity::certificate_received_unix(dir).unwrap_or(0);
            Ok(Some(Certificate {
                not_after: crate::identity::certificate_validity(&pem)
                    .ok()
                    .map(|(_, not_after)| not_after),
                renewal_due: crate::identity::renewal_due_unix(&pem, received).ok(),
                pem,
            }))
        })
        .await
    }

    async fn retire_identity(&mut self) -> anyhow::Result<()> {
        self.with_state(|dir| Ok(crate::identity::retire_identity(dir)?))
            .await
    }

    async fn enroll(&mut self, server: &str, token: &str) -> anyhow::Result<String> {
        let response = crate::remote::enroll_instance(
            &self.state_dir,
            server,
            token,
            None,
            None,
            self.metadata_endpoint.clone(),
        )
        .await?;
        Ok(response.node_id)
    }

    async fn enrolled_server(&mut self) -> Option<String> {
        self.with_state(|dir| Ok(crate::remote::enrolled_server(dir)))
            .await
            .ok()
            .flatten()
    }

    fn watch(&mut self, server: &str, requests: mpsc::Sender<ConvergeRequest>) -> JoinHandle<()> {
        tokio::spawn(crate::watch::watch_loop(
            self.state_dir.clone(),
            server.to_string(),
            self.connectors.clone(),
            requests,
        ))
    }

    async fn converge(&mut self, server: &str, request: &ConvergeRequest) -> anyhow::Result<()> {
        let report = crate::remote::converge_for_trigger(
            &self.state_dir,
            server,
            request.noop,
            self.metadata_endpoint.clone(),
            &request.trigger_id,
            &self.connectors,
        )
        .await?;
        let (textfile, terminal) = (self.textfile.clone(), self.terminal);
        tokio::task::spawn_blocking(move || {
            crate::textfile::record(&textfile, &report);
            let _ = print_report(&report, Format::Text, terminal);
        })
        .await?;
        Ok(())
    }

    async fn reports_queued(&mut self) -> bool {
        self.with_state(|dir| {
            Ok(crate::state::ReportQueue::new(dir)
                .pending()
                .is_ok_and(|p| !p.is_empty()))
        })
        .await
        .unwrap_or(false)
    }

    async fn deliver_reports(&mut self, server: &str) -> anyhow::Result<anyhow::Result<usize>> {
        let address = ServerAddress::parse(server)?;
        let Some(identity) = self
            .with_state(|dir| Ok(crate::identity::load_identity(dir)?))
            .await?
        else {
            return Ok(Ok(0));
        };
        let queue = crate::state::ReportQueue::new(&self.state_dir);
        Ok(crate::remote::deliver_reports(&self.connectors, &address, &identity, &queue).await)
    }

    async fn renew(&mut self, server: &str) -> anyhow::Result<i64> {
        crate::remote::renew_certificate(&self.state_dir, server, &self.connectors).await
    }
}
