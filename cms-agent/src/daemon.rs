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

use crate::client::ServerAddress;
use crate::clock::WallClock;
use crate::config::AgentConfig;
use crate::output::{Format, Terminal, print_report};
use crate::remote::RunMemory;
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
    /// The end of its validity on this agent's clock (Unix seconds), if it
    /// parses: when it was received plus the life the server gave it, so a
    /// clock that runs ahead or behind the server's does not move it.
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
    async fn enroll(
        &mut self,
        server: &str,
        with: &crate::remote::EnrollWith,
    ) -> anyhow::Result<String>;
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
            && self.config.enroll_with().is_some()
            && self.expired_at_the_server().await
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
            let (Some(server), Some(with)) =
                (self.config.server.clone(), self.config.enroll_with())
            else {
                bail!(
                    "Failed to start: this agent is not enrolled and its configuration has no server and token\nhint: set server and token (or token_file) in /etc/cms/agent.toml (on EC2, server and ca_fingerprint to enroll by attestation), or run cms-agent enroll"
                );
            };
            match self.runner.enroll(&server, &with).await {
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
        let started = tokio::time::Instant::now();
        match self.runner.converge(&server, &request).await {
            // From the pull to the report acknowledged (or queued): what a
            // periodic check costs the instance, the figure the periodic-run
            // benchmark reads.
            Ok(()) => tracing::info!(
                "run finished in {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            ),
            Err(error) => tracing::error!("{error:#}"),
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

    /// Whether the server says the node's certificate has expired: this
    /// agent's clock said so, but the agent never discards its identity on
    /// its own clock's say-so (a clock running ahead would throw away a
    /// good identity, and its name stays taken while it is live). It asks
    /// by renewing: a renewal the server refuses as expired is the signal;
    /// a renewal that works keeps the identity, and any other failure
    /// (server unreachable) keeps it too, for the next run.
    async fn expired_at_the_server(&mut self) -> bool {
        let server = match self.config.server.clone() {
            Some(server) => Some(server),
            None => self.runner.enrolled_server().await,
        };
        let Some(server) = server else {
            return true;
        };
        match self.runner.renew(&server).await {
            Ok(not_after) => {
                tracing::warn!(
                    "this agent's clock ({}, Unix time) says the node certificate has expired, but the server renewed it (valid until {not_after}); check the clock",
                    self.clock.unix_secs()
                );
                false
            }
            Err(error) if crate::identity::refused_as_expired(&error) => true,
            Err(error) => {
                tracing::warn!(
                    "this agent's clock says the node certificate has expired, and asking the server failed: {error:#}; keeping the identity and trying again later"
                );
                false
            }
        }
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
        settings: config.run.clone(),
        textfile: config.textfile.clone(),
        terminal,
        memory: RunMemory::default(),
        token_file: config.token_file.clone(),
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
/// [`RunMemory`] serves every run, delivery, renewal and watch channel, so
/// they resume each other's TLS sessions, and keeps the last verified
/// catalog from one run to the next.
pub struct ServerRunner {
    state_dir: PathBuf,
    metadata_endpoint: Option<String>,
    /// What each run needs from agent.toml.
    settings: crate::settings::RunSettings,
    textfile: crate::textfile::Textfile,
    terminal: Terminal,
    memory: RunMemory,
    /// The file the enrollment token came from, deleted once enrolled.
    token_file: Option<PathBuf>,
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
                not_after: crate::identity::expires_on_agent_clock(&pem, received).ok(),
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

    async fn enroll(
        &mut self,
        server: &str,
        with: &crate::remote::EnrollWith,
    ) -> anyhow::Result<String> {
        let response = crate::remote::enroll_instance(
            &self.state_dir,
            server,
            with,
            None,
            None,
            self.metadata_endpoint.clone(),
        )
        .await?;
        if let Some(file) = self.token_file.clone() {
            let forgotten =
                tokio::task::spawn_blocking(move || crate::config::forget_token_file(&file))
                    .await?;
            if let Err(error) = forgotten {
                tracing::warn!("{error:#}");
            }
        }
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
            self.memory.connectors.clone(),
            requests,
        ))
    }

    async fn converge(&mut self, server: &str, request: &ConvergeRequest) -> anyhow::Result<()> {
        let report = crate::remote::converge_for_trigger(
            &self.state_dir,
            server,
            request.noop,
            &self.settings,
            &request.trigger_id,
            &self.memory,
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
        Ok(
            crate::remote::deliver_reports(&self.memory.connectors, &address, &identity, &queue)
                .await,
        )
    }

    async fn renew(&mut self, server: &str) -> anyhow::Result<i64> {
        crate::remote::renew_certificate(&self.state_dir, server, &self.memory.connectors).await
    }
}

#[cfg(test)]
mod tests {
    //! The daemon's timing, through its event loop, with paused tokio time
    //! and a test double for its I/O.

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::schedule::{delivery_retry_wait, splay};

    /// What the daemon asked of its I/O.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Enroll,
        Retire,
        Watch,
        Converge(ConvergeRequest),
        Deliver,
        Renew,
    }

    /// How the test double answers, and what it was asked, when.
    #[derive(Debug, Default)]
    struct Script {
        certificate: Option<Certificate>,
        /// Enrollments refused before one is accepted.
        enroll_refusals: u32,
        /// The certificate an accepted enrollment gives.
        enrolled: Option<Certificate>,
        /// How long a run takes.
        run_takes: Duration,
        queued: bool,
        /// Deliveries refused before one is accepted.
        delivery_refusals: u32,
        /// Renewals refused before one is accepted.
        renewal_refusals: u32,
        /// Whether a refused renewal is refused as expired (the TLS alert
        /// the server sends for an expired client certificate).
        expired_at_server: bool,
        /// The certificate an accepted renewal gives.
        renewed: Option<Certificate>,
        /// The watch task's end of the converge-now channel.
        watch: Option<mpsc::Sender<ConvergeRequest>>,
        calls: Vec<(Duration, Call)>,
    }

    /// A test double of the daemon's I/O: answers from its script and
    /// writes down every call with the (paused) time since the start.
    #[derive(Clone)]
    struct FakeRunner {
        script: Arc<Mutex<Script>>,
        start: Instant,
    }

    impl FakeRunner {
        fn new(script: Script) -> FakeRunner {
            FakeRunner {
                script: Arc::new(Mutex::new(script)),
                start: Instant::now(),
            }
        }

        fn enrolled(certificate: Certificate) -> FakeRunner {
            FakeRunner::new(Script {
                certificate: Some(certificate),
                ..Script::default()
            })
        }

        fn log(&self, call: Call) {
            let at = self.start.elapsed();
            self.script.lock().expect("script").calls.push((at, call));
        }

        /// When each call matching `which` came, since the start.
        fn times(&self, which: impl Fn(&Call) -> bool) -> Vec<Duration> {
            let script = self.script.lock().expect("script");
            script
                .calls
                .iter()
                .filter(|(_, call)| which(call))
                .map(|(at, _)| *at)
                .collect()
        }

        fn calls(&self) -> Vec<Call> {
            let script = self.script.lock().expect("script");
            script.calls.iter().map(|(_, call)| call.clone()).collect()
        }
    }

    impl Runner for FakeRunner {
        async fn certificate(&mut self) -> anyhow::Result<Option<Certificate>> {
            Ok(self.script.lock().expect("script").certificate.clone())
        }

        async fn retire_identity(&mut self) -> anyhow::Result<()> {
            self.log(Call::Retire);
            self.script.lock().expect("script").certificate = None;
            Ok(())
        }

        async fn enroll(
            &mut self,
            _server: &str,
            _with: &crate::remote::EnrollWith,
        ) -> anyhow::Result<String> {
            self.log(Call::Enroll);
            let mut script = self.script.lock().expect("script");
            if script.enroll_refusals > 0 {
                script.enroll_refusals -= 1;
                bail!("Failed to enroll: the server is busy");
            }
            script.certificate = script.enrolled.clone();
            Ok("node-a".into())
        }

        async fn enrolled_server(&mut self) -> Option<String> {
            Some(SERVER.into())
        }

        fn watch(
            &mut self,
            _server: &str,
            requests: mpsc::Sender<ConvergeRequest>,
        ) -> JoinHandle<()> {
            self.log(Call::Watch);
            self.script.lock().expect("script").watch = Some(requests);
            tokio::spawn(std::future::pending())
        }

        async fn converge(
            &mut self,
            _server: &str,
            request: &ConvergeRequest,
        ) -> anyhow::Result<()> {
            self.log(Call::Converge(request.clone()));
            let takes = self.script.lock().expect("script").run_takes;
            tokio::time::sleep(takes).await;
            Ok(())
        }

        async fn reports_queued(&mut self) -> bool {
            self.script.lock().expect("script").queued
        }

        async fn deliver_reports(
            &mut self,
            _server: &str,
        ) -> anyhow::Result<anyhow::Result<usize>> {
            self.log(Call::Deliver);
            let mut script = self.script.lock().expect("script");
            if script.delivery_refusals > 0 {
                script.delivery_refusals -= 1;
                return Ok(Err(anyhow::anyhow!("the server is unavailable")));
            }
            script.queued = false;
            Ok(Ok(1))
        }

        async fn renew(&mut self, _server: &str) -> anyhow::Result<i64> {
            self.log(Call::Renew);
            let mut script = self.script.lock().expect("script");
            if script.renewal_refusals > 0 {
                script.renewal_refusals -= 1;
                if script.expired_at_server {
                    bail!("Failed to renew: received fatal alert: CertificateExpired");
                }
                bail!("Failed to renew: the server is unavailable");
            }
            script.certificate = script.renewed.clone();
            Ok(0)
        }
    }

    const SERVER: &str = "cms.test:7470";
    /// The Unix time at which the tests' wall clock starts.
    const START_UNIX: i64 = 1_800_000_000;
    const DAY: i64 = 24 * 3600;

    /// A certificate valid for `lifetime` seconds from the start, due for
    /// renewal `due` seconds after the start.
    fn certificate(pem: &str, due: i64, lifetime: i64) -> Certificate {
        Certificate {
            pem: pem.into(),
            not_after: Some(START_UNIX + lifetime),
            renewal_due: Some(START_UNIX + due),
        }
    }

    fn config(interval: Duration, splay: Duration) -> AgentConfig {
        AgentConfig {
            server: Some(SERVER.into()),
            token: Some("secret.fingerprint".into()),
            ca_fingerprint: None,
            token_file: None,
            interval,
            splay,
            metadata_endpoint: None,
            textfile: crate::textfile::Textfile::Off,
            run: crate::settings::RunSettings::default(),
        }
    }

    /// A daemon over `runner`, and the sender that stops it.
    fn daemon(
        runner: &FakeRunner,
        config: AgentConfig,
        seed: u64,
    ) -> (Daemon<FakeRunner>, mpsc::Sender<()>) {
        let (stop, shutdown) = mpsc::channel(1);
        let daemon = Daemon::new(
            runner.clone(),
            config,
            WallClock::following_tokio(START_UNIX),
            seed,
            shutdown,
        );
        (daemon, stop)
    }

    /// Runs the daemon until `at` (tokio time since the start), then stops it.
    async fn run_until(daemon: Daemon<FakeRunner>, stop: mpsc::Sender<()>, at: Duration) {
        let (result, _) = tokio::join!(daemon.run(), async {
            tokio::time::sleep(at).await;
            stop.send(()).await.expect("the daemon listens");
        });
        result.expect("the daemon stops cleanly");
    }

    /// Timers fire on the millisecond after their deadline at the latest.
    #[track_caller]
    fn assert_near(actual: Duration, expected: Duration) {
        assert!(
            actual >= expected && actual <= expected + Duration::from_millis(2),
            "{actual:?}, expected {expected:?}"
        );
    }

    fn gaps(times: &[Duration]) -> Vec<Duration> {
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn is_run(call: &Call) -> bool {
        matches!(call, Call::Converge(_))
    }

    #[tokio::test(start_paused = true)]
    async fn runs_at_boot_then_every_interval_plus_the_nodes_own_splay() {
        let (interval, max_splay) = (Duration::from_secs(600), Duration::from_secs(300));
        let a = FakeRunner::enrolled(certificate("node-a", 10 * DAY, 15 * DAY));
        let b = FakeRunner::enrolled(certificate("node-b", 10 * DAY, 15 * DAY));
        let (daemon_a, stop_a) = daemon(&a, config(interval, max_splay), 1);
        let (daemon_b, stop_b) = daemon(&b, config(interval, max_splay), 1);
        let until = Duration::from_secs(3 * 900 + 1);
        tokio::join!(
            run_until(daemon_a, stop_a, until),
            run_until(daemon_b, stop_b, until)
        );
        for (runner, pem) in [(&a, "node-a"), (&b, "node-b")] {
            let runs = runner.times(is_run);
            assert!(runs.len() >= 3, "{runs:?}");
            assert_eq!(runs[0], Duration::ZERO, "the first run is at boot");
            let node_splay = splay(pem, max_splay);
            assert!(node_splay < max_splay);
            for gap in gaps(&runs) {
                assert_near(gap, interval + node_splay);
            }
        }
        assert_ne!(
            gaps(&a.times(is_run))[0],
            gaps(&b.times(is_run))[0],
            "two nodes spread their runs"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_enrollment_is_retried_with_a_doubling_backoff_and_full_jitter() {
        let script = || Script {
            enroll_refusals: 4,
            enrolled: Some(certificate("node-a", 10 * DAY, 15 * DAY)),
            ..Script::default()
        };
        let (one, two) = (FakeRunner::new(script()), FakeRunner::new(script()));
        let interval = Duration::from_secs(3600);
        let (daemon_one, stop_one) = daemon(&one, config(interval, Duration::ZERO), 11);
        let (daemon_two, stop_two) = daemon(&two, config(interval, Duration::ZERO), 12);
        let until = Duration::from_secs(200);
        tokio::join!(
            run_until(daemon_one, stop_one, until),
            run_until(daemon_two, stop_two, until)
        );
        for (runner, seed) in [(&one, 11), (&two, 12)] {
            let attempts = runner.times(|c| *c == Call::Enroll);
            assert_eq!(attempts.len(), 5, "four refusals, then enrolled");
            assert_eq!(attempts[0], Duration::ZERO);
            let mut backoff = Duration::from_secs(5);
            for (attempt, gap) in gaps(&attempts).into_iter().enumerate() {
                assert!(gap >= backoff / 2 && gap <= backoff + Duration::from_millis(2));
                assert_near(gap, enroll_retry_wait(backoff, attempt as u32, seed));
                backoff *= 2;
            }
            // Enrolled, it runs at once, and watches.
            let runs = runner.times(is_run);
            assert_eq!(runs.len(), 1);
            assert_near(runs[0], attempts[4]);
            assert_eq!(runner.times(|c| *c == Call::Watch).len(), 1);
        }
        assert_ne!(
            gaps(&one.times(|c| *c == Call::Enroll)),
            gaps(&two.times(|c| *c == Call::Enroll)),
            "two nodes refused at once come back at different times"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queued_reports_are_offered_again_with_backoff_until_the_server_takes_them() {
        let seed = 5;
        let runner = FakeRunner::new(Script {
            certificate: Some(certificate("node-a", 10 * DAY, 15 * DAY)),
            queued: true,
            delivery_refusals: 5,
            ..Script::default()
        });
        let interval = Duration::from_secs(3600);
        let (daemon, stop) = daemon(&runner, config(interval, Duration::ZERO), seed);
        run_until(daemon, stop, Duration::from_secs(600)).await;
        let deliveries = runner.times(|c| *c == Call::Deliver);
        assert_eq!(
            deliveries.len(),
            6,
            "five refused, the sixth taken, then none"
        );
        let mut previous = Duration::ZERO;
        for (attempt, at) in deliveries.into_iter().enumerate() {
            let gap = at - previous;
            let ceiling = Duration::from_millis((500u64 << attempt).min(15_000));
            assert!(
                gap >= Duration::from_secs(1)
                    && gap <= Duration::from_secs(1) + ceiling + Duration::from_millis(2)
            );
            assert_near(gap, delivery_retry_wait(attempt as u32, seed));
            previous = at;
        }
        assert_eq!(runner.times(is_run), [Duration::ZERO]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_certificate_is_renewed_when_due_and_again_soon_after_a_failure() {
        let seed = 9;
        let runner = FakeRunner::new(Script {
            certificate: Some(certificate("node-a", 1000, 1500)),
            renewal_refusals: 1,
            renewed: Some(certificate("node-a renewed", 5000, 6000)),
            ..Script::default()
        });
        let interval = Duration::from_secs(3600);
        let (daemon, stop) = daemon(&runner, config(interval, Duration::ZERO), seed);
        run_until(daemon, stop, Duration::from_secs(4000)).await;
        let renewals = runner.times(|c| *c == Call::Renew);
        assert_eq!(renewals.len(), 2, "{renewals:?}");
        assert_near(renewals[0], Duration::from_secs(1000));
        assert_near(
            renewals[1] - renewals[0],
            renewal_retry_wait(reseed(seed, 1)),
        );
        // Renewals do not move the schedule of runs.
        let runs = runner.times(is_run);
        assert_eq!(runs.len(), 2);
        assert_near(runs[1], interval);
    }

    #[tokio::test(start_paused = true)]
    async fn a_converge_now_during_a_run_runs_right_after_it_with_its_trigger_id() {
        let runner = FakeRunner::new(Script {
            certificate: Some(certificate("node-a", 10 * DAY, 15 * DAY)),
            run_takes: Duration::from_secs(30),
            ..Script::default()
        });
        let interval = Duration::from_secs(600);
        let (daemon, stop) = daemon(&runner, config(interval, Duration::ZERO), 1);
        let asked = ConvergeRequest {
            trigger_id: "trigger-1".into(),
            noop: true,
        };
        let (result, _) = tokio::join!(daemon.run(), async {
            // In the middle of the boot run, the server asks for another.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let watch = runner.script.lock().expect("script").watch.clone();
            watch
                .expect("the daemon watches")
                .send(asked.clone())
                .await
                .expect("the daemon listens");
            tokio::time::sleep(Duration::from_secs(700)).await;
            stop.send(()).await.expect("the daemon listens");
        });
        result.expect("the daemon stops cleanly");
        let runs: Vec<(Duration, Call)> = runner
            .script
            .lock()
            .expect("script")
            .calls
            .iter()
            .filter(|(_, call)| is_run(call))
            .cloned()
            .collect();
        assert_eq!(runs.len(), 3, "{runs:?}");
        assert_eq!(
            runs[0],
            (Duration::ZERO, Call::Converge(ConvergeRequest::default()))
        );
        assert_near(runs[1].0, Duration::from_secs(30));
        assert_eq!(runs[1].1, Call::Converge(asked));
        // The schedule counts from the end of the asked-for run.
        assert_near(runs[2].0, Duration::from_secs(60) + interval);
        assert_eq!(runs[2].1, Call::Converge(ConvergeRequest::default()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_whose_certificate_expired_enrolls_again_and_watches_anew() {
        let runner = FakeRunner::new(Script {
            certificate: Some(certificate("node-a", 90, 100)),
            renewal_refusals: u32::MAX,
            expired_at_server: true,
            enrolled: Some(certificate("node-a again", 10 * DAY, 15 * DAY)),
            ..Script::default()
        });
        let interval = Duration::from_secs(60);
        let (daemon, stop) = daemon(&runner, config(interval, Duration::ZERO), 1);
        run_until(daemon, stop, Duration::from_secs(150)).await;
        let calls: Vec<Call> = runner
            .calls()
            .into_iter()
            .filter(|c| *c != Call::Renew)
            .collect();
        let run = Call::Converge(ConvergeRequest::default());
        assert_eq!(
            calls,
            [
                Call::Watch,
                run.clone(),
                run.clone(),
                Call::Retire,
                Call::Enroll,
                Call::Watch,
                run
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_whose_clock_says_expired_keeps_its_identity_when_the_server_renews_it() {
        // This agent's clock runs two days ahead: by its clock the
        // certificate ended a day ago; the server, asked, renews it.
        let runner = FakeRunner::new(Script {
            certificate: Some(certificate("node-a", -DAY - 10, -DAY)),
            renewed: Some(certificate("node-a renewed", 10 * DAY, 15 * DAY)),
            enrolled: Some(certificate("node-a again", 10 * DAY, 15 * DAY)),
            ..Script::default()
        });
        let (daemon, stop) = daemon(&runner, config(Duration::from_secs(60), Duration::ZERO), 1);
        run_until(daemon, stop, Duration::from_secs(150)).await;
        let calls = runner.calls();
        assert!(!calls.contains(&Call::Retire), "{calls:?}");
        assert!(!calls.contains(&Call::Enroll), "{calls:?}");
        assert_eq!(calls.first(), Some(&Call::Renew), "{calls:?}");
        assert!(
            calls.contains(&Call::Converge(ConvergeRequest::default())),
            "{calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_whose_clock_says_expired_keeps_its_identity_while_the_server_is_unreachable()
    {
        let runner = FakeRunner::new(Script {
            certificate: Some(certificate("node-a", -DAY - 10, -DAY)),
            renewal_refusals: u32::MAX,
            enrolled: Some(certificate("node-a again", 10 * DAY, 15 * DAY)),
            ..Script::default()
        });
        let (daemon, stop) = daemon(&runner, config(Duration::from_secs(60), Duration::ZERO), 1);
        run_until(daemon, stop, Duration::from_secs(150)).await;
        let calls = runner.calls();
        assert!(!calls.contains(&Call::Retire), "{calls:?}");
        assert!(!calls.contains(&Call::Enroll), "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_stops_the_daemon_while_it_waits_to_enroll() {
        let runner = FakeRunner::new(Script {
            enroll_refusals: u32::MAX,
            ..Script::default()
        });
        let (daemon, stop) = daemon(&runner, config(Duration::from_secs(60), Duration::ZERO), 1);
        run_until(daemon, stop, Duration::from_secs(1)).await;
        assert_eq!(runner.calls(), [Call::Enroll]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_identity_or_a_token_the_daemon_says_how_to_enroll() {
        let runner = FakeRunner::new(Script::default());
        let mut config = config(Duration::from_secs(60), Duration::ZERO);
        config.token = None;
        let (daemon, _stop) = daemon(&runner, config, 1);
        let error = daemon.run().await.expect_err("cannot start");
        assert!(
            format!("{error:#}").contains("hint: set server and token"),
            "{error:#}"
        );
    }
}
