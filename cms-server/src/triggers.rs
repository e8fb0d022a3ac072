//! Fleet triggers: converge a selection of the fleet now, canary first,
//! then batch after batch, stopping when too many fail. A trigger runs in
//! the background (it goes on if the client goes), its progress written to
//! the store after every node's outcome and readable live while it runs.
//!
//! The rules (`plan`, `over_limit`, `select`, `progress_of`) are pure
//! functions in `fleet`; this module does the work.
//!
//! Replicas: the replica that plans a trigger runs it, and claims
//! `trigger:<id>` (`leader::Locks::claim`) while it does. A trigger stored
//! as running whose claim no live replica holds was left by a replica
//! that died: the leader marks it interrupted ([`Triggers::interrupt_orphans`],
//! after [`ORPHAN_GRACE`], so that a trigger just planned is not taken
//! for one). A server alone marks every running trigger interrupted at
//! start ([`interrupt_running`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cms_proto::v1 as pb;
use tokio::sync::watch;

use crate::clock::{Clock, SharedClock};
use crate::fleet::{BatchSize, Fleet, over_limit, progress_of};
use crate::store::{SharedStore, Store, StoreError, TriggerOutcome, TriggerRecord};

/// How old a running trigger must be before a replica that finds no one
/// claiming it marks it interrupted: more than the time between its plan
/// and its claim.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// What triggers need.
#[derive(Debug, Clone)]
pub struct Triggers {
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    pub clock: SharedClock,
    /// How long a trigger waits for one node's report unless told.
    pub default_timeout: Duration,
    /// Which triggers the live replicas run.
    pub locks: crate::leader::Locks,
}

/// The claim a replica holds while it runs trigger `id`.
fn claim_name(id: &str) -> String {
    format!("trigger:{id}")
}

/// A trigger as asked.
#[derive(Debug, Clone)]
pub struct TriggerRequest {
    pub selector: BTreeMap<String, String>,
    /// `25%`, `10`, or empty for all at once.
    pub batch: String,
    pub canary: u32,
    pub noop: bool,
    pub max_failures: u32,
    /// Zero for the default.
    pub timeout: Duration,
}

/// A trigger checked and ready to plan.
#[derive(Debug, Clone)]
pub struct CheckedTrigger {
    request: TriggerRequest,
    batch: BatchSize,
    timeout: Duration,
}

impl CheckedTrigger {
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("a trigger needs a selection, e.g. --select role=web")]
    NoSelection,
    #[error("{0}")]
    Batch(String),
    #[error("no live node matches {selector}")]
    NoNodeMatches { selector: String },
    #[error("no trigger {id}")]
    Unknown { id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Triggers {
    /// Checks what does not need the store.
    pub fn check(&self, request: TriggerRequest) -> Result<CheckedTrigger, TriggerError> {
        if request.selector.is_empty() {
            return Err(TriggerError::NoSelection);
        }
        let batch = crate::fleet::parse_batch(&request.batch).map_err(TriggerError::Batch)?;
        let timeout = if request.timeout.is_zero() {
            self.default_timeout
        } else {
            request.timeout
        };
        Ok(CheckedTrigger {
            request,
            batch,
            timeout,
        })
    }

    /// Picks the nodes, plans the batches and records the trigger as
    /// running. Blocks.
    pub fn plan(&self, checked: &CheckedTrigger) -> Result<TriggerRecord, TriggerError> {
        let request = &checked.request;
        let nodes = crate::fleet::select(self.store.nodes()?, &request.selector);
        if nodes.is_empty() {
            return Err(TriggerError::NoNodeMatches {
                selector: request
                    .selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        let record = TriggerRecord {
            id: self.new_trigger_id()?,
            batches: crate::fleet::plan(&nodes, request.canary as usize, checked.batch),
            selector: request.selector.clone(),
            batch: request.batch.clone(),
            canary: request.canary,
            noop: request.noop,
            max_failures: request.max_failures,
            state: "running".into(),
            message: String::new(),
            started_unix_ms: self.clock.now_unix_ms(),
            finished_unix_ms: None,
            batches_started: 0,
            outcomes: BTreeMap::new(),
        };
        self.store.put_trigger(&record)?;
        Ok(record)
    }

    /// Starts a planned trigger in the background; it goes on if the client
    /// goes. Returns its progress channel.
    pub fn start(
        &self,
        record: TriggerRecord,
        timeout: Duration,
    ) -> watch::Receiver<pb::TriggerProgress> {
        let (sender, receiver) = watch::channel(progress_of(&record));
        self.fleet.track_trigger(&record.id, receiver.clone());
        let triggers = self.clone();
        tokio::spawn(async move {
            let id = record.id.clone();
            if !triggers.locks.claim(&claim_name(&id)).await {
                tracing::warn!(trigger = %id, "Failed to claim the trigger for this replica: another replica may take it for one left by a dead replica");
            }
            run_trigger(&triggers, record, timeout, &sender).await;
            triggers.fleet.forget_trigger(&id);
            triggers.locks.release(&claim_name(&id));
        });
        receiver
    }

    /// A trigger's progress: live while it runs here, else as stored.
    /// Blocks when it reads the store.
    pub fn status(&self, id: &str) -> Result<pb::TriggerProgress, TriggerError> {
        if let Some(live) = self.fleet.progress(id) {
            return Ok(live.borrow().clone());
        }
        let record = self
            .store
            .trigger(id)?
            .ok_or_else(|| TriggerError::Unknown { id: id.to_string() })?;
        Ok(progress_of(&record))
    }

    /// A new trigger id: the start time, made unique in this store.
    fn new_trigger_id(&self) -> Result<String, StoreError> {
        let mut at = self.clock.now_unix_ms();
        loop {
            let id = format!("t{at}");
            if self.store.trigger(&id)?.is_none() {
                return Ok(id);
            }
            at += 1;
        }
    }

    async fn save(&self, record: &TriggerRecord) {
        let store = self.store.clone();
        let copy = record.clone();
        match tokio::task::spawn_blocking(move || store.put_trigger(&copy)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("Failed to store trigger {}: {error}", record.id),
            Err(error) => tracing::warn!("Failed to store trigger {}: {error}", record.id),
        }
    }
}

impl Triggers {
    /// Marks interrupted the triggers stored as running that no live
    /// replica claims (their replica died), once older than
    /// [`ORPHAN_GRACE`]. Returns their ids. Run by the leader.
    pub async fn interrupt_orphans(&self) -> anyhow::Result<Vec<String>> {
        let store = self.store.clone();
        let running = tokio::task::spawn_blocking(move || store.triggers()).await??;
        let now = self.clock.now_unix_ms();
        let mut interrupted = Vec::new();
        for trigger in running {
            let young =
                now.saturating_sub(trigger.started_unix_ms) < ORPHAN_GRACE.as_millis() as u64;
            if trigger.state != "running" || young || self.fleet.progress(&trigger.id).is_some() {
                continue;
            }
            let name = claim_name(&trigger.id);
            if !self.locks.claim(&name).await {
                continue;
            }
            let store = self.store.clone();
            let id = trigger.id.clone();
            let marked = tokio::task::spawn_blocking(move || -> Result<bool, StoreError> {
                // Read again: it may have ended since it was listed.
                match store.trigger(&id)? {
                    Some(mut trigger) if trigger.state == "running" => {
                        mark_interrupted(
                            &mut trigger,
                            now,
                            "the replica running the trigger stopped",
                        );
                        store.put_trigger(&trigger)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            })
            .await;
            self.locks.release(&name);
            if matches!(marked, Ok(Ok(true))) {
                tracing::warn!(trigger = %trigger.id, "a trigger left running by a replica that stopped is marked interrupted");
                interrupted.push(trigger.id);
            }
        }
        Ok(interrupted)
    }
}

fn mark_interrupted(trigger: &mut TriggerRecord, now_unix_ms: u64, message: &str) {
    trigger.state = "interrupted".into();
    trigger.message = message.into();
    trigger.finished_unix_ms = Some(now_unix_ms);
}

/// A trigger that was running when the server stopped is marked
/// interrupted: no one waits for its reports any more. For a server
/// alone only: replicas use [`Triggers::interrupt_orphans`].
pub fn interrupt_running(store: &dyn Store, clock: &dyn Clock) -> Result<(), StoreError> {
    for mut trigger in store.triggers()? {
        if trigger.state == "running" {
            mark_interrupted(
                &mut trigger,
                clock.now_unix_ms(),
                "the server stopped while the trigger ran",
            );
            store.put_trigger(&trigger)?;
        }
    }
    Ok(())
}

/// Why a node of a trigger sent no report.
#[derive(Debug, Clone, Copy)]
enum Unreached {
    /// No replica holds a watch channel of the node: it was never told.
    NotConnected,
    /// Told, but its report did not come within the timeout.
    NoReport,
}

/// `unreached` in words a person can act on, with the node's last contact.
async fn unreached_reason(
    triggers: &Triggers,
    node: &str,
    unreached: Unreached,
    timeout: Duration,
) -> String {
    match unreached {
        Unreached::NotConnected => {
            let store = triggers.store.clone();
            let id = node.to_string();
            let last_seen = tokio::task::spawn_blocking(move || store.node(&id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .map_or(0, |record| {
                    let now = triggers.clock.now_unix_ms();
                    triggers
                        .fleet
                        .last_seen(node, record.last_seen_unix_ms, now)
                });
            let last = if last_seen == 0 {
                "it never called the server".to_string()
            } else {
                format!(
                    "its last call was at {}",
                    crate::dashboard::format_time(last_seen)
                )
            };
            format!(
                "no agent daemon of it is connected (no watch channel open), so it was never told to converge; {last}. Check that the agent service runs there (`systemctl status cms-agent`, which runs `cms-agent run`) and reaches the server"
            )
        }
        Unreached::NoReport => format!(
            "it was told to converge, but no report came within {} s: the run may take longer (raise --timeout), or the agent stopped during the run",
            timeout.as_secs()
        ),
    }
}

async fn run_trigger(
    triggers: &Triggers,
    mut record: TriggerRecord,
    timeout: Duration,
    progress: &watch::Sender<pb::TriggerProgress>,
) {
    let batches = record.batches.clone();
    let has_canary = record.canary > 0;
    let mut failures = 0u32;
    for (index, batch) in batches.iter().enumerate() {
        record.batches_started = index as u32 + 1;
        triggers.save(&record).await;
        let _ = progress.send(progress_of(&record));
        let mut pending = tokio::task::JoinSet::new();
        for node in batch {
            // Waiting starts before the command goes, so that a report
            // coming back at once finds its waiter.
            let receiver = triggers.fleet.wait_for_report(&record.id, node);
            let fleet = triggers.fleet.clone();
            let (node, trigger_id, noop) = (node.clone(), record.id.clone(), record.noop);
            // Delivered concurrently: a node whose channel another replica
            // holds takes up to `PEER_ANSWER_TIMEOUT` to confirm.
            pending.spawn(async move {
                if !fleet.deliver_converge_now(&node, &trigger_id, noop).await {
                    return (node, Err(Unreached::NotConnected));
                }
                let outcome = tokio::time::timeout(timeout, receiver).await;
                let outcome = outcome.ok().and_then(Result::ok);
                (node, outcome.ok_or(Unreached::NoReport))
            });
        }
        triggers.save(&record).await;
        let _ = progress.send(progress_of(&record));
        while let Some(joined) = pending.join_next().await {
            let Ok((node, outcome)) = joined else {
                continue;
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(unreached) => {
                    triggers.fleet.stop_waiting(&record.id, &node);
                    TriggerOutcome {
                        result: "unreachable".into(),
                        run_id: String::new(),
                        failed_resources: Vec::new(),
                        revision: String::new(),
                        reason: unreached_reason(triggers, &node, unreached, timeout).await,
                    }
                }
            };
            if outcome.result == "failed" || outcome.result == "unreachable" {
                failures += 1;
            }
            record.outcomes.insert(node, outcome);
            triggers.save(&record).await;
            let _ = progress.send(progress_of(&record));
        }
        let in_canary = has_canary && index == 0;
        if over_limit(failures, record.max_failures, in_canary) {
            record.state = "stopped".into();
            record.message = if in_canary {
                format!("the canary failed ({failures} failed or unreachable): rollout stopped")
            } else {
                format!(
                    "{failures} nodes failed or were unreachable, more than --max-failures {}: rollout stopped",
                    record.max_failures
                )
            };
            break;
        }
    }
    if record.state == "running" {
        record.state = "done".into();
    }
    record.finished_unix_ms = Some(triggers.clock.now_unix_ms());
    triggers.save(&record).await;
    let _ = progress.send(progress_of(&record));
}
