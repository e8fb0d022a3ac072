//! Enrolled nodes: what a catalog request notes about its node, listings,
//! revocation, and the lifecycle of cattle (a node unseen for `gone_after`
//! is marked gone, and removed with its certificates `remove_after` later).
//!
//! Last seen: a node's calls are noted in memory by the fleet registry and
//! written to the store in one batch every `presence_flush` by
//! [`lifecycle_loop`], so a `GetCatalog` answered `NotModified` costs no
//! fsync. A crash loses at most that window of last-seen times, never a node
//! or a report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::fleet::{Fleet, Lifecycle, lifecycle};
use crate::store::{NodeRecord, NodeStatus, SharedStore, StoreError};

/// What the node operations need.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    pub clock: SharedClock,
}

#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error("node {node_id} is not enrolled")]
    NotEnrolled { node_id: String },
    #[error("node {node_id} has no certificates")]
    NoCertificates { node_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The timing of the node lifecycle, from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleConfig {
    pub gone_after: Duration,
    pub remove_after: Duration,
    /// How often noted last-seen times are written.
    pub presence_flush: Duration,
}

impl Nodes {
    /// The stored record of an enrolled node. A read, no fsync: fine on an
    /// async worker.
    pub fn enrolled(&self, node_id: &str) -> Result<NodeRecord, NodesError> {
        self.store
            .node(node_id)?
            .ok_or_else(|| NodesError::NotEnrolled {
                node_id: node_id.to_string(),
            })
    }

    /// The node as it stands now, with what is noted in memory.
    pub fn current(&self, node_id: &str) -> Result<NodeRecord, NodesError> {
        let node = self.enrolled(node_id)?;
        Ok(self.fleet.current(node, self.clock.now_unix_ms()))
    }

    /// Notes a catalog request of `node` with `facts` in memory, the common
    /// case; returns false when the node is not active, which must be
    /// written at once with [`Nodes::reactivate`].
    pub fn note_catalog_request(&self, node: &NodeRecord, facts: serde_json::Value) -> bool {
        if node.status != NodeStatus::Active {
            return false;
        }
        let now = self.clock.now_unix_ms();
        if node.facts != facts {
            self.fleet.note_facts(&node.id, now, facts);
        } else {
            self.fleet.note_seen(&node.id, now);
        }
        true
    }

    /// A gone node called: it is active again, seen now, with its facts.
    /// Blocks (a store write).
    pub fn reactivate(&self, node_id: &str, facts: serde_json::Value) -> Result<(), NodesError> {
        let now = self.clock.now_unix_ms();
        self.store.update_node(node_id, |node| {
            node.facts = facts.clone();
            node.last_seen_unix_ms = now;
            node.status = NodeStatus::Active;
            node.gone_since_unix_ms = None;
        })?;
        Ok(())
    }

    /// The nodes whose tags match every glob of `selector`, with their
    /// last-seen time as it stands now. Blocks (reads every node).
    pub fn list(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<(NodeRecord, u64)>, NodesError> {
        let nodes = self.store.nodes()?;
        let now = self.clock.now_unix_ms();
        Ok(nodes
            .into_iter()
            .filter(|n| {
                selector.iter().all(|(k, pattern)| {
                    n.tags
                        .get(k)
                        .is_some_and(|v| cms_roles::glob_match(pattern, v))
                })
            })
            .map(|n| {
                let last_seen = self.fleet.last_seen(&n.id, n.last_seen_unix_ms, now);
                (n, last_seen)
            })
            .collect())
    }

    /// Revokes every certificate of a node, and ends its watch channels;
    /// returns their serials. Blocks.
    pub fn revoke(&self, node_id: &str) -> Result<Vec<String>, NodesError> {
        let serials = self.store.revoke_node(node_id)?;
        self.fleet.close_watches(node_id);
        if serials.is_empty() {
            return Err(NodesError::NoCertificates {
                node_id: node_id.to_string(),
            });
        }
        Ok(serials)
    }

    /// One pass of the lifecycle over every node. Blocks.
    pub fn apply_lifecycle(&self, config: &LifecycleConfig) -> Result<(), StoreError> {
        let now = self.clock.now_unix_ms();
        for node in self.store.nodes()? {
            let last_seen = self.fleet.last_seen(&node.id, node.last_seen_unix_ms, now);
            match lifecycle(
                node.status,
                node.gone_since_unix_ms,
                last_seen,
                now,
                config.gone_after,
                config.remove_after,
            ) {
                Lifecycle::Keep => {}
                Lifecycle::MarkGone => {
                    self.store.update_node(&node.id, |n| {
                        if n.status == NodeStatus::Active && n.last_seen_unix_ms <= last_seen {
                            n.status = NodeStatus::Gone;
                            n.gone_since_unix_ms = Some(now);
                        }
                    })?;
                    self.fleet.counters.nodes_marked_gone.inc();
                    tracing::info!(node = %node.id, "node not seen for the gone-after time: marked gone");
                }
                Lifecycle::Remove => {
                    let revoked = self.store.revoke_node(&node.id)?;
                    self.store.remove_node(&node.id)?;
                    self.fleet.counters.nodes_removed.inc();
                    tracing::info!(node = %node.id, certificates = revoked.len(), "gone node removed with its certificates");
                }
            }
        }
        // Records of certificates past their end are no longer needed.
        self.store.prune_certificates(now / 1000)?;
        Ok(())
    }

    /// Writes the last-seen times noted in memory.
    async fn flush_seen(&self) {
        let seen = self.fleet.seen_to_write();
        if seen.is_empty() {
            return;
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.touch_nodes_with_facts(&seen).map(|_| seen))
            .await
        {
            Ok(Ok(written)) => self.fleet.forget_written(&written),
            // Kept in memory: tried again at the next flush.
            result => tracing::warn!(
                "Failed to record when nodes were last seen: {:?}",
                result.map(|written| written.map(|_| ()))
            ),
        }
    }
}

/// Writes last-seen times, and on the leading replica (`locks`) marks
/// nodes gone and removes them, until stop. With replicas, the nodes whose
/// channel this replica holds are noted seen every pass, so that the
/// leader, which does not hold their channels, reads them as alive.
pub async fn lifecycle_loop(
    nodes: Nodes,
    config: LifecycleConfig,
    locks: crate::leader::Locks,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tick = (config.gone_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let flush_every = config.presence_flush.min(tick);
    let mut interval = tokio::time::interval(flush_every);
    let mut last_check = tokio::time::Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => true,
            _ = interval.tick() => false,
        };
        if stopping {
            nodes.flush_seen().await;
            return Ok(());
        }
        nodes.flush_seen().await;
        if last_check.elapsed() >= tick {
            last_check = tokio::time::Instant::now();
            if nodes.fleet.bus().is_shared() {
                nodes.fleet.note_connected_seen(nodes.clock.now_unix_ms());
            }
            if !locks.is_leader() {
                continue;
            }
            let pass = nodes.clone();
            match tokio::task::spawn_blocking(move || pass.apply_lifecycle(&config)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!("Failed to apply the node lifecycle: {error}"),
                Err(error) => tracing::warn!("Failed to apply the node lifecycle: {error}"),
            }
        }
    }
}
