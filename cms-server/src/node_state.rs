//! What a node's last run says about it (`NodeState`), in the words of
//! listings, metrics and the dashboard, which all show it.

use crate::store::{NodeRecord, NodeStatus};

/// What a node's last run says about it, in the words of listings, metrics
/// and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// Its last run failed at least one resource. Listed first.
    Failed,
    /// Enrolled, but no run reported yet.
    Enrolled,
    /// Its last run changed something.
    Changed,
    /// Its last run was a `--noop` run that found changes to make, and
    /// made none.
    Pending,
    /// Its last run found nothing to do.
    Unchanged,
    /// Retired: the instance is gone.
    Gone,
}

impl NodeState {
    pub const ALL: [NodeState; 6] = [
        NodeState::Failed,
        NodeState::Enrolled,
        NodeState::Changed,
        NodeState::Pending,
        NodeState::Unchanged,
        NodeState::Gone,
    ];

    pub fn of(node: &NodeRecord) -> NodeState {
        match (&node.status, &node.last_run) {
            (NodeStatus::Gone, _) => NodeState::Gone,
            (_, None) => NodeState::Enrolled,
            (_, Some(run)) if run.failed > 0 => NodeState::Failed,
            (_, Some(run)) if run.changed > 0 && run.noop => NodeState::Pending,
            (_, Some(run)) if run.changed > 0 => NodeState::Changed,
            _ => NodeState::Unchanged,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Failed => "failed",
            NodeState::Enrolled => "enrolled",
            NodeState::Changed => "changed",
            NodeState::Pending => "pending",
            NodeState::Unchanged => "unchanged",
            NodeState::Gone => "gone",
        }
    }
}

/// The `role` tag of a node, or `""` when it has none.
pub fn role_of(node: &NodeRecord) -> &str {
    node.tags.get("role").map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunSummary;

    fn node_after(changed: u32, failed: u32, noop: bool) -> NodeRecord {
        NodeRecord {
            id: "web-1".into(),
            tags: Default::default(),
            facts: serde_json::json!({}),
            certificate_serial: "01".into(),
            first_seen_unix_ms: 1,
            last_seen_unix_ms: 2,
            last_run: Some(RunSummary {
                run_id: "r".into(),
                finished_unix_ms: 3,
                catalog_id: "c".into(),
                revision: "abc".into(),
                changed,
                failed,
                skipped: 0,
                noop,
            }),
            status: NodeStatus::Active,
            gone_since_unix_ms: None,
            attested: Default::default(),
            environment: String::new(),
        }
    }

    #[test]
    fn a_noop_run_that_found_changes_is_pending_not_changed() {
        assert_eq!(NodeState::of(&node_after(3, 0, true)), NodeState::Pending);
        assert_eq!(NodeState::of(&node_after(3, 0, false)), NodeState::Changed);
        assert_eq!(NodeState::of(&node_after(0, 0, true)), NodeState::Unchanged);
        assert_eq!(
            NodeState::of(&node_after(3, 1, true)),
            NodeState::Failed,
            "a failure outranks what a noop run would change"
        );
        assert_eq!(NodeState::Pending.as_str(), "pending");
    }
}
