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
    /// Its last run found nothing to do.
    Unchanged,
    /// Retired: the instance is gone.
    Gone,
}

impl NodeState {
    pub const ALL: [NodeState; 5] = [
        NodeState::Failed,
        NodeState::Enrolled,
        NodeState::Changed,
        NodeState::Unchanged,
        NodeState::Gone,
    ];

    pub fn of(node: &NodeRecord) -> NodeState {
        match (&node.status, &node.last_run) {
            (NodeStatus::Gone, _) => NodeState::Gone,
            (_, None) => NodeState::Enrolled,
            (_, Some(run)) if run.failed > 0 => NodeState::Failed,
            (_, Some(run)) if run.changed > 0 => NodeState::Changed,
            _ => NodeState::Unchanged,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Failed => "failed",
            NodeState::Enrolled => "enrolled",
            NodeState::Changed => "changed",
            NodeState::Unchanged => "unchanged",
            NodeState::Gone => "gone",
        }
    }
}

/// The `role` tag of a node, or `""` when it has none.
pub fn role_of(node: &NodeRecord) -> &str {
    node.tags.get("role").map_or("", String::as_str)
}
