//! Rollouts: a new commit of an environment reaches its nodes in
//! health-gated waves instead of all at once, and pins hold a group of
//! nodes on a revision.
//!
//! When the sync task accepts a commit, [`Rollouts::commit_accepted`]
//! decides: the first commit of an environment, or any commit of one whose
//! stable revision has no `[rollout]` policy, becomes stable at once (as
//! before rollouts existed). Otherwise it becomes a rollout from the stable
//! revision, with the stable revision's policy (a commit cannot loosen its
//! own rollout). At start every live node of the environment is compiled
//! at both revisions (`fleet_diff::diff_fleet`, one compile per compile
//! key): nodes whose catalog does not change move at once, pinned nodes
//! are passed by, and the others are planned as waves: the first `canary`
//! nodes of each role group (nodes whose new catalog applies the same
//! roles, [`role_groups`]), alone, then the rest in batches. A wave moves
//! its nodes (their catalog now compiles at the new revision,
//! `Environment::revision_for`), sends them converge-now
//! over the watch channel and waits for their reports; a node is healthy
//! when its run failed nothing and ran the new revision. Past the failure
//! budget (or any canary failure) the rollout halts and every node it
//! moved goes back to the previous revision, asked to converge at once.
//! Otherwise, after `bake`, the next wave; after the last, the new
//! revision is stable. One rollout at a time per environment: a commit
//! accepted meanwhile waits, and starts the next rollout when this one
//! ends.
//!
//! The environment's record (`store::EnvironmentRecord`) is changed only
//! under its lock and written whole after every step, so `rollout status`
//! reads progress from the store, and a restart finds the rollout paused
//! where it was.
//!
//! With replicas, only the leader drives rollouts and writes environment
//! records. An operator's command (`control`, `pin`, `unpin`) given to
//! another replica is forwarded to the leader over the bus
//! (`bus::Message::RolloutCommand`), which runs it as if given to it and
//! answers; the asking replica then reads the record the leader wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cms_proto::v1 as pb;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::environments::{Environment, EnvironmentError, Environments, Moved, PinnedRevision};
use crate::fleet::{BatchSize, Fleet, over_limit};
use crate::fleet_diff::{DiffSide, diff_fleet, short};
use crate::git_sync::{GitSource, Revision};
use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::secrets::ServerSecrets;
use crate::store::{
    EnvironmentRecord, NodeRecord, NodeStatus, PinRecord, RolloutPolicyRecord, RolloutRecord,
    SharedStore, Store, StoreError, TriggerOutcome, WaveRecord,
};

/// How long a replica that does not lead waits for the leader to answer a
/// rollout command it forwarded (a pin may read and validate a commit).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a replica that does not lead waits for its sync to fetch a
/// commit the leader's record names, before a triggered run is answered
/// Unavailable (the agent asks again).
const CATCH_UP_SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// How often nodes' outcomes are written while a wave runs.
const OUTCOME_SAVE_EVERY: Duration = Duration::from_secs(1);

/// What an operator asks of a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Run,
    Pause,
    Abort,
    Promote,
}

impl Control {
    /// Reads `pause`, `resume`, `abort` or `promote`.
    pub fn parse(action: &str) -> Result<Control, RolloutError> {
        match action {
            "pause" => Ok(Control::Pause),
            "resume" => Ok(Control::Run),
            "abort" => Ok(Control::Abort),
            "promote" => Ok(Control::Promote),
            other => Err(RolloutError::BadAction(other.to_string())),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Control::Run => "resume",
            Control::Pause => "pause",
            Control::Abort => "abort",
            Control::Promote => "promote",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
    #[error("no rollout {id} in environment {environment}")]
    Unknown { environment: String, id: String },
    #[error("environment {environment} has no rollout in progress")]
    NoneActive { environment: String },
    #[error("rollout {id} is {state}: it cannot {action}")]
    NotAllowed {
        id: String,
        state: String,
        action: String,
    },
    #[error("`{0}` is not an action: use pause, resume, abort or promote")]
    BadAction(String),
    /// A pin or unpin that cannot be: no selection, an unknown pin, a
    /// revision that names no commit or does not validate.
    #[error("{0}")]
    InvalidPin(String),
    /// No revision served yet, or no git history to read a revision from.
    #[error("{0}")]
    CannotRun(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A command forwarded to the leading replica was refused or failed
    /// there: the gRPC status code it answered, and its message.
    #[error("{message}")]
    FromLeader { code: i32, message: String },
    /// A command forwarded to the leading replica got no answer.
    #[error("no leading replica answered within {}s; retry", FORWARD_TIMEOUT.as_secs())]
    NoLeader,
    /// A replica that does not lead cannot serve what the leader's record
    /// of an environment says yet (a commit its mirror lacks, or the
    /// record unread).
    #[error(
        "this replica does not serve the leader's latest record of environment {environment} yet ({reason}); retry"
    )]
    Behind { environment: String, reason: String },
}

/// Where an environment stands after [`Rollouts::follow_store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// It serves what its stored record says (or none is stored, or this
    /// replica drives its rollout and writes the record).
    Current,
    /// The stored record names a commit this replica's mirror lacks.
    LacksCommit(String),
    /// The stored record could not be read or loaded.
    Unread(String),
}

/// What rollouts need.
#[derive(Debug, Clone)]
pub struct Rollouts {
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    pub clock: SharedClock,
    pub nodes: Nodes,
    pub environments: Arc<Environments>,
    pub metrics: Arc<Metrics>,
    /// The roles repository's mirror, to read pinned revisions; none for
    /// a plain folder.
    pub mirror: Option<GitSource>,
    pub secrets: Arc<ServerSecrets>,
    /// The control channel of each rollout driven in this process.
    pub(crate) drivers: Arc<Mutex<HashMap<String, watch::Sender<Control>>>>,
    /// Whether this replica leads: with replicas, only the leader decides
    /// what a new commit becomes; the others follow the stored record.
    pub locks: crate::leader::Locks,
    /// The rollout commands this replica forwarded to the leader and waits
    /// for, by request number.
    pub(crate) forwarded: Forwarded,
    /// Asks this replica's sync task to fetch now: a replica that does not
    /// lead does when the leader's record names a commit its mirror lacks.
    /// None where no sync task runs.
    pub sync: Option<crate::revision::SyncRequests>,
    /// When the last catch-up of each environment started
    /// ([`Rollouts::catch_up`]); held while one runs, so that a wave of
    /// triggered runs reads the record once, not once per node.
    pub(crate) caught_up: CaughtUp,
}

/// When each environment's last catch-up started, by name.
pub(crate) type CaughtUp = Arc<tokio::sync::Mutex<HashMap<String, std::time::Instant>>>;

/// Rollout commands forwarded to the leader, waiting for its answer.
pub(crate) type Forwarded =
    Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<crate::bus::CommandOutcome>>>>;

/// The policy of a repository's `[rollout]`, as a rollout records it.
pub fn policy_of(repository: &cms_roles::Repository) -> Option<RolloutPolicyRecord> {
    repository
        .settings
        .rollout
        .as_ref()
        .map(|policy| RolloutPolicyRecord {
            canary: policy.canary,
            batch: policy.batch.to_string(),
            bake_ms: policy.bake.as_millis() as u64,
            max_failures: policy.max_failures,
            timeout_ms: policy.timeout.as_millis() as u64,
        })
}

/// The waves of a rollout: the first `canary` nodes of each group, alone,
/// then the rest in batches (a percentage is of all affected nodes,
/// rounded up). Groups and their nodes are taken in the order given.
pub fn plan_waves(groups: &[Vec<String>], canary: usize, batch: BatchSize) -> Vec<WaveRecord> {
    let mut canaries = Vec::new();
    let mut rest = Vec::new();
    for group in groups {
        let take = canary.min(group.len());
        canaries.extend_from_slice(&group[..take]);
        rest.extend_from_slice(&group[take..]);
    }
    let total = canaries.len() + rest.len();
    let mut waves = Vec::new();
    if !canaries.is_empty() {
        waves.push(wave("canary", canaries));
    }
    if !rest.is_empty() {
        let size = match batch {
            BatchSize::All => rest.len(),
            BatchSize::Count(n) => n,
            BatchSize::Percent(p) => (total * p as usize).div_ceil(100),
        }
        .max(1);
        for chunk in rest.chunks(size) {
            let name = format!("wave {}", waves.len() + 1);
            waves.push(wave(&name, chunk.to_vec()));
        }
    }
    waves
}

fn wave(name: &str, nodes: Vec<String>) -> WaveRecord {
    WaveRecord {
        name: name.to_string(),
        nodes,
        outcomes: BTreeMap::new(),
        started_unix_ms: None,
        finished_unix_ms: None,
    }
}

/// `nodes` grouped by the roles of their new catalog (`roles`, by node),
/// groups in the order their first node comes, nodes in the order given:
/// the groups a rollout takes its canaries from. Nodes whose changes
/// differ only by what they render of themselves (a path or a content
/// holding `{{node.id}}`) are one group, so one canary tries them all.
pub fn role_groups(nodes: &[String], roles: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut by_roles: HashMap<&[String], usize> = HashMap::new();
    for node in nodes {
        let key = roles.get(node).map(Vec::as_slice).unwrap_or_default();
        let index = *by_roles.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[index].push(node.clone());
    }
    groups
}

/// How a node's run reads for a rollout to `to`: a run that failed
/// nothing but ran another revision (an agent that could not fetch the
/// new catalog ran its last one) is a failure; no report is unreachable.
pub fn judge(outcome: Option<TriggerOutcome>, to: &str) -> TriggerOutcome {
    match outcome {
        None => unreachable_outcome(),
        Some(outcome) if outcome.result != "failed" && outcome.revision != to => TriggerOutcome {
            result: "failed".into(),
            failed_resources: vec![format!(
                "ran revision {}, not {}",
                short(&outcome.revision),
                short(to)
            )],
            ..outcome
        },
        Some(outcome) => outcome,
    }
}

fn unreachable_outcome() -> TriggerOutcome {
    TriggerOutcome {
        result: "unreachable".into(),
        run_id: String::new(),
        failed_resources: Vec::new(),
        revision: String::new(),
        reason: "no report came before the wave's timeout".into(),
    }
}

fn is_failure(outcome: &TriggerOutcome) -> bool {
    outcome.result == "failed" || outcome.result == "unreachable"
}

/// What a wave run ended with.
enum WaveEnd {
    Finished,
    Aborted,
}

impl Rollouts {
    /// The sync task accepted `revision` for `environment`: make it stable,
    /// start a rollout, or leave it waiting for the active one.
    pub async fn commit_accepted(&self, environment: &Arc<Environment>, revision: Revision) {
        if !self.decides() {
            self.follow_store(environment).await;
            return;
        }
        let mut record = environment.record.lock().await;
        record.name = environment.name.clone();
        let Some(stable) = environment.stable.current() else {
            self.make_stable(environment, &mut record, revision).await;
            return;
        };
        if stable.commit == revision.commit {
            return;
        }
        if let Some(earlier) = record
            .rollouts
            .iter()
            .rev()
            .find(|r| r.to == revision.commit)
            && (earlier.is_active() || earlier.state == "rolled_back" || earlier.state == "aborted")
        {
            // The commit being rolled out, or one its fleet refused: only
            // a new commit starts a rollout again.
            return;
        }
        let Some(policy) = policy_of(&stable.repository) else {
            self.make_stable(environment, &mut record, revision).await;
            return;
        };
        if let Some(active) = record.active() {
            tracing::info!(
                environment = %environment.name,
                commit = %revision.commit,
                rollout = %active.id,
                "a new commit waits for the rollout in progress"
            );
            *environment.pending.lock().expect("pending lock") = Some(revision);
            return;
        }
        self.start(environment, &mut record, stable, revision, policy)
            .await;
    }

    /// `revision` becomes what every node of `environment` gets.
    async fn make_stable(
        &self,
        environment: &Arc<Environment>,
        record: &mut EnvironmentRecord,
        revision: Revision,
    ) {
        record.stable = revision.commit.clone();
        self.save(record).await;
        if environment.name == self.environments.config().default_name() {
            self.set_current_revision(&revision.commit).await;
        }
        tracing::info!(environment = %environment.name, commit = %revision.commit, "serving a new revision");
        environment.stable.replace(revision);
    }

    async fn set_current_revision(&self, commit: &str) {
        let store = self.store.clone();
        let commit = commit.to_string();
        match tokio::task::spawn_blocking(move || store.set_current_revision(&commit)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("Failed to record the current revision: {error}"),
            Err(error) => tracing::warn!("Failed to record the current revision: {error}"),
        }
    }

    /// Whether this replica decides what new commits become: a server
    /// alone, or the leading replica.
    pub fn decides(&self) -> bool {
        self.locks.is_local() || self.locks.is_leader()
    }

    /// On a replica that became leader: `commit`, the head of the branch
    /// its mirror holds, is decided (made stable or rolled out) unless the
    /// environment already serves it, rolls it out or refused it.
    pub async fn decide_undecided(&self, environment: &Arc<Environment>, commit: &str) {
        {
            let record = environment.record.lock().await;
            let known = record.stable == commit
                || record.rollouts.iter().any(|rollout| rollout.to == commit)
                || environment
                    .pending
                    .lock()
                    .expect("pending lock")
                    .as_ref()
                    .is_some_and(|pending| pending.commit == commit);
            if known {
                return;
            }
        }
        let Some(mirror) = self.mirror.clone() else {
            return;
        };
        let (secrets, wanted) = (self.secrets.clone(), commit.to_string());
        match tokio::task::spawn_blocking(move || load_revision(&mirror, &secrets, &wanted)).await {
            Ok(Ok(revision)) => {
                tracing::info!(environment = %environment.name, commit, "a commit fetched while another replica led is decided now");
                self.commit_accepted(environment, revision).await;
            }
            Ok(Err(problem)) => {
                tracing::warn!(environment = %environment.name, "Failed to load commit {commit}: {problem}")
            }
            Err(error) => tracing::warn!("Failed to load a commit: {error}"),
        }
    }

    /// On a replica that just became leader: a rollout the stored records
    /// show running (or baking, or rolling back) that no driver of this
    /// replica runs was left by the leader before, which died: it is
    /// paused (or finished as rolled back) where it stood, as a restarted
    /// server does (`interrupt_active`), for an operator to resume.
    pub async fn take_over_rollouts(&self) {
        for environment in self.environments.iter() {
            self.follow_store(environment).await;
            let mut record = environment.record.lock().await;
            let driven = {
                let drivers = self.drivers.lock().expect("drivers lock");
                record
                    .active()
                    .is_some_and(|active| drivers.contains_key(&active.id))
            };
            if driven || !interrupt_active(&mut record, self.clock.now_unix_ms()) {
                continue;
            }
            if let Some(rollout) = record.rollouts.last_mut() {
                rollout.message = rollout
                    .message
                    .replace("the server restarted", "the replica that led stopped");
            }
            tracing::warn!(environment = %environment.name, "a rollout left by the replica that led before is interrupted");
            self.save(&record).await;
        }
    }

    /// A message of another replica for the environments: a record
    /// changed (or the bus reconnected: every record is read again), a
    /// rollout command for the leader, or the leader's answer to one this
    /// replica forwarded.
    pub fn bus_message(&self, message: crate::bus::Message) {
        use crate::bus::Message;
        match message {
            Message::EnvironmentChanged { environment } => {
                self.environment_changed(Some(environment))
            }
            Message::Reconnected => self.environment_changed(None),
            Message::RolloutCommand {
                from,
                request,
                environment,
                command,
                operator,
            } => {
                if self.locks.is_local() || !self.locks.is_leader() {
                    return;
                }
                let rollouts = self.clone();
                tokio::spawn(async move {
                    let outcome = rollouts
                        .run_forwarded(&environment, command, &operator)
                        .await;
                    rollouts.fleet.bus().publish(Message::RolloutCommandDone {
                        to: from,
                        request,
                        outcome,
                    });
                });
            }
            Message::RolloutCommandDone {
                to,
                request,
                outcome,
            } => {
                if to != self.fleet.bus().replica() {
                    return;
                }
                let waiting = self
                    .forwarded
                    .lock()
                    .expect("forwarded lock")
                    .remove(&request);
                if let Some(waiting) = waiting {
                    let _ = waiting.send(outcome);
                }
            }
            _ => {}
        }
    }

    /// On the leader: runs a command another replica forwarded, as
    /// `control`, `pin` or `unpin` would here.
    async fn run_forwarded(
        &self,
        environment: &str,
        command: crate::bus::RolloutCommand,
        operator: &str,
    ) -> crate::bus::CommandOutcome {
        use crate::bus::{CommandOutcome, RolloutCommand};
        tracing::info!(
            environment,
            operator,
            ?command,
            "a rollout command forwarded by another replica"
        );
        let done = match command {
            RolloutCommand::Control { rollout_id, action } => self
                .control_here(environment, &rollout_id, &action, operator)
                .await
                .map(|rollout| rollout.id),
            RolloutCommand::Pin { selector, revision } => self
                .pin_here(environment, selector, &revision, operator)
                .await
                .map(|(commit, _)| commit),
            RolloutCommand::Unpin { selector } => self
                .unpin_here(environment, selector)
                .await
                .map(|_| String::new()),
        };
        match done {
            Ok(answer) => CommandOutcome::Done { answer },
            Err(error) => {
                let status = tonic::Status::from(error);
                CommandOutcome::Failed {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                }
            }
        }
    }

    /// On a replica that does not lead: sends `command` to the leader and
    /// waits (at most [`FORWARD_TIMEOUT`]) for its answer.
    async fn forward(
        &self,
        environment: &str,
        command: crate::bus::RolloutCommand,
        operator: &str,
    ) -> Result<String, RolloutError> {
        static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let request = NEXT_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.forwarded
            .lock()
            .expect("forwarded lock")
            .insert(request, answer);
        self.fleet
            .bus()
            .publish(crate::bus::Message::RolloutCommand {
                from: self.fleet.bus().replica().to_string(),
                request,
                environment: environment.to_string(),
                command,
                operator: operator.to_string(),
            });
        let outcome = tokio::time::timeout(FORWARD_TIMEOUT, answered).await;
        self.forwarded
            .lock()
            .expect("forwarded lock")
            .remove(&request);
        match outcome {
            Ok(Ok(crate::bus::CommandOutcome::Done { answer })) => Ok(answer),
            Ok(Ok(crate::bus::CommandOutcome::Failed { code, message })) => {
                Err(RolloutError::FromLeader { code, message })
            }
            Ok(Err(_)) | Err(_) => Err(RolloutError::NoLeader),
        }
    }

    /// On a replica that does not lead, after the leader ran a command:
    /// the record it wrote, read from the store, which this replica then
    /// serves.
    async fn record_from_leader(
        &self,
        environment: &Arc<Environment>,
    ) -> Result<EnvironmentRecord, RolloutError> {
        let store = self.store.clone();
        let name = environment.name.clone();
        let stored = tokio::task::spawn_blocking(move || store.environment(&name))
            .await
            .map_err(|e| {
                RolloutError::CannotRun(format!("Failed to read the environment: {e}"))
            })??;
        self.follow_store(environment).await;
        Ok(stored.unwrap_or_default())
    }

    /// Another replica changed environment `name`'s record (all of them
    /// for `None`, after the bus reconnected): it is read again in the
    /// background.
    pub fn environment_changed(&self, name: Option<String>) {
        let rollouts = self.clone();
        tokio::spawn(async move {
            for environment in rollouts.environments.iter() {
                if name.as_ref().is_none_or(|name| *name == environment.name)
                    && let Followed::LacksCommit(_) = rollouts.follow_store(environment).await
                    && let Some(sync) = &rollouts.sync
                {
                    // Fetched now rather than at the next interval; the
                    // sync then follows the record again.
                    sync.ask_soon();
                }
            }
        });
    }

    /// Makes `environment` serve what its stored record says (stable
    /// revision, rollout, pins), unless this replica drives its rollout
    /// (then it is the one writing the record). A revision this replica's
    /// mirror does not have yet leaves the environment as it is: its next
    /// sync fetches the commit and calls this again.
    pub async fn follow_store(&self, environment: &Arc<Environment>) -> Followed {
        let mut record = environment.record.lock().await;
        let driving = {
            let drivers = self.drivers.lock().expect("drivers lock");
            record
                .active()
                .is_some_and(|active| drivers.contains_key(&active.id))
        };
        if driving {
            return Followed::Current;
        }
        let store = self.store.clone();
        let name = environment.name.clone();
        let stored = match tokio::task::spawn_blocking(move || store.environment(&name)).await {
            Ok(Ok(Some(stored))) => stored,
            Ok(Ok(None)) => return Followed::Current,
            Ok(Err(error)) => {
                tracing::warn!(environment = %environment.name, "Failed to read the environment another replica changed: {error}");
                return Followed::Unread(format!("Failed to read its record: {error}"));
            }
            Err(error) => {
                tracing::warn!("Failed to read an environment: {error}");
                return Followed::Unread(format!("Failed to read its record: {error}"));
            }
        };
        let in_use = environment.revisions_in_use();
        if stored == *record && in_use.iter().any(|r| r.commit == stored.stable) {
            return Followed::Current;
        }
        let (mirror, secrets) = (self.mirror.clone(), self.secrets.clone());
        let wanted = stored.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let load = |commit: &str| -> Result<Revision, Followed> {
                if let Some(revision) = in_use.iter().find(|r| r.commit == commit) {
                    return Ok(revision.clone());
                }
                let mirror = mirror.as_ref().ok_or_else(|| {
                    Followed::Unread("a plain folder has only the revision it serves".to_string())
                })?;
                load_revision(mirror, &secrets, commit).map_err(|problem| {
                    tracing::info!(commit, "{problem}");
                    Followed::LacksCommit(commit.to_string())
                })
            };
            let stable = (!wanted.stable.is_empty())
                .then(|| load(&wanted.stable))
                .transpose()?;
            let mut placement = crate::environments::Placement::default();
            if let Some(active) = wanted.active() {
                placement.rollout = Some(Moved {
                    rollout_id: active.id.clone(),
                    to: load(&active.to)?,
                    nodes: active.moved.clone(),
                });
            }
            for pin in &wanted.pins {
                placement.pins.push(PinnedRevision {
                    selector: pin.selector.clone(),
                    revision: load(&pin.commit)?,
                });
            }
            Ok::<_, Followed>((stable, placement))
        })
        .await;
        match loaded {
            Ok(Ok((stable, placement))) => {
                if let Some(stable) = stable
                    && environment
                        .stable
                        .current()
                        .is_none_or(|r| r.commit != stable.commit)
                {
                    tracing::info!(environment = %environment.name, commit = %stable.commit, "serving the revision another replica made stable");
                    environment.stable.replace(stable);
                }
                environment.update_placement(|current| *current = placement);
                self.metrics.pins(&environment.name, stored.pins.len());
                *record = stored;
                Followed::Current
            }
            Ok(Err(behind)) => {
                tracing::info!(environment = %environment.name, "the environment another replica changed waits for this replica's sync: {behind:?}");
                behind
            }
            Err(error) => {
                tracing::warn!("Failed to load an environment's revisions: {error}");
                Followed::Unread(format!("Failed to load its revisions: {error}"))
            }
        }
    }

    /// On a replica that does not lead, before it answers a run a trigger
    /// asked for (a pin's, a rollout wave's, an operator's): reads the
    /// leader's record of `environment` again, and fetches a commit it
    /// names that this replica's mirror lacks, so that the node gets the
    /// revision the leader gave it before triggering it, whichever replica
    /// answers. The record was written before the trigger was sent, so a
    /// read that starts after the run's request arrived is enough: one
    /// read serves every request that arrived before it started. Nothing
    /// to do on the replica that decides. `Behind` (Unavailable, the agent
    /// asks again) when the record cannot be served yet.
    pub async fn catch_up(&self, environment: &Arc<Environment>) -> Result<(), RolloutError> {
        if self.decides() {
            return Ok(());
        }
        let arrived = crate::clock::instant();
        let mut caught_up = self.caught_up.lock().await;
        if caught_up
            .get(&environment.name)
            .is_some_and(|started| *started >= arrived)
        {
            return Ok(());
        }
        let started = crate::clock::instant();
        let mut followed = self.follow_store(environment).await;
        if let (Followed::LacksCommit(_), Some(sync)) = (&followed, &self.sync) {
            match tokio::time::timeout(CATCH_UP_SYNC_TIMEOUT, sync.sync_now()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(environment = %environment.name, "Failed to fetch a commit the leader's record names: {error:#}")
                }
                Err(_) => {
                    tracing::warn!(environment = %environment.name, "the sync fetching a commit the leader's record names took over {}s", CATCH_UP_SYNC_TIMEOUT.as_secs())
                }
            }
            followed = self.follow_store(environment).await;
        }
        match followed {
            Followed::Current => {
                caught_up.insert(environment.name.clone(), started);
                Ok(())
            }
            Followed::LacksCommit(commit) => Err(RolloutError::Behind {
                environment: environment.name.clone(),
                reason: format!("its mirror lacks commit {commit}"),
            }),
            Followed::Unread(reason) => Err(RolloutError::Behind {
                environment: environment.name.clone(),
                reason,
            }),
        }
    }

    /// Writes `record` and tells the other replicas; a failure is logged
    /// (the rollout goes on in memory, as a trigger does).
    async fn save(&self, record: &EnvironmentRecord) {
        let store = self.store.clone();
        let copy = record.clone();
        match tokio::task::spawn_blocking(move || store.put_environment(&copy)).await {
            Ok(Ok(())) => self
                .fleet
                .bus()
                .publish(crate::bus::Message::EnvironmentChanged {
                    environment: record.name.clone(),
                }),
            Ok(Err(error)) => tracing::warn!(
                "Failed to store environment {}: {}",
                record.name,
                crate::store::error_chain(&error)
            ),
            Err(error) => tracing::warn!("Failed to store environment {}: {error}", record.name),
        }
    }

    /// The live nodes of `environment`.
    async fn nodes_of(&self, environment: &str) -> Vec<NodeRecord> {
        let config = self.environments.config();
        self.nodes_all()
            .await
            .into_iter()
            .filter(|record| config.environment_of(record) == environment)
            .collect()
    }

    /// Plans and starts a rollout from `from` to `to`.
    async fn start(
        &self,
        environment: &Arc<Environment>,
        record: &mut EnvironmentRecord,
        from: Revision,
        to: Revision,
        policy: RolloutPolicyRecord,
    ) {
        let placement = environment.placement();
        let (pinned, nodes): (Vec<NodeRecord>, Vec<NodeRecord>) = self
            .nodes_of(&environment.name)
            .await
            .into_iter()
            .partition(|node| placement.pin_of(&node.tags).is_some());
        let compile_nodes: Vec<cms_roles::Node> =
            nodes.iter().map(crate::catalogs::node_of_record).collect();
        let (from_side, to_side) = (DiffSide::of(&from), DiffSide::of(&to));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let diff = tokio::task::spawn_blocking(move || {
            diff_fleet(&from_side, &to_side, &compile_nodes, threads)
        })
        .await
        .expect("the fleet diff does not panic");
        let mut unchanged = BTreeSet::new();
        let mut changing = Vec::new();
        for group in &diff.groups {
            if group.changes.is_empty() && group.error.is_empty() {
                unchanged.extend(group.node_ids.iter().cloned());
            } else {
                changing.extend(group.node_ids.iter().cloned());
            }
        }
        let affected = role_groups(&changing, &diff.new_roles);
        let batch = crate::fleet::parse_batch(&policy.batch).unwrap_or(BatchSize::All);
        let waves = plan_waves(&affected, policy.canary as usize, batch);
        let id = new_rollout_id(record, self.clock.now_unix_ms());
        let changing: usize = affected.iter().map(Vec::len).sum();
        let rollout = RolloutRecord {
            id: id.clone(),
            environment: environment.name.clone(),
            from: from.commit.clone(),
            to: to.commit.clone(),
            state: "running".into(),
            message: format!(
                "{changing} nodes change in {} waves; {} unchanged moved at once",
                waves.len(),
                unchanged.len()
            ),
            policy,
            waves,
            waves_started: 0,
            unchanged_nodes: unchanged.len() as u32,
            moved: unchanged.clone(),
            pinned_nodes: pinned.into_iter().map(|node| node.id).collect(),
            failures: 0,
            diff_summary: crate::fleet_diff::render(&diff),
            started_unix_ms: self.clock.now_unix_ms(),
            finished_unix_ms: None,
            bake_until_unix_ms: None,
            rollback: BTreeMap::new(),
            actions: Vec::new(),
        };
        tracing::info!(
            environment = %environment.name,
            rollout = %id,
            from = %from.commit,
            to = %to.commit,
            changing,
            unchanged = unchanged.len(),
            "a rollout starts"
        );
        let nothing_to_roll = rollout.waves.is_empty();
        environment.update_placement(|placement| {
            placement.rollout = Some(Moved {
                rollout_id: id.clone(),
                to,
                nodes: unchanged,
            })
        });
        record.push_rollout(rollout);
        self.metrics.rollout_started(&environment.name);
        if nothing_to_roll {
            self.complete(environment, record, "done", "no node's catalog changes")
                .await;
            self.start_pending_later(environment);
            return;
        }
        self.save(record).await;
        self.spawn_driver(environment.clone(), id, Control::Run);
    }

    /// Drives a rollout in the background, from `control`.
    fn spawn_driver(&self, environment: Arc<Environment>, id: String, control: Control) {
        let (sender, receiver) = watch::channel(control);
        self.drivers
            .lock()
            .expect("drivers lock")
            .insert(id.clone(), sender);
        let rollouts = self.clone();
        tokio::spawn(async move {
            rollouts.drive(&environment, &id, receiver).await;
            rollouts.drivers.lock().expect("drivers lock").remove(&id);
            rollouts.start_pending(&environment).await;
        });
    }

    /// After a rollout ends: the commit waiting for it, if any, starts the
    /// next one (in a task of its own, since the record lock is held).
    fn start_pending_later(&self, environment: &Arc<Environment>) {
        let rollouts = self.clone();
        let environment = environment.clone();
        tokio::spawn(async move { rollouts.start_pending(&environment).await });
    }

    async fn start_pending(&self, environment: &Arc<Environment>) {
        let waiting = environment.pending.lock().expect("pending lock").take();
        if let Some(revision) = waiting {
            self.commit_accepted(environment, revision).await;
        }
    }

    /// Runs waves until the rollout ends.
    async fn drive(
        &self,
        environment: &Arc<Environment>,
        id: &str,
        mut control: watch::Receiver<Control>,
    ) {
        loop {
            let asked = *control.borrow_and_update();
            match asked {
                Control::Abort => {
                    self.roll_back(environment, id, "aborted", "aborted by an operator")
                        .await;
                    return;
                }
                Control::Promote => {
                    self.promote(environment, id, &mut control).await;
                    return;
                }
                Control::Pause => {
                    // `control` already shows the pause in the record;
                    // wait for the next word.
                    if control.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                Control::Run => {}
            }
            // The next wave: its nodes move and converge.
            let next = {
                let mut record = environment.record.lock().await;
                // A word that came while the lock was awaited is heard first.
                if *control.borrow() != Control::Run {
                    None
                } else {
                    let Some(rollout) = record.active_mut().filter(|r| r.id == id) else {
                        return;
                    };
                    let index = rollout.waves_started as usize;
                    if index >= rollout.waves.len() {
                        self.complete(environment, &mut record, "done", "every wave is healthy")
                            .await;
                        return;
                    }
                    let placement = environment.placement();
                    let now = self.clock.now_unix_ms();
                    rollout.state = "running".into();
                    rollout.bake_until_unix_ms = None;
                    rollout.waves_started += 1;
                    let in_canary = rollout.waves[index].name == "canary";
                    let last = index + 1 == rollout.waves.len();
                    rollout.waves[index].started_unix_ms = Some(now);
                    rollout.message = format!("{} running", rollout.waves[index].name);
                    let nodes = self
                        .pinned_now_passed_by(&placement, &mut rollout.waves[index])
                        .await;
                    rollout.moved.extend(nodes.iter().cloned());
                    let to = rollout.to.clone();
                    let timeout = Duration::from_millis(rollout.policy.timeout_ms.max(1));
                    let trigger_id = format!("{id}-w{}", index + 1);
                    self.metrics
                        .rollout_wave(&environment.name, index as u32 + 1);
                    environment.update_placement(|placement| {
                        if let Some(moved) =
                            placement.rollout.as_mut().filter(|m| m.rollout_id == id)
                        {
                            moved.nodes.extend(nodes.iter().cloned());
                        }
                    });
                    self.save(&record).await;
                    Some((nodes, trigger_id, to, timeout, in_canary, last))
                }
            };
            let Some((nodes, trigger_id, to, timeout, in_canary, last)) = next else {
                continue;
            };
            let end = self
                .run_wave(
                    environment,
                    id,
                    &trigger_id,
                    nodes,
                    &to,
                    timeout,
                    &mut control,
                    Slot::Wave,
                )
                .await;
            if let WaveEnd::Aborted = end {
                self.roll_back(environment, id, "aborted", "aborted by an operator")
                    .await;
                return;
            }
            // Judge the wave.
            let (halt, bake) = {
                let mut record = environment.record.lock().await;
                let Some(rollout) = record.active_mut().filter(|r| r.id == id) else {
                    return;
                };
                let index = rollout.waves_started as usize - 1;
                rollout.waves[index].finished_unix_ms = Some(self.clock.now_unix_ms());
                let failures = rollout
                    .waves
                    .iter()
                    .flat_map(|w| w.outcomes.values())
                    .filter(|o| is_failure(o))
                    .count() as u32;
                rollout.failures = failures;
                let halt = over_limit(failures, rollout.policy.max_failures, in_canary).then(|| {
                    if in_canary {
                        format!("the canary failed ({failures} failed or unreachable): halted and rolled back")
                    } else {
                        format!(
                            "{failures} nodes failed or were unreachable, more than max_failures {}: halted and rolled back",
                            rollout.policy.max_failures
                        )
                    }
                });
                let bake = Duration::from_millis(rollout.policy.bake_ms);
                if halt.is_none() && !last && !bake.is_zero() && *control.borrow() == Control::Run {
                    let until = self.clock.now_unix_ms() + rollout.policy.bake_ms;
                    rollout.state = "baking".into();
                    rollout.bake_until_unix_ms = Some(until);
                    rollout.message = format!("{} healthy; baking", rollout.waves[index].name);
                }
                self.save(&record).await;
                (halt, bake)
            };
            if let Some(message) = halt {
                self.roll_back(environment, id, "rolled_back", &message)
                    .await;
                return;
            }
            if !last && !bake.is_zero() && *control.borrow() == Control::Run {
                let sleep = tokio::time::sleep(bake);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        changed = control.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            // A pause, abort or promote ends the bake; a
                            // resume of a running rollout changes nothing.
                            if *control.borrow() != Control::Run {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The nodes of `wave` to move: those a pin holds now are passed by,
    /// with the outcome `pinned`.
    async fn pinned_now_passed_by(
        &self,
        placement: &crate::environments::Placement,
        wave: &mut WaveRecord,
    ) -> Vec<String> {
        if placement.pins.is_empty() {
            return wave.nodes.clone();
        }
        let mut moving = Vec::new();
        for node_id in &wave.nodes {
            let record = self.nodes.enrolled(node_id).ok();
            let pinned = record.is_some_and(|r| placement.pin_of(&r.tags).is_some());
            if pinned {
                wave.outcomes.insert(
                    node_id.clone(),
                    TriggerOutcome {
                        result: "pinned".into(),
                        reason: String::new(),
                        ..unreachable_outcome()
                    },
                );
            } else {
                moving.push(node_id.clone());
            }
        }
        moving
    }

    /// Sends converge-now to `nodes` and records each outcome as it comes,
    /// in the wave being run or in the rollback. An abort ends the wait.
    #[allow(clippy::too_many_arguments)]
    async fn run_wave(
        &self,
        environment: &Arc<Environment>,
        id: &str,
        trigger_id: &str,
        nodes: Vec<String>,
        to: &str,
        timeout: Duration,
        control: &mut watch::Receiver<Control>,
        slot: Slot,
    ) -> WaveEnd {
        let mut pending = tokio::task::JoinSet::new();
        let mut waiting: BTreeSet<String> = BTreeSet::new();
        for node in nodes {
            let receiver = self.fleet.wait_for_report(trigger_id, &node);
            waiting.insert(node.clone());
            let fleet = self.fleet.clone();
            let trigger_id = trigger_id.to_string();
            // Delivered concurrently: a node whose channel another replica
            // holds takes up to `PEER_ANSWER_TIMEOUT` to confirm; one no
            // replica holds is unreachable.
            pending.spawn(async move {
                if !fleet.deliver_converge_now(&node, &trigger_id, false).await {
                    return (node, None);
                }
                let outcome = tokio::time::timeout(timeout, receiver).await;
                (node, outcome.ok().and_then(Result::ok))
            });
        }
        let mut listening = slot == Slot::Wave;
        loop {
            tokio::select! {
                joined = pending.join_next() => {
                    let Some(joined) = joined else { break };
                    let Ok((node, outcome)) = joined else { continue };
                    waiting.remove(&node);
                    if outcome.is_none() {
                        self.fleet.stop_waiting(trigger_id, &node);
                    }
                    let outcome = judge(outcome, to);
                    self.record_outcome(environment, id, &node, outcome, slot).await;
                }
                changed = control.changed(), if listening => {
                    if changed.is_err() {
                        listening = false;
                    } else if *control.borrow() == Control::Abort {
                        pending.abort_all();
                        for node in &waiting {
                            self.fleet.stop_waiting(trigger_id, node);
                        }
                        return WaveEnd::Aborted;
                    }
                }
            }
        }
        WaveEnd::Finished
    }

    async fn record_outcome(
        &self,
        environment: &Arc<Environment>,
        id: &str,
        node: &str,
        outcome: TriggerOutcome,
        slot: Slot,
    ) {
        let mut record = environment.record.lock().await;
        let Some(rollout) = record.rollouts.iter_mut().rev().find(|r| r.id == id) else {
            return;
        };
        match slot {
            Slot::Wave => {
                let Some(wave) = rollout
                    .waves
                    .get_mut((rollout.waves_started as usize).saturating_sub(1))
                else {
                    return;
                };
                wave.outcomes.insert(node.to_string(), outcome);
            }
            Slot::Rollback => {
                rollout.rollback.insert(node.to_string(), outcome);
            }
        }
        // A wave of thousands of nodes writes the record about once a
        // second, not once per node; the step after the wave (judging it,
        // finishing the rollback) writes it in any case.
        let due = {
            let now = crate::clock::instant();
            let mut saved = environment.outcome_saved.lock().expect("outcome lock");
            let due = saved.is_none_or(|at| now.duration_since(at) >= OUTCOME_SAVE_EVERY);
            if due {
                *saved = Some(now);
            }
            due
        };
        if due {
            self.save(&record).await;
        }
    }

    /// Halts a rollout: every node it moved goes back to the previous
    /// revision and is asked to converge; their runs are recorded.
    async fn roll_back(
        &self,
        environment: &Arc<Environment>,
        id: &str,
        state: &str,
        message: &str,
    ) {
        let (nodes, from, timeout) = {
            let mut record = environment.record.lock().await;
            let Some(rollout) = record.active_mut().filter(|r| r.id == id) else {
                return;
            };
            // The nodes that changed catalog; the unchanged ones go back
            // too, but have nothing to converge.
            let converged: BTreeSet<String> = rollout
                .waves
                .iter()
                .flat_map(|w| w.nodes.iter())
                .filter(|node| rollout.moved.contains(*node))
                .cloned()
                .collect();
            rollout.state = "rolling_back".into();
            rollout.message = message.to_string();
            rollout.bake_until_unix_ms = None;
            environment.update_placement(|placement| {
                if placement
                    .rollout
                    .as_ref()
                    .is_some_and(|m| m.rollout_id == id)
                {
                    placement.rollout = None;
                }
            });
            let from = rollout.from.clone();
            let timeout = Duration::from_millis(rollout.policy.timeout_ms.max(1));
            self.save(&record).await;
            (converged.into_iter().collect::<Vec<_>>(), from, timeout)
        };
        tracing::warn!(environment = %environment.name, rollout = %id, nodes = nodes.len(), "{message}");
        let trigger_id = format!("{id}-rollback");
        let (_keep, mut never) = watch::channel(Control::Run);
        self.run_wave(
            environment,
            id,
            &trigger_id,
            nodes,
            &from,
            timeout,
            &mut never,
            Slot::Rollback,
        )
        .await;
        let mut record = environment.record.lock().await;
        if let Some(rollout) = record.rollouts.iter_mut().rev().find(|r| r.id == id) {
            rollout.state = state.to_string();
            rollout.finished_unix_ms = Some(self.clock.now_unix_ms());
        }
        self.save(&record).await;
        self.metrics.rollout_ended(&environment.name, state);
    }

    /// Moves every node not moved yet at once, waits for their runs, and
    /// makes the new revision stable.
    async fn promote(
        &self,
        environment: &Arc<Environment>,
        id: &str,
        control: &mut watch::Receiver<Control>,
    ) {
        let (nodes, to, timeout) = {
            let mut record = environment.record.lock().await;
            let placement = environment.placement();
            let Some(rollout) = record.active_mut().filter(|r| r.id == id) else {
                return;
            };
            let started = rollout.waves_started as usize;
            let remaining: Vec<String> = rollout.waves[started..]
                .iter()
                .flat_map(|w| w.nodes.iter().cloned())
                .collect();
            rollout.waves.truncate(started);
            let mut promoted = wave("promoted", remaining);
            promoted.started_unix_ms = Some(self.clock.now_unix_ms());
            let nodes = self.pinned_now_passed_by(&placement, &mut promoted).await;
            rollout.waves.push(promoted);
            rollout.waves_started = rollout.waves.len() as u32;
            rollout.state = "running".into();
            rollout.bake_until_unix_ms = None;
            rollout.message = "promoted: every remaining node moves now".into();
            rollout.moved.extend(nodes.iter().cloned());
            environment.update_placement(|placement| {
                if let Some(moved) = placement.rollout.as_mut().filter(|m| m.rollout_id == id) {
                    moved.nodes.extend(nodes.iter().cloned());
                }
            });
            let to = rollout.to.clone();
            let timeout = Duration::from_millis(rollout.policy.timeout_ms.max(1));
            self.save(&record).await;
            (nodes, to, timeout)
        };
        let trigger_id = format!("{id}-promoted");
        let end = self
            .run_wave(
                environment,
                id,
                &trigger_id,
                nodes,
                &to,
                timeout,
                control,
                Slot::Wave,
            )
            .await;
        if let WaveEnd::Aborted = end {
            self.roll_back(environment, id, "aborted", "aborted by an operator")
                .await;
            return;
        }
        let mut record = environment.record.lock().await;
        if let Some(rollout) = record.active_mut().filter(|r| r.id == id) {
            let last = rollout.waves.len() - 1;
            rollout.waves[last].finished_unix_ms = Some(self.clock.now_unix_ms());
            rollout.failures = rollout
                .waves
                .iter()
                .flat_map(|w| w.outcomes.values())
                .filter(|o| is_failure(o))
                .count() as u32;
        }
        self.complete(
            environment,
            &mut record,
            "promoted",
            "promoted by an operator",
        )
        .await;
    }

    /// The active rollout ends well: its revision becomes stable.
    async fn complete(
        &self,
        environment: &Arc<Environment>,
        record: &mut EnvironmentRecord,
        state: &str,
        message: &str,
    ) {
        let Some(rollout) = record.active_mut() else {
            return;
        };
        rollout.state = state.to_string();
        rollout.message = message.to_string();
        rollout.finished_unix_ms = Some(self.clock.now_unix_ms());
        rollout.bake_until_unix_ms = None;
        let id = rollout.id.clone();
        let placement = environment.placement();
        let moved = placement
            .rollout
            .clone()
            .filter(|moved| moved.rollout_id == id);
        match moved {
            Some(moved) => {
                // Stable first, then the rollout's own list goes: a moved
                // node sees the new revision all along.
                self.make_stable(environment, record, moved.to).await;
                environment.update_placement(|placement| placement.rollout = None);
                // Nodes that enrolled during the rollout ran the old stable
                // revision; the new one reaches them now, not at their next
                // pull.
                let late: Vec<String> = self
                    .nodes_of(&environment.name)
                    .await
                    .into_iter()
                    .filter(|node| {
                        !moved.nodes.contains(&node.id) && placement.pin_of(&node.tags).is_none()
                    })
                    .map(|node| node.id)
                    .collect();
                let trigger_id = format!("{id}-late");
                for node in &late {
                    self.fleet.ask_converge_now(node, &trigger_id, false);
                }
                if !late.is_empty() {
                    tracing::info!(environment = %environment.name, rollout = %id, nodes = late.len(), "nodes that enrolled during the rollout are asked to converge");
                }
            }
            None => self.save(record).await,
        }
        self.metrics.rollout_ended(&environment.name, state);
        tracing::info!(environment = %environment.name, rollout = %id, state, "a rollout ended");
    }

    // ---- operators ----

    /// Pauses, resumes, aborts or promotes a rollout: here on a replica
    /// that decides, else on the leader.
    pub async fn control(
        &self,
        environment: &str,
        rollout_id: &str,
        action: &str,
        operator: &str,
    ) -> Result<RolloutRecord, RolloutError> {
        if self.decides() {
            return self
                .control_here(environment, rollout_id, action, operator)
                .await;
        }
        let environment = self.environments.named(environment)?.clone();
        Control::parse(action)?;
        let command = crate::bus::RolloutCommand::Control {
            rollout_id: rollout_id.to_string(),
            action: action.to_string(),
        };
        let id = self.forward(&environment.name, command, operator).await?;
        let record = self.record_from_leader(&environment).await?;
        record
            .rollout(&id)
            .cloned()
            .ok_or_else(|| RolloutError::Unknown {
                environment: environment.name.clone(),
                id,
            })
    }

    /// Pins the nodes of `environment` whose tags match `selector`: here on
    /// a replica that decides, else on the leader (see [`Rollouts::pin_here`]).
    pub async fn pin(
        &self,
        environment: &str,
        selector: BTreeMap<String, String>,
        revision: &str,
        operator: &str,
    ) -> Result<(String, Vec<String>), RolloutError> {
        if self.decides() {
            return self
                .pin_here(environment, selector, revision, operator)
                .await;
        }
        let environment = self.environments.named(environment)?.clone();
        let command = crate::bus::RolloutCommand::Pin {
            selector: selector.clone(),
            revision: revision.to_string(),
        };
        let commit = self.forward(&environment.name, command, operator).await?;
        self.record_from_leader(&environment).await?;
        Ok((commit, self.matching(&environment, &selector).await))
    }

    /// Releases the pin with exactly `selector`: here on a replica that
    /// decides, else on the leader (see [`Rollouts::unpin_here`]).
    pub async fn unpin(
        &self,
        environment: &str,
        selector: BTreeMap<String, String>,
        operator: &str,
    ) -> Result<Vec<String>, RolloutError> {
        if self.decides() {
            return self.unpin_here(environment, selector).await;
        }
        let environment = self.environments.named(environment)?.clone();
        let command = crate::bus::RolloutCommand::Unpin {
            selector: selector.clone(),
        };
        self.forward(&environment.name, command, operator).await?;
        self.record_from_leader(&environment).await?;
        Ok(self.matching(&environment, &selector).await)
    }

    /// Pauses, resumes, aborts or promotes a rollout, on this replica.
    async fn control_here(
        &self,
        environment: &str,
        rollout_id: &str,
        action: &str,
        operator: &str,
    ) -> Result<RolloutRecord, RolloutError> {
        let environment = self.environments.named(environment)?.clone();
        let control = Control::parse(action)?;
        let mut record = environment.record.lock().await;
        let rollout = if rollout_id.is_empty() {
            record
                .active_mut()
                .ok_or_else(|| RolloutError::NoneActive {
                    environment: environment.name.clone(),
                })?
        } else {
            let found = record.rollouts.iter_mut().find(|r| r.id == rollout_id);
            found.ok_or_else(|| RolloutError::Unknown {
                environment: environment.name.clone(),
                id: rollout_id.to_string(),
            })?
        };
        let allowed = match (control, rollout.state.as_str()) {
            (_, "rolling_back") => false,
            (Control::Pause, "running" | "baking") => true,
            (Control::Run, "paused") => true,
            (Control::Abort | Control::Promote, "running" | "baking" | "paused") => true,
            _ => false,
        };
        if !allowed {
            return Err(RolloutError::NotAllowed {
                id: rollout.id.clone(),
                state: rollout.state.clone(),
                action: control.verb().to_string(),
            });
        }
        let now = self.clock.now_unix_ms();
        rollout
            .actions
            .push(format!("{} by {operator} at {now}", control.verb()));
        match control {
            Control::Pause => {
                rollout.state = "paused".into();
                rollout.bake_until_unix_ms = None;
                rollout.message =
                    format!("paused by {operator}: no new wave starts (a wave in flight finishes)");
            }
            Control::Run => {
                rollout.state = "running".into();
                rollout.message = format!("resumed by {operator}");
            }
            Control::Abort | Control::Promote => {}
        }
        let id = rollout.id.clone();
        let answer = rollout.clone();
        self.save(&record).await;
        drop(record);
        let driver = self.drivers.lock().expect("drivers lock").get(&id).cloned();
        match driver {
            Some(sender) => {
                let _ = sender.send(control);
            }
            // No driver in this process (the server restarted): one starts
            // from where the record stands.
            None => self.spawn_driver(environment.clone(), id, control),
        }
        Ok(answer)
    }

    /// Pins the nodes of `environment` whose tags match `selector` to a
    /// revision (empty: the stable one), on this replica. Returns the
    /// commit and the live nodes held, which are asked to converge.
    async fn pin_here(
        &self,
        environment: &str,
        selector: BTreeMap<String, String>,
        revision: &str,
        operator: &str,
    ) -> Result<(String, Vec<String>), RolloutError> {
        let environment = self.environments.named(environment)?.clone();
        if selector.is_empty() {
            return Err(RolloutError::InvalidPin(
                "a pin needs a selection, e.g. --select role=api".to_string(),
            ));
        }
        let revision = self.revision_named(&environment, revision).await?;
        let commit = revision.commit.clone();
        {
            let mut record = environment.record.lock().await;
            record.name = environment.name.clone();
            record.pins.retain(|pin| pin.selector != selector);
            record.pins.push(PinRecord {
                selector: selector.clone(),
                commit: commit.clone(),
                created_unix_ms: self.clock.now_unix_ms(),
                created_by: operator.to_string(),
            });
            environment.update_placement(|placement| {
                placement.pins.retain(|pin| pin.selector != selector);
                placement.pins.push(PinnedRevision {
                    selector: selector.clone(),
                    revision,
                });
            });
            self.save(&record).await;
            self.metrics.pins(&environment.name, record.pins.len());
        }
        let held = self.converge_matching(&environment, &selector, "pin").await;
        tracing::info!(environment = %environment.name, commit = %commit, nodes = held.len(), "pinned");
        Ok((commit, held))
    }

    /// Releases the pin with exactly `selector`; its nodes follow the
    /// environment again and are asked to converge. On this replica.
    async fn unpin_here(
        &self,
        environment: &str,
        selector: BTreeMap<String, String>,
    ) -> Result<Vec<String>, RolloutError> {
        let environment = self.environments.named(environment)?.clone();
        {
            let mut record = environment.record.lock().await;
            let before = record.pins.len();
            record.pins.retain(|pin| pin.selector != selector);
            if record.pins.len() == before {
                let pins: Vec<String> = record
                    .pins
                    .iter()
                    .map(|pin| selector_text(&pin.selector))
                    .collect();
                return Err(RolloutError::InvalidPin(format!(
                    "environment {} has no pin {}: its pins are {}",
                    environment.name,
                    selector_text(&selector),
                    if pins.is_empty() {
                        "none".to_string()
                    } else {
                        pins.join("; ")
                    }
                )));
            }
            environment.update_placement(|placement| {
                placement.pins.retain(|pin| pin.selector != selector)
            });
            self.save(&record).await;
            self.metrics.pins(&environment.name, record.pins.len());
        }
        let released = self
            .converge_matching(&environment, &selector, "unpin")
            .await;
        Ok(released)
    }

    /// Asks the live nodes of `environment` matching `selector` to converge.
    async fn converge_matching(
        &self,
        environment: &Environment,
        selector: &BTreeMap<String, String>,
        reason: &str,
    ) -> Vec<String> {
        let nodes = self.matching(environment, selector).await;
        for node in &nodes {
            self.fleet.ask_converge_now(node, reason, false);
        }
        nodes
    }

    /// The live nodes of `environment` matching `selector`.
    async fn matching(
        &self,
        environment: &Environment,
        selector: &BTreeMap<String, String>,
    ) -> Vec<String> {
        self.nodes_of(&environment.name)
            .await
            .into_iter()
            .filter(|node| crate::environments::selector_matches(selector, &node.tags))
            .map(|node| node.id)
            .collect()
    }

    /// The revision `text` names for `environment`: empty is the stable
    /// one; a revision already in use is reused; another is read from the
    /// mirror and validated as a sync would.
    async fn revision_named(
        &self,
        environment: &Environment,
        text: &str,
    ) -> Result<Revision, RolloutError> {
        let text = text.trim();
        let in_use = environment.revisions_in_use();
        if text.is_empty() {
            return environment.stable.current().ok_or_else(|| {
                RolloutError::CannotRun(format!(
                    "environment {} serves no revision yet: give --revision",
                    environment.name
                ))
            });
        }
        if let Some(revision) = in_use.iter().find(|r| r.commit == text) {
            return Ok(revision.clone());
        }
        let Some(mirror) = self.mirror.clone() else {
            return Err(RolloutError::CannotRun(
                "the server follows a plain folder, not a git repository: it can pin only the revision it serves".to_string(),
            ));
        };
        let secrets = self.secrets.clone();
        let text = text.to_string();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Revision, RolloutError> {
            let commit = mirror.resolve_commit(&text).map_err(|e| match e {
                crate::git_sync::SyncError::UnknownRevision { .. } => {
                    RolloutError::InvalidPin(e.to_string())
                }
                other => RolloutError::CannotRun(format!("{:#}", anyhow::Error::from(other))),
            })?;
            load_revision(&mirror, &secrets, &commit).map_err(RolloutError::InvalidPin)
        })
        .await
        .map_err(|e| RolloutError::CannotRun(format!("Failed to read the revision: {e}")))??;
        if let Some(revision) = in_use.into_iter().find(|r| r.commit == loaded.commit) {
            return Ok(revision);
        }
        Ok(loaded)
    }

    // ---- reading ----

    /// Rollouts of `environment` (empty: every one), newest first.
    pub async fn list(
        &self,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, RolloutError> {
        let environments: Vec<Arc<Environment>> = if environment.is_empty() {
            self.environments.iter().cloned().collect()
        } else {
            vec![self.environments.named(environment)?.clone()]
        };
        let mut rollouts = Vec::new();
        for environment in environments {
            rollouts.extend(environment.record.lock().await.rollouts.iter().cloned());
        }
        rollouts.sort_by(|a, b| {
            b.started_unix_ms
                .cmp(&a.started_unix_ms)
                .then(b.id.cmp(&a.id))
        });
        rollouts.truncate(limit);
        Ok(rollouts)
    }

    /// One rollout: by id, else the environment's active one, else its
    /// latest.
    pub async fn status(
        &self,
        environment: &str,
        rollout_id: &str,
    ) -> Result<RolloutRecord, RolloutError> {
        let environment = self.environments.named(environment)?;
        let record = environment.record.lock().await;
        let found = if rollout_id.is_empty() {
            record.active().or(record.rollouts.last())
        } else {
            record.rollout(rollout_id)
        };
        found.cloned().ok_or_else(|| {
            if rollout_id.is_empty() {
                RolloutError::NoneActive {
                    environment: environment.name.clone(),
                }
            } else {
                RolloutError::Unknown {
                    environment: environment.name.clone(),
                    id: rollout_id.to_string(),
                }
            }
        })
    }

    /// Every environment as `cms-server environments` shows it.
    pub async fn environments(&self) -> Vec<pb::EnvironmentStatus> {
        let config = self.environments.config().clone();
        let nodes = self.nodes_all().await;
        let mut statuses = Vec::new();
        for environment in self.environments.iter() {
            let record = environment.record.lock().await;
            let pending = environment
                .pending
                .lock()
                .expect("pending lock")
                .as_ref()
                .map(|r| r.commit.clone())
                .unwrap_or_default();
            statuses.push(pb::EnvironmentStatus {
                name: environment.name.clone(),
                branch: environment.branch.clone(),
                is_default: environment.name == config.default_name(),
                stable_revision: environment
                    .stable
                    .current()
                    .map(|r| r.commit)
                    .unwrap_or_default(),
                active_rollout_id: record.active().map(|r| r.id.clone()).unwrap_or_default(),
                pending_revision: pending,
                pins: record.pins.iter().map(pin_to_proto).collect(),
                nodes: nodes
                    .iter()
                    .filter(|node| config.environment_of(node) == environment.name)
                    .count() as u32,
            });
        }
        statuses
    }

    /// Every live node; none when the store cannot be read (logged).
    async fn nodes_all(&self) -> Vec<NodeRecord> {
        let nodes = self.nodes.clone();
        match tokio::task::spawn_blocking(move || nodes.list(&BTreeMap::new())).await {
            Ok(Ok(list)) => list
                .into_iter()
                .map(|(record, _)| record)
                .filter(|record| record.status != NodeStatus::Gone)
                .collect(),
            Ok(Err(error)) => {
                tracing::warn!("Failed to list the nodes: {error}");
                Vec::new()
            }
            Err(error) => {
                tracing::warn!("Failed to list the nodes: {error}");
                Vec::new()
            }
        }
    }
}

/// Which list a node's outcome goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Wave,
    Rollback,
}

/// `r<ms>`, unique in the record.
fn new_rollout_id(record: &EnvironmentRecord, now_unix_ms: u64) -> String {
    let mut at = now_unix_ms;
    loop {
        let id = format!("r{at}");
        if record.rollout(&id).is_none() {
            return id;
        }
        at += 1;
    }
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A commit of the mirror, parsed, validated and with its secrets read, as
/// a sync would accept it; the problems as text otherwise. Blocks.
pub fn load_revision(
    mirror: &GitSource,
    secrets: &Arc<ServerSecrets>,
    commit: &str,
) -> Result<Revision, String> {
    let files = mirror
        .read_commit(commit)
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
    let (repository, secrets, diagnostics) = crate::git_sync::validate_files(files, secrets);
    if !diagnostics.is_empty() {
        return Err(format!(
            "revision {} does not validate:\n{diagnostics}",
            short(commit)
        ));
    }
    Ok(Revision {
        commit: commit.to_string(),
        repository: Arc::new(repository),
        secrets,
    })
}

/// At start: a rollout that was running is paused where it stood (its
/// moved nodes stay on the new revision); one that was rolling back is
/// finished as rolled back (its nodes get the previous revision at their
/// next pull).
pub fn interrupt_active(record: &mut EnvironmentRecord, now_unix_ms: u64) -> bool {
    let Some(rollout) = record.rollouts.last_mut() else {
        return false;
    };
    match rollout.state.as_str() {
        "running" | "baking" => {
            rollout.state = "paused".into();
            rollout.bake_until_unix_ms = None;
            rollout.message = "the server restarted during the rollout: resume to go on with the next wave, abort to roll back".into();
            for wave in &mut rollout.waves {
                if wave.started_unix_ms.is_some() && wave.finished_unix_ms.is_none() {
                    for node in &wave.nodes {
                        wave.outcomes
                            .entry(node.clone())
                            .or_insert_with(unreachable_outcome);
                    }
                    wave.finished_unix_ms = Some(now_unix_ms);
                }
            }
            true
        }
        "rolling_back" => {
            rollout.state = "rolled_back".into();
            rollout.finished_unix_ms = Some(now_unix_ms);
            rollout.message = format!(
                "{} (the server restarted while rolling back: the nodes get the previous revision at their next pull)",
                rollout.message
            );
            true
        }
        _ => false,
    }
}

// ---- the wire ----

fn pin_to_proto(pin: &PinRecord) -> pb::Pin {
    pb::Pin {
        selector: Some(pb::Selector {
            tags: pin.selector.clone().into_iter().collect(),
        }),
        revision: pin.commit.clone(),
        created_unix_ms: pin.created_unix_ms as i64,
        created_by: pin.created_by.clone(),
    }
}

fn outcomes_to_proto(
    nodes: &[String],
    outcomes: &BTreeMap<String, TriggerOutcome>,
    batch: u32,
    started: bool,
) -> Vec<pb::TriggerNodeOutcome> {
    nodes
        .iter()
        .map(|node| {
            let outcome = outcomes.get(node);
            pb::TriggerNodeOutcome {
                node_id: node.clone(),
                result: match outcome {
                    Some(outcome) => outcome.result.clone(),
                    None if started => "running".into(),
                    None => "pending".into(),
                },
                batch,
                run_id: outcome.map(|o| o.run_id.clone()).unwrap_or_default(),
                reason: outcome.map(|o| o.reason.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

/// A rollout as the admin API sends it.
pub fn to_proto(rollout: &RolloutRecord) -> pb::RolloutProgress {
    let finished = !rollout.is_active();
    pb::RolloutProgress {
        rollout_id: rollout.id.clone(),
        environment: rollout.environment.clone(),
        from_revision: rollout.from.clone(),
        to_revision: rollout.to.clone(),
        state: rollout.state.clone(),
        message: rollout.message.clone(),
        waves: rollout
            .waves
            .iter()
            .enumerate()
            .map(|(index, wave)| pb::RolloutWave {
                name: wave.name.clone(),
                nodes: outcomes_to_proto(
                    &wave.nodes,
                    &wave.outcomes,
                    index as u32 + 1,
                    wave.started_unix_ms.is_some() && !finished,
                ),
                started_unix_ms: wave.started_unix_ms.unwrap_or(0) as i64,
                finished_unix_ms: wave.finished_unix_ms.unwrap_or(0) as i64,
            })
            .collect(),
        current_wave: rollout.waves_started,
        unchanged_nodes: rollout.unchanged_nodes,
        failures: rollout.failures,
        policy: Some(pb::RolloutPolicy {
            canary: rollout.policy.canary,
            batch: rollout.policy.batch.clone(),
            bake_seconds: rollout.policy.bake_ms / 1000,
            max_failures: rollout.policy.max_failures,
            timeout_seconds: rollout.policy.timeout_ms / 1000,
        }),
        diff_summary: rollout.diff_summary.clone(),
        started_unix_ms: rollout.started_unix_ms as i64,
        finished_unix_ms: rollout.finished_unix_ms.unwrap_or(0) as i64,
        bake_until_unix_ms: rollout.bake_until_unix_ms.unwrap_or(0) as i64,
        rollback: {
            let nodes: Vec<String> = rollout.rollback.keys().cloned().collect();
            outcomes_to_proto(&nodes, &rollout.rollback, 0, false)
        },
        pinned_nodes: rollout.pinned_nodes.clone(),
        actions: rollout.actions.clone(),
    }
}

/// At start: an environment as the store and the mirror give it back: its
/// stable revision, the active rollout's revision and nodes, its pins.
/// A revision that cannot be read again is logged and left out (a pin
/// whose revision is gone holds nothing; a rollout whose revision is gone
/// is paused with its nodes on the stable revision until resumed or
/// aborted). Blocks.
pub fn restore_environment(
    spec: &crate::environments::EnvironmentSpec,
    store: &dyn Store,
    mirror: Option<&GitSource>,
    secrets: &Arc<ServerSecrets>,
    legacy_current: Option<String>,
    now_unix_ms: u64,
    interrupt_rollouts: bool,
) -> Environment {
    let mut record = match store.environment(&spec.name) {
        Ok(Some(record)) => record,
        Ok(None) => EnvironmentRecord {
            name: spec.name.clone(),
            stable: legacy_current.unwrap_or_default(),
            ..EnvironmentRecord::default()
        },
        Err(error) => {
            tracing::warn!(
                "Failed to read environment {}: {}; it starts afresh",
                spec.name,
                crate::store::error_chain(&error)
            );
            EnvironmentRecord {
                name: spec.name.clone(),
                ..EnvironmentRecord::default()
            }
        }
    };
    if interrupt_rollouts
        && interrupt_active(&mut record, now_unix_ms)
        && let Err(error) = store.put_environment(&record)
    {
        tracing::warn!("Failed to store environment {}: {error}", spec.name);
    }
    let load = |commit: &str| -> Option<Revision> {
        let mirror = mirror?;
        match load_revision(mirror, secrets, commit) {
            Ok(revision) => Some(revision),
            Err(problem) => {
                tracing::warn!(environment = %spec.name, commit, "Failed to restore a revision: {problem}");
                None
            }
        }
    };
    let stable = (!record.stable.is_empty())
        .then(|| load(&record.stable))
        .flatten();
    let mut placement = crate::environments::Placement::default();
    if let Some(active) = record.active()
        && let Some(to) = load(&active.to)
    {
        placement.rollout = Some(Moved {
            rollout_id: active.id.clone(),
            to,
            nodes: active.moved.clone(),
        });
    }
    for pin in &record.pins {
        if let Some(revision) = load(&pin.commit) {
            placement.pins.push(PinnedRevision {
                selector: pin.selector.clone(),
                revision,
            });
        }
    }
    Environment::new(spec, stable, placement, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("{prefix}-{i}")).collect()
    }

    fn shape(waves: &[WaveRecord]) -> Vec<(String, Vec<String>)> {
        waves
            .iter()
            .map(|w| (w.name.clone(), w.nodes.clone()))
            .collect()
    }

    #[test]
    fn nodes_whose_changes_differ_only_by_their_own_name_share_one_canary_per_role_list() {
        let side = |commit: &str, content: &str| {
            let mut files = cms_roles::RepoFiles::new();
            files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
            for role in ["web", "api"] {
                files.insert(
                    format!("roles/{role}.toml"),
                    format!("[match]\nrole = \"{role}\"\n[[file]]\npath = \"/srv/{{{{node.id}}}}.conf\"\ncontent = \"{content}\"\n").as_str(),
                );
            }
            DiffSide {
                commit: commit.into(),
                repository: Arc::new(cms_roles::Repository::parse(files).expect("valid")),
                secrets: Arc::default(),
                generation: 0,
            }
        };
        let nodes: Vec<cms_roles::Node> = ["web-1", "web-2", "web-3", "api-1", "api-2"]
            .into_iter()
            .map(|id| cms_roles::Node {
                id: id.into(),
                tags: BTreeMap::from([("role".into(), id[..3].to_string())]),
                facts: BTreeMap::new(),
                attested: BTreeMap::new(),
            })
            .collect();
        let diff = diff_fleet(&side("aaaa", "v1"), &side("bbbb", "v2"), &nodes, 1);
        // Each node changes its own path: five change sets.
        assert_eq!(diff.groups.len(), 5, "{diff:?}");
        let changing: Vec<String> = diff
            .groups
            .iter()
            .flat_map(|g| g.node_ids.iter().cloned())
            .collect();
        let groups = role_groups(&changing, &diff.new_roles);
        let mut sorted: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                let mut g = g.clone();
                g.sort();
                g
            })
            .collect();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![names("api", 2), names("web", 3)],
            "grouped by role list"
        );
        let waves = plan_waves(&groups, 1, BatchSize::All);
        assert_eq!(waves[0].name, "canary");
        assert_eq!(waves[0].nodes.len(), 2, "one canary per role: {waves:?}");
        assert_eq!(waves[1].nodes.len(), 3, "{waves:?}");
    }

    #[test]
    fn canaries_of_each_group_go_first_then_the_rest_in_batches_of_all_affected_nodes() {
        let groups = vec![names("web", 5), names("api", 3)];
        let waves = plan_waves(&groups, 1, BatchSize::Percent(50));
        assert_eq!(
            shape(&waves),
            vec![
                (
                    "canary".to_string(),
                    vec!["web-1".to_string(), "api-1".to_string()]
                ),
                (
                    "wave 2".to_string(),
                    vec!["web-2", "web-3", "web-4", "web-5"]
                        .into_iter()
                        .map(String::from)
                        .collect()
                ),
                (
                    "wave 3".to_string(),
                    vec!["api-2".to_string(), "api-3".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn no_canary_and_all_at_once_is_one_wave_and_nothing_affected_is_no_wave() {
        let groups = vec![names("web", 3)];
        assert_eq!(
            shape(&plan_waves(&groups, 0, BatchSize::All)),
            vec![("wave 1".to_string(), names("web", 3))]
        );
        assert!(plan_waves(&[], 1, BatchSize::Count(2)).is_empty());
        // A canary count larger than a group takes the whole group.
        assert_eq!(
            shape(&plan_waves(&[names("db", 2)], 5, BatchSize::Count(1))),
            vec![("canary".to_string(), names("db", 2))]
        );
    }

    fn outcome(result: &str, revision: &str) -> TriggerOutcome {
        TriggerOutcome {
            result: result.into(),
            run_id: "run".into(),
            failed_resources: Vec::new(),
            revision: revision.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn a_run_of_another_revision_is_a_failure_and_no_report_is_unreachable() {
        assert_eq!(
            judge(Some(outcome("changed", "bbbb")), "bbbb").result,
            "changed"
        );
        let stale = judge(
            Some(outcome("unchanged", "aaaaaaaaaaaaaaaa")),
            "bbbbbbbbbbbbbbbb",
        );
        assert_eq!(stale.result, "failed");
        assert_eq!(
            stale.failed_resources,
            vec!["ran revision aaaaaaaaaaaa, not bbbbbbbbbbbb".to_string()]
        );
        assert_eq!(
            judge(Some(outcome("failed", "aaaa")), "bbbb").result,
            "failed"
        );
        assert_eq!(judge(None, "bbbb").result, "unreachable");
    }

    fn rollout(state: &str) -> RolloutRecord {
        RolloutRecord {
            id: "r1".into(),
            environment: "prod".into(),
            from: "a".into(),
            to: "b".into(),
            state: state.into(),
            message: String::new(),
            policy: RolloutPolicyRecord {
                canary: 1,
                batch: String::new(),
                bake_ms: 0,
                max_failures: 0,
                timeout_ms: 1000,
            },
            waves: vec![
                WaveRecord {
                    started_unix_ms: Some(5),
                    ..wave("canary", vec!["web-1".into()])
                },
                wave("wave 2", vec!["web-2".into()]),
            ],
            waves_started: 1,
            moved: ["web-1".to_string()].into(),
            unchanged_nodes: 0,
            pinned_nodes: Vec::new(),
            failures: 0,
            diff_summary: String::new(),
            started_unix_ms: 1,
            finished_unix_ms: None,
            bake_until_unix_ms: None,
            rollback: BTreeMap::new(),
            actions: Vec::new(),
        }
    }

    #[test]
    fn a_restart_pauses_a_running_rollout_and_finishes_one_rolling_back() {
        let mut record = EnvironmentRecord {
            name: "prod".into(),
            stable: "a".into(),
            pins: Vec::new(),
            rollouts: vec![rollout("running")],
        };
        assert!(interrupt_active(&mut record, 9));
        let paused = &record.rollouts[0];
        assert_eq!(paused.state, "paused");
        assert!(paused.message.contains("the server restarted"));
        // The wave in flight is finished; its silent node is unreachable.
        assert_eq!(paused.waves[0].finished_unix_ms, Some(9));
        assert_eq!(paused.waves[0].outcomes["web-1"].result, "unreachable");
        assert_eq!(paused.waves[1].started_unix_ms, None);
        assert!(!interrupt_active(&mut record, 10), "a paused one stays");

        record.rollouts[0].state = "rolling_back".into();
        assert!(interrupt_active(&mut record, 11));
        assert_eq!(record.rollouts[0].state, "rolled_back");
        assert!(record.active().is_none());
    }

    #[test]
    fn an_environment_keeps_its_last_rollouts_only() {
        let mut record = EnvironmentRecord::default();
        for i in 0..crate::store::KEPT_ROLLOUTS + 5 {
            let mut r = rollout("done");
            r.id = format!("r{i}");
            record.push_rollout(r);
        }
        assert_eq!(record.rollouts.len(), crate::store::KEPT_ROLLOUTS);
        assert_eq!(record.rollouts[0].id, "r5");
    }

    #[test]
    fn progress_shows_pending_running_and_finished_nodes_by_wave() {
        let mut running = rollout("running");
        running.waves[0]
            .outcomes
            .insert("web-1".into(), outcome("changed", "b"));
        let progress = to_proto(&running);
        assert_eq!(progress.waves[0].nodes[0].result, "changed");
        assert_eq!(progress.waves[1].nodes[0].result, "pending");
        running.waves[0].outcomes.clear();
        assert_eq!(to_proto(&running).waves[0].nodes[0].result, "running");
    }

    #[test]
    fn only_known_actions_are_read() {
        assert_eq!(Control::parse("resume").unwrap(), Control::Run);
        assert!(matches!(
            Control::parse("rollback"),
            Err(RolloutError::BadAction(_))
        ));
    }
}
