//! Fleet triggers: converge a selection of the fleet now, canary first,
//! then batch after batch, stopping when too many fail. A trigger runs in
//! the background (it goes on if the client goes), its progress written to
//! the store after every node's outcome and readable live while it runs.
//!
//! The rules (`plan`, `over_limit`, `select`, `progress_of`) are pure
//! functions in `fleet`; this module does the work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cms_proto::v1 as pb;
use tokio::sync::watch;

use crate::clock::{Clock, SharedClock};
use crate::fleet::{BatchSize, Fleet, over_limit, progress_of};
use crate::store::{SharedStore, Store, StoreError, TriggerOutcome, TriggerRecord};

/// What triggers need.
#[derive(Debug, Clone)]
pub struct Triggers {
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    pub clock: SharedClock,
    /// How long a trigger waits for one node's report unless told.
    pub default_timeout: Duration,
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
            run_trigger(&triggers, record, timeout, &sender).await;
            triggers.fleet.forget_trigger(&id);
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

/// A trigger that was running when the server stopped is marked
/// interrupted: no one waits for its reports any more.
pub fn interrupt_running(store: &dyn Store, clock: &dyn Clock) -> Result<(), StoreError> {
    for mut trigger in store.triggers()? {
        if trigger.state == "running" {
            trigger.state = "interrupted".into();
            trigger.message = "the server stopped while the trigger ran".into();
            trigger.finished_unix_ms = Some(clock.now_unix_ms());
            store.put_trigger(&trigger)?;
        }
    }
    Ok(())
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
            let receiver = triggers.fleet.wait_for_report(&record.id, node);
            if !triggers.fleet.converge_now(node, &record.id, record.noop) {
                triggers.fleet.stop_waiting(&record.id, node);
                record.outcomes.insert(
                    node.clone(),
                    TriggerOutcome {
                        result: "unreachable".into(),
                        run_id: String::new(),
                        failed_resources: Vec::new(),
                        revision: String::new(),
                    },
                );
                failures += 1;
                continue;
            }
            let node = node.clone();
            pending.spawn(async move {
                let outcome = tokio::time::timeout(timeout, receiver).await;
                (node, outcome.ok().and_then(Result::ok))
            });
        }
        triggers.save(&record).await;
        let _ = progress.send(progress_of(&record));
        while let Some(joined) = pending.join_next().await {
            let Ok((node, outcome)) = joined else {
                continue;
            };
            let outcome = outcome.unwrap_or_else(|| {
                triggers.fleet.stop_waiting(&record.id, &node);
                TriggerOutcome {
                    result: "unreachable".into(),
                    run_id: String::new(),
                    failed_resources: Vec::new(),
                    revision: String::new(),
                }
            });
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
