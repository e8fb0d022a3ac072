//! The fleet registry and the fleet's rules: which agents hold a watch
//! channel open (`WatchSlot`, so the server can tell them to converge
//! now), when nodes were last seen, which triggers wait for which report,
//! and the pure rules of the lifecycle of cattle (gone, then removed) and
//! of triggers (canary first, then batch after batch).
//!
//! The rules are pure functions (`plan`, `over_limit`, `lifecycle`,
//! `name_is_free`, `outcome_of`, `progress_of`, `select`) tested on their
//! own; `Fleet` holds the live state, a handle the domain modules share;
//! `triggers::run_trigger` and `nodes::lifecycle_loop` do the work.
//!
//! Last seen: a node's calls are noted in memory (`Fleet::note_seen`) and
//! written to the store in one batch every `presence_flush` (a few seconds,
//! by `nodes::lifecycle_loop`),
//! so a `GetCatalog` answered `NotModified` costs no fsync. A crash loses at
//! most that window of last-seen times, never a node or a report. A node
//! with an open watch channel counts as seen now.
//!
//! Replicas: each replica's `Fleet` holds the channels of the agents
//! connected to it. What must reach a channel held elsewhere goes over
//! the fleet message bus (`bus`): a converge-now for a node not connected
//! here is asked of the others, and [`Fleet::deliver_converge_now`] waits
//! up to [`PEER_ANSWER_TIMEOUT`] for one to say it was delivered; a
//! trigger's report arriving at a replica that does not run the trigger is
//! announced (ids only) and the replica waiting for it reads the report
//! from the store; a revocation closes the channels of every replica.
//! [`serve_bus`] acts on the others' messages. A server alone has a local
//! bus: nothing is sent, nothing is waited for.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cms_proto::report::{ResourceStatus, RunRecord};
use cms_proto::v1 as pb;
use tokio::sync::{oneshot, watch};

use crate::bus::{Bus, Incoming, Message};
use crate::clock::now_unix_ms;
use crate::metrics::FleetCounters;
use crate::store::{NodeRecord, NodeStatus, TriggerOutcome, TriggerRecord};

/// How many converge-now commands may wait for one agent's channel.
pub const WATCH_QUEUE: usize = 4;
/// How long a converge-now for a node connected to no channel here waits
/// for another replica to say it delivered it.
pub const PEER_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where converge-now commands for one held channel wait until its task
/// writes them. A few bytes while empty (an mpsc channel would allocate a
/// block of 32 slots for each of 10,000 agents).
#[derive(Debug, Default)]
pub struct WatchSlot {
    pending: Mutex<VecDeque<pb::ConvergeNow>>,
    pub(crate) wake: tokio::sync::Notify,
    /// Set when the node was revoked: its channel checks its certificate
    /// again at once.
    closing: std::sync::atomic::AtomicBool,
}

impl WatchSlot {
    /// Queues a command; false when `WATCH_QUEUE` commands already wait
    /// (the agent is not reading).
    pub fn offer(&self, command: pb::ConvergeNow) -> bool {
        let mut pending = self.pending.lock().expect("watch slot lock");
        if pending.len() >= WATCH_QUEUE {
            return false;
        }
        pending.push_back(command);
        drop(pending);
        self.wake.notify_one();
        true
    }

    /// Whether the channel was asked to check its certificate again.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// The commands waiting, taken out (what the channel writes next).
    pub fn take(&self) -> Vec<pb::ConvergeNow> {
        self.pending
            .lock()
            .expect("watch slot lock")
            .drain(..)
            .collect()
    }
}

/// One registered watch channel: its number and where its commands wait.
type WatchSender = (u64, Arc<WatchSlot>);

/// The live fleet state of one server.
#[derive(Debug, Default)]
pub struct Fleet {
    watchers: Mutex<HashMap<String, Vec<WatchSender>>>,
    next_watcher: AtomicU64,
    /// Last-seen times not yet written to the store.
    seen: Mutex<HashMap<String, u64>>,
    /// New facts not yet written to the store.
    facts: Mutex<HashMap<String, serde_json::Value>>,
    /// Triggers waiting for a node's report: (trigger id, node id).
    waiting: Mutex<HashMap<(String, String), oneshot::Sender<TriggerOutcome>>>,
    /// Progress of the triggers running in this process.
    running: Mutex<HashMap<String, watch::Receiver<pb::TriggerProgress>>>,
    pub counters: FleetCounters,
    /// The other replicas, if any.
    bus: Bus,
    /// Converge-nows asked of the other replicas, waiting for an answer.
    asks: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_ask: AtomicU64,
}

/// Unregisters a watch channel when dropped.
#[derive(Debug)]
pub struct WatchGuard {
    fleet: Arc<Fleet>,
    node_id: String,
    id: u64,
    /// False once the channel ends because its certificate was refused:
    /// the node is then not seen at its end.
    seen_at_end: bool,
}

impl WatchGuard {
    /// The channel ends because its node's certificate is refused: its
    /// end does not count as a sign of life.
    pub fn forget_unseen(&mut self) {
        self.seen_at_end = false;
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut watchers = self.fleet.watchers.lock().expect("watchers lock");
        if let Some(list) = watchers.get_mut(&self.node_id) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                watchers.remove(&self.node_id);
            }
        }
        drop(watchers);
        if self.seen_at_end {
            self.fleet.note_seen(&self.node_id, now_unix_ms());
        }
    }
}

impl Fleet {
    /// A registry counting its events in `counters`.
    pub fn new(counters: FleetCounters) -> Fleet {
        Fleet {
            counters,
            ..Fleet::default()
        }
    }

    /// A registry that reaches the other replicas over `bus`.
    pub fn with_bus(counters: FleetCounters, bus: Bus) -> Fleet {
        Fleet {
            counters,
            bus,
            ..Fleet::default()
        }
    }

    /// The bus to the other replicas (local for a server alone).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Registers an agent's watch channel; it stays registered until the
    /// guard is dropped.
    pub fn register_watch(self: &Arc<Self>, node_id: &str, slot: Arc<WatchSlot>) -> WatchGuard {
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        self.watchers
            .lock()
            .expect("watchers lock")
            .entry(node_id.to_string())
            .or_default()
            .push((id, slot));
        self.note_seen(node_id, now_unix_ms());
        WatchGuard {
            fleet: self.clone(),
            node_id: node_id.to_string(),
            id,
            seen_at_end: true,
        }
    }

    /// Tells a revoked node's channels, on every replica, to check their
    /// certificate again now rather than at their next heartbeat.
    pub fn close_watches(&self, node_id: &str) {
        self.close_watches_here(node_id);
        self.bus.publish(Message::CloseWatches {
            node: node_id.to_string(),
        });
    }

    fn close_watches_here(&self, node_id: &str) {
        if let Some(slots) = self.watchers.lock().expect("watchers lock").get(node_id) {
            for (_, slot) in slots {
                slot.closing.store(true, Ordering::Relaxed);
                slot.wake.notify_one();
            }
        }
    }

    pub fn is_connected(&self, node_id: &str) -> bool {
        self.watchers
            .lock()
            .expect("watchers lock")
            .contains_key(node_id)
    }

    pub fn connected_count(&self) -> usize {
        self.watchers.lock().expect("watchers lock").len()
    }

    /// Tells a node to converge now, through the replica holding its
    /// channel: true once delivered; false when no replica said so within
    /// [`PEER_ANSWER_TIMEOUT`] (the node holds no channel).
    pub async fn deliver_converge_now(&self, node_id: &str, trigger_id: &str, noop: bool) -> bool {
        if self.converge_now(node_id, trigger_id, noop) {
            return true;
        }
        if !self.bus.is_shared() {
            return false;
        }
        let ask = self.next_ask.fetch_add(1, Ordering::Relaxed) + 1;
        let (answer, answered) = oneshot::channel();
        self.asks.lock().expect("asks lock").insert(ask, answer);
        self.bus.publish(Message::ConvergeNow {
            from: self.bus.replica().to_string(),
            ask,
            node: node_id.to_string(),
            trigger: trigger_id.to_string(),
            noop,
        });
        let delivered = tokio::time::timeout(PEER_ANSWER_TIMEOUT, answered)
            .await
            .is_ok_and(|answer| answer.is_ok());
        self.asks.lock().expect("asks lock").remove(&ask);
        delivered
    }

    /// Tells a node to converge now, here or through another replica,
    /// without waiting to hear whether it was delivered.
    pub fn ask_converge_now(&self, node_id: &str, trigger_id: &str, noop: bool) {
        if !self.converge_now(node_id, trigger_id, noop) {
            self.bus.publish(Message::ConvergeNow {
                from: self.bus.replica().to_string(),
                ask: 0,
                node: node_id.to_string(),
                trigger: trigger_id.to_string(),
                noop,
            });
        }
    }

    /// Tells a node to converge now over a channel held by this replica;
    /// false when it holds none here.
    pub fn converge_now(&self, node_id: &str, trigger_id: &str, noop: bool) -> bool {
        let slots: Vec<Arc<WatchSlot>> = self
            .watchers
            .lock()
            .expect("watchers lock")
            .get(node_id)
            .map(|list| list.iter().map(|(_, s)| s.clone()).collect())
            .unwrap_or_default();
        let command = pb::ConvergeNow {
            trigger_id: trigger_id.to_string(),
            noop,
        };
        // The newest channel first: an agent that reconnected left the old
        // one behind, which the server notices only later.
        let sent = slots.iter().rev().any(|slot| slot.offer(command.clone()));
        if sent {
            self.counters.converge_now_sent.inc();
        }
        sent
    }

    /// Notes that a node called now (or at `at_unix_ms`).
    pub fn note_seen(&self, node_id: &str, at_unix_ms: u64) {
        let mut seen = self.seen.lock().expect("seen lock");
        let entry = seen.entry(node_id.to_string()).or_insert(at_unix_ms);
        *entry = (*entry).max(at_unix_ms);
    }

    /// Notes every node holding a channel here as seen at `at_unix_ms`.
    pub fn note_connected_seen(&self, at_unix_ms: u64) {
        let connected: Vec<String> = self
            .watchers
            .lock()
            .expect("watchers lock")
            .keys()
            .cloned()
            .collect();
        for node in connected {
            self.note_seen(&node, at_unix_ms);
        }
    }

    /// Notes a node's new facts (and that it called), written with the next
    /// batch of last-seen times.
    pub fn note_facts(&self, node_id: &str, at_unix_ms: u64, facts: serde_json::Value) {
        self.facts
            .lock()
            .expect("facts lock")
            .insert(node_id.to_string(), facts);
        self.note_seen(node_id, at_unix_ms);
    }

    /// When the node was last seen: now if it holds a watch channel, else
    /// the later of the stored time and one not yet written.
    pub fn last_seen(&self, node_id: &str, stored_unix_ms: u64, now: u64) -> u64 {
        if self.is_connected(node_id) {
            return now;
        }
        let pending = self
            .seen
            .lock()
            .expect("seen lock")
            .get(node_id)
            .copied()
            .unwrap_or(0);
        stored_unix_ms.max(pending)
    }

    /// `node` as it stands now: its stored record with the last-seen time
    /// and the facts noted in memory but not written yet.
    pub fn current(&self, mut node: NodeRecord, now: u64) -> NodeRecord {
        node.last_seen_unix_ms = self.last_seen(&node.id, node.last_seen_unix_ms, now);
        if let Some(facts) = self.facts.lock().expect("facts lock").get(&node.id) {
            node.facts = facts.clone();
        }
        node
    }

    /// The last-seen times (and new facts) to write. They stay noted until
    /// `forget_written` hears they are in the store, so that while they
    /// are written a reader (`current`) finds them here, never in neither
    /// place.
    pub fn seen_to_write(&self) -> Vec<(String, u64, Option<serde_json::Value>)> {
        let facts = self.facts.lock().expect("facts lock");
        let seen = self.seen.lock().expect("seen lock");
        let mut pending: Vec<(String, u64, Option<serde_json::Value>)> = seen
            .iter()
            .map(|(node, at)| (node.clone(), *at, facts.get(node).cloned()))
            .collect();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        pending
    }

    /// Forgets what was written, unless a newer time or newer facts were
    /// noted meanwhile.
    pub fn forget_written(&self, written: &[(String, u64, Option<serde_json::Value>)]) {
        let mut facts = self.facts.lock().expect("facts lock");
        let mut seen = self.seen.lock().expect("seen lock");
        for (node, at, written_facts) in written {
            if written_facts.is_some() && facts.get(node) == written_facts.as_ref() {
                facts.remove(node);
            }
            // Facts noted meanwhile keep their node's entry, which carries
            // them to the next flush.
            if seen.get(node) == Some(at) && !facts.contains_key(node) {
                seen.remove(node);
            }
        }
    }

    /// A report arrived: tell the trigger waiting for it, here or on
    /// another replica (which reads the report from the store).
    pub fn report_arrived(&self, trigger_id: &str, node_id: &str, outcome: TriggerOutcome) {
        let run = outcome.run_id.clone();
        if !self.resolve_waiter(trigger_id, node_id, outcome) {
            self.bus.publish(Message::ReportArrived {
                trigger: trigger_id.to_string(),
                node: node_id.to_string(),
                run,
            });
        }
    }

    /// Hands `outcome` to the trigger of this replica waiting for it; false
    /// when none waits here.
    fn resolve_waiter(&self, trigger_id: &str, node_id: &str, outcome: TriggerOutcome) -> bool {
        let waiter = self
            .waiting
            .lock()
            .expect("waiting lock")
            .remove(&(trigger_id.to_string(), node_id.to_string()));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(outcome);
                true
            }
            None => false,
        }
    }

    fn is_waiting(&self, trigger_id: &str, node_id: &str) -> bool {
        self.waiting
            .lock()
            .expect("waiting lock")
            .contains_key(&(trigger_id.to_string(), node_id.to_string()))
    }

    pub fn wait_for_report(
        &self,
        trigger_id: &str,
        node_id: &str,
    ) -> oneshot::Receiver<TriggerOutcome> {
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .expect("waiting lock")
            .insert((trigger_id.to_string(), node_id.to_string()), sender);
        receiver
    }

    pub(crate) fn stop_waiting(&self, trigger_id: &str, node_id: &str) {
        self.waiting
            .lock()
            .expect("waiting lock")
            .remove(&(trigger_id.to_string(), node_id.to_string()));
    }

    /// Makes a trigger's progress readable while it runs in this process.
    pub(crate) fn track_trigger(
        &self,
        trigger_id: &str,
        progress: watch::Receiver<pb::TriggerProgress>,
    ) {
        self.running
            .lock()
            .expect("running lock")
            .insert(trigger_id.to_string(), progress);
    }

    /// The trigger ended: its progress is read from the store from now on.
    pub(crate) fn forget_trigger(&self, trigger_id: &str) {
        self.running
            .lock()
            .expect("running lock")
            .remove(trigger_id);
    }

    /// The live progress of a trigger running in this process.
    pub fn progress(&self, trigger_id: &str) -> Option<watch::Receiver<pb::TriggerProgress>> {
        self.running
            .lock()
            .expect("running lock")
            .get(trigger_id)
            .cloned()
    }
}

/// Acts on the other replicas' messages until the bus ends: delivers
/// converge-nows to the channels held here (and says so), hands reports to
/// the triggers waiting here, closes revoked nodes' channels, and passes
/// what concerns the environments to `on_rollouts`: environment changes,
/// [`Message::Reconnected`] (read every environment again), rollout
/// commands forwarded to the leader and their answers.
pub async fn serve_bus(
    fleet: Arc<Fleet>,
    store: crate::store::SharedStore,
    mut incoming: Incoming,
    on_rollouts: impl Fn(Message) + Send + 'static,
) {
    while let Some(message) = incoming.recv().await {
        match message {
            Message::ConvergeNow {
                from,
                ask,
                node,
                trigger,
                noop,
            } => {
                if fleet.converge_now(&node, &trigger, noop) && ask != 0 {
                    fleet.bus.publish(Message::Delivered { to: from, ask });
                }
            }
            Message::Delivered { to, ask } => {
                if to == fleet.bus.replica()
                    && let Some(answer) = fleet.asks.lock().expect("asks lock").remove(&ask)
                {
                    let _ = answer.send(());
                }
            }
            Message::ReportArrived { trigger, node, run } => {
                if !fleet.is_waiting(&trigger, &node) {
                    continue;
                }
                let fleet = fleet.clone();
                let store = store.clone();
                tokio::spawn(async move {
                    let read = {
                        let node = node.clone();
                        tokio::task::spawn_blocking(move || store.report(&node, &run)).await
                    };
                    match read {
                        Ok(Ok(Some(stored))) => {
                            fleet.resolve_waiter(&trigger, &node, outcome_of(&stored.report));
                        }
                        Ok(Ok(None)) => {
                            tracing::warn!(
                                trigger,
                                node,
                                "a report announced by another replica is not in the store"
                            )
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(
                                trigger,
                                node,
                                "Failed to read a report announced by another replica: {error}"
                            )
                        }
                        Err(error) => tracing::warn!("Failed to read a report: {error}"),
                    }
                });
            }
            Message::CloseWatches { node } => fleet.close_watches_here(&node),
            Message::EnvironmentChanged { .. }
            | Message::Reconnected
            | Message::RolloutCommand { .. }
            | Message::RolloutCommandDone { .. } => on_rollouts(message),
        }
    }
}

// ---- the rules ----

/// How many nodes a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// Everything after the canary at once.
    All,
    Count(usize),
    /// A percentage of the selected nodes, rounded up.
    Percent(u32),
}

/// Reads `25%`, `10` or an empty string (all at once).
pub fn parse_batch(text: &str) -> Result<BatchSize, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(BatchSize::All);
    }
    if let Some(percent) = text.strip_suffix('%') {
        return match percent.trim().parse::<u32>() {
            Ok(p) if (1..=100).contains(&p) => Ok(BatchSize::Percent(p)),
            _ => Err(format!(
                "batch `{text}`: a percentage must be between 1% and 100%"
            )),
        };
    }
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(BatchSize::Count(n)),
        _ => Err(format!(
            "batch `{text}`: expected a count such as 10 or a percentage such as 25%"
        )),
    }
}

/// The order of a rollout: the first `canary` nodes alone, then the rest in
/// batches. A percentage is of all selected nodes (as Ansible's `serial`),
/// rounded up, so `50%` of 5 nodes is batches of 3. Nodes are taken in the
/// order given (the caller sorts them by id, so a plan is reproducible).
pub fn plan(nodes: &[String], canary: usize, batch: BatchSize) -> Vec<Vec<String>> {
    let canary = canary.min(nodes.len());
    let mut batches = Vec::new();
    if canary > 0 {
        batches.push(nodes[..canary].to_vec());
    }
    let rest = &nodes[canary..];
    if rest.is_empty() {
        return batches;
    }
    let size = match batch {
        BatchSize::All => rest.len(),
        BatchSize::Count(n) => n,
        BatchSize::Percent(p) => (nodes.len() * p as usize).div_ceil(100),
    }
    .max(1);
    batches.extend(rest.chunks(size).map(<[String]>::to_vec));
    batches
}

/// Whether a rollout must stop: more failures (failed or unreachable
/// nodes) than allowed, or any failure in the canary group.
pub fn over_limit(failures: u32, max_failures: u32, in_canary: bool) -> bool {
    if in_canary {
        return failures > 0;
    }
    failures > max_failures
}

/// What the lifecycle does with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Keep,
    /// Not seen for `gone_after`: marked gone (still listed as such).
    MarkGone,
    /// Gone for `remove_after`: removed with its certificates.
    Remove,
}

/// The lifecycle rule for one node, from when it was last seen.
pub fn lifecycle(
    status: NodeStatus,
    gone_since_unix_ms: Option<u64>,
    last_seen_unix_ms: u64,
    now_unix_ms: u64,
    gone_after: Duration,
    remove_after: Duration,
) -> Lifecycle {
    let unseen = now_unix_ms.saturating_sub(last_seen_unix_ms);
    if unseen < gone_after.as_millis() as u64 {
        return Lifecycle::Keep;
    }
    match status {
        NodeStatus::Active => Lifecycle::MarkGone,
        NodeStatus::Gone => {
            let since = gone_since_unix_ms.unwrap_or(last_seen_unix_ms);
            if now_unix_ms.saturating_sub(since) >= remove_after.as_millis() as u64 {
                Lifecycle::Remove
            } else {
                Lifecycle::Keep
            }
        }
    }
}

/// Whether a new enrollment may take the name of `existing`. A name is free
/// when no node holds it, when its node is gone (not seen for
/// `gone_after`), or when an operator revoked it. A live node's name is
/// taken over only by that node itself, presenting its current certificate.
pub fn name_is_free(
    existing: Option<&NodeRecord>,
    last_seen_unix_ms: u64,
    now_unix_ms: u64,
    gone_after: Duration,
    revoked: bool,
    presented_own_certificate: bool,
) -> bool {
    let Some(node) = existing else {
        return true;
    };
    node.status == NodeStatus::Gone
        || now_unix_ms.saturating_sub(last_seen_unix_ms) >= gone_after.as_millis() as u64
        || revoked
        || presented_own_certificate
}

/// How a report reads for a trigger.
pub fn outcome_of(report: &RunRecord) -> TriggerOutcome {
    let with = |status: ResourceStatus| report.resources.iter().filter(move |r| r.status == status);
    let failed: Vec<String> = with(ResourceStatus::Failed)
        .map(|r| r.reference.clone())
        .collect();
    let result = if !failed.is_empty() {
        "failed"
    } else if with(ResourceStatus::Changed).next().is_some() {
        "changed"
    } else {
        "unchanged"
    };
    TriggerOutcome {
        result: result.to_string(),
        run_id: report.run_id.clone(),
        failed_resources: failed,
        revision: report.revision.clone(),
        reason: String::new(),
    }
}

// ---- triggers ----

/// What a trigger's progress looks like on the wire.
pub fn progress_of(record: &TriggerRecord) -> pb::TriggerProgress {
    let mut progress = pb::TriggerProgress {
        trigger_id: record.id.clone(),
        state: record.state.clone(),
        total: record.batches.iter().map(Vec::len).sum::<usize>() as u32,
        message: record.message.clone(),
        batch: record.batches_started,
        batches: record.batches.len() as u32,
        started_unix_ms: record.started_unix_ms as i64,
        finished_unix_ms: record.finished_unix_ms.unwrap_or(0) as i64,
        ..Default::default()
    };
    for (index, batch) in record.batches.iter().enumerate() {
        for node in batch {
            let outcome = record.outcomes.get(node);
            let result = match outcome {
                Some(outcome) => outcome.result.clone(),
                None if (index as u32) < record.batches_started && record.state == "running" => {
                    "running".to_string()
                }
                None => "pending".to_string(),
            };
            if let Some(outcome) = outcome {
                progress.done += 1;
                match outcome.result.as_str() {
                    "changed" => progress.changed += 1,
                    "unchanged" => progress.unchanged += 1,
                    "failed" => progress.failed += 1,
                    _ => progress.unreachable += 1,
                }
                progress.failed_resources.extend(
                    outcome
                        .failed_resources
                        .iter()
                        .map(|r| format!("{node}: {r}")),
                );
            }
            progress.nodes.push(pb::TriggerNodeOutcome {
                node_id: node.clone(),
                result,
                batch: index as u32 + 1,
                run_id: outcome.map(|o| o.run_id.clone()).unwrap_or_default(),
                reason: outcome.map(|o| o.reason.clone()).unwrap_or_default(),
            });
        }
    }
    progress
}

/// The nodes a selector picks, sorted by id; gone nodes are left out.
pub fn select(nodes: Vec<NodeRecord>, selector: &BTreeMap<String, String>) -> Vec<String> {
    let mut ids: Vec<String> = nodes
        .into_iter()
        .filter(|n| n.status == NodeStatus::Active)
        .filter(|n| {
            selector.iter().all(|(k, pattern)| {
                n.tags
                    .get(k)
                    .is_some_and(|v| cms_roles::glob_match(pattern, v))
            })
        })
        .map(|n| n.id)
        .collect();
    ids.sort();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_slot_refuses_more_commands_until_its_task_takes_them() {
        let slot = WatchSlot::default();
        let command = |id: &str| pb::ConvergeNow {
            trigger_id: id.into(),
            noop: false,
        };
        for i in 0..WATCH_QUEUE {
            assert!(slot.offer(command(&format!("t{i}"))));
        }
        assert!(!slot.offer(command("one-too-many")));
        let taken = slot.take();
        assert_eq!(taken.len(), WATCH_QUEUE);
        assert_eq!(taken[0].trigger_id, "t0");
        assert!(slot.offer(command("after")));
    }

    #[test]
    fn noted_facts_stay_readable_while_written_and_newer_ones_survive_the_write() {
        let fleet = Fleet::default();
        let facts = |host: &str| serde_json::json!({ "hostname": host });
        let node = |id: &str| NodeRecord {
            id: id.to_string(),
            ..record(NodeStatus::Active)
        };
        fleet.note_facts("a", 1_000, facts("a1"));
        fleet.note_seen("b", 1_000);
        let batch = fleet.seen_to_write();
        assert_eq!(batch.len(), 2);
        // While the batch is being written, the pending facts still show.
        assert_eq!(fleet.current(node("a"), 1_500).facts, facts("a1"));
        // Newer facts for a arrive during the write, at the same instant.
        fleet.note_facts("a", 1_000, facts("a2"));
        fleet.forget_written(&batch);
        assert_eq!(fleet.current(node("a"), 2_000).facts, facts("a2"));
        let next = fleet.seen_to_write();
        assert_eq!(
            next,
            vec![("a".to_string(), 1_000, Some(facts("a2")))],
            "b was written; a's newer facts wait for the next flush"
        );
        fleet.forget_written(&next);
        assert!(fleet.seen_to_write().is_empty());
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("web-{i}")).collect()
    }

    fn sizes(plan: &[Vec<String>]) -> Vec<usize> {
        plan.iter().map(Vec::len).collect()
    }

    #[test]
    fn the_canary_goes_alone_then_batches_of_a_share_of_all_selected_nodes() {
        let plan = plan(&names(5), 1, BatchSize::Percent(50));
        assert_eq!(sizes(&plan), vec![1, 3, 1]);
        assert_eq!(plan[0], vec!["web-1".to_string()]);
        let every: Vec<String> = plan.concat();
        assert_eq!(every, names(5), "each node once, in order");
    }

    #[test]
    fn batches_by_count_all_at_once_and_oversized_canaries() {
        assert_eq!(
            sizes(&plan(&names(7), 0, BatchSize::Count(3))),
            vec![3, 3, 1]
        );
        assert_eq!(sizes(&plan(&names(7), 2, BatchSize::All)), vec![2, 5]);
        assert_eq!(sizes(&plan(&names(2), 5, BatchSize::Count(1))), vec![2]);
        assert!(plan(&[], 1, BatchSize::All).is_empty());
        // 25% of 3 nodes rounds up to one node per batch.
        assert_eq!(
            sizes(&plan(&names(3), 0, BatchSize::Percent(25))),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn batch_sizes_are_read_from_counts_and_percentages() {
        assert_eq!(parse_batch("25%"), Ok(BatchSize::Percent(25)));
        assert_eq!(parse_batch("10"), Ok(BatchSize::Count(10)));
        assert_eq!(parse_batch(""), Ok(BatchSize::All));
        assert!(parse_batch("0").unwrap_err().contains("expected a count"));
        assert!(
            parse_batch("150%")
                .unwrap_err()
                .contains("between 1% and 100%")
        );
        assert!(parse_batch("half").is_err());
    }

    #[test]
    fn a_canary_failure_stops_at_once_and_batches_stop_past_the_limit() {
        assert!(over_limit(1, 5, true));
        assert!(!over_limit(0, 0, true));
        assert!(!over_limit(2, 2, false));
        assert!(over_limit(3, 2, false));
        assert!(over_limit(1, 0, false));
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_node_unseen_for_gone_after_is_marked_gone_then_removed_after_remove_after() {
        let now = 100 * 60_000;
        let seen_at = |minutes_ago: u64| now - minutes_ago * 60_000;
        let rule = |status, gone_since, last_seen| {
            lifecycle(status, gone_since, last_seen, now, 10 * MINUTE, 30 * MINUTE)
        };
        assert_eq!(rule(NodeStatus::Active, None, seen_at(9)), Lifecycle::Keep);
        assert_eq!(
            rule(NodeStatus::Active, None, seen_at(10)),
            Lifecycle::MarkGone
        );
        assert_eq!(
            rule(NodeStatus::Gone, Some(seen_at(29)), seen_at(40)),
            Lifecycle::Keep
        );
        assert_eq!(
            rule(NodeStatus::Gone, Some(seen_at(30)), seen_at(40)),
            Lifecycle::Remove
        );
        // A gone node seen again is kept (its next call makes it active).
        assert_eq!(
            rule(NodeStatus::Gone, Some(seen_at(50)), seen_at(1)),
            Lifecycle::Keep
        );
    }

    fn record(status: NodeStatus) -> NodeRecord {
        NodeRecord {
            id: "web-1".into(),
            tags: BTreeMap::new(),
            facts: serde_json::Value::Null,
            certificate_serial: "01".into(),
            first_seen_unix_ms: 0,
            last_seen_unix_ms: 0,
            last_run: None,
            status,
            gone_since_unix_ms: None,
            attested: Default::default(),
            environment: String::new(),
        }
    }

    #[test]
    fn a_live_name_is_taken_only_by_its_own_node_and_a_gone_or_revoked_one_is_free() {
        let gone_after = 10 * MINUTE;
        let now = 100 * 60_000;
        let live = record(NodeStatus::Active);
        assert!(name_is_free(None, 0, now, gone_after, false, false));
        assert!(!name_is_free(
            Some(&live),
            now - 60_000,
            now,
            gone_after,
            false,
            false
        ));
        assert!(name_is_free(
            Some(&live),
            now - 60_000,
            now,
            gone_after,
            false,
            true
        ));
        assert!(name_is_free(
            Some(&live),
            now - 60_000,
            now,
            gone_after,
            true,
            false
        ));
        // Unseen for gone_after: free even before the lifecycle marks it.
        assert!(name_is_free(
            Some(&live),
            now - 600_000,
            now,
            gone_after,
            false,
            false
        ));
        let gone = record(NodeStatus::Gone);
        assert!(name_is_free(
            Some(&gone),
            now,
            now,
            gone_after,
            false,
            false
        ));
    }

    #[test]
    fn a_report_with_a_failed_resource_is_a_failure_naming_it() {
        let resource = |reference: &str, status: pb::ResourceStatus| pb::ResourceResult {
            reference: reference.into(),
            status: status as i32,
            ..Default::default()
        };
        let report = pb::RunReport {
            run_id: "r1".into(),
            resources: vec![
                resource("file:/a", pb::ResourceStatus::Changed),
                resource("service:x", pb::ResourceStatus::Failed),
            ],
            ..Default::default()
        };
        let outcome = outcome_of(&RunRecord::from(&report));
        assert_eq!(outcome.result, "failed");
        assert_eq!(outcome.failed_resources, vec!["service:x".to_string()]);
        let unchanged = pb::RunReport {
            resources: vec![resource("file:/a", pb::ResourceStatus::Unchanged)],
            ..Default::default()
        };
        assert_eq!(outcome_of(&RunRecord::from(&unchanged)).result, "unchanged");
    }

    #[test]
    fn progress_counts_outcomes_and_lists_failed_resources_by_node() {
        let mut record = TriggerRecord {
            id: "t1".into(),
            selector: BTreeMap::new(),
            batch: "50%".into(),
            canary: 1,
            noop: false,
            max_failures: 0,
            state: "running".into(),
            message: String::new(),
            started_unix_ms: 1,
            finished_unix_ms: None,
            batches: plan(&names(3), 1, BatchSize::Percent(50)),
            batches_started: 1,
            outcomes: BTreeMap::new(),
        };
        record.outcomes.insert(
            "web-1".into(),
            TriggerOutcome {
                result: "failed".into(),
                run_id: "r".into(),
                failed_resources: vec!["exec:boom".into()],
                revision: String::new(),
                reason: String::new(),
            },
        );
        let progress = progress_of(&record);
        assert_eq!((progress.total, progress.done, progress.failed), (3, 1, 1));
        assert_eq!(
            progress.failed_resources,
            vec!["web-1: exec:boom".to_string()]
        );
        assert_eq!(progress.batches, 2);
        let results: Vec<&str> = progress.nodes.iter().map(|n| n.result.as_str()).collect();
        assert_eq!(results, vec!["failed", "pending", "pending"]);
    }
}
