//! `cms-server diff` on the server: every node's catalog at two revisions
//! of the roles repository, compared (`catalog_diff`), and the nodes
//! grouped by identical change sets.
//!
//! Nodes that share a compile key (`catalogs::CatalogKey`: what the
//! compile reads of them) share the work: a fleet of 10,000 nodes of 20
//! kinds costs about 20 compiles per revision and 20 comparisons, not
//! 20,000. Compiles run on `threads` blocking threads at once, each on the
//! compile stack (`compile_with_secrets` uses `bounded::on_compile_stack`).
//! Everything here blocks: the admin API runs it in `spawn_blocking`.
//!
//! The catalogs hold secret values; they stay in memory and are dropped
//! when the diff is done. What leaves is `catalog_diff`'s redacted changes
//! and compile diagnostics, which never hold values.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cms_roles::{Catalog, Node, NodeReads, Repository, SecretValues, compile_with_secrets};
use serde::{Deserialize, Serialize};

use cms_proto::v1 as pb;

use crate::catalog_diff::{self, ResourceChange};
use crate::catalogs::CatalogKey;
use crate::environments::Environments;
use crate::git_sync::{GitSource, SyncError};
use crate::nodes::Nodes;
use crate::secrets::ServerSecrets;
use crate::store::NodeStatus;

/// Why a diff did not run.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A revision names no commit, or its repository does not parse.
    #[error("{0}")]
    InvalidRevision(String),
    /// No revision served yet, no git mirror, secrets that cannot be read,
    /// the store unreadable.
    #[error("{0}")]
    CannotRun(String),
}

/// What the admin API's `Diff` needs: the roles repository's mirror (none
/// when the server follows a plain folder), the environments (their
/// stable revisions and which nodes are theirs), the server's secrets and
/// the node records.
#[derive(Debug, Clone)]
pub struct Differ {
    pub roles: Option<GitSource>,
    pub environments: Arc<Environments>,
    pub secrets: Arc<ServerSecrets>,
    pub nodes: Nodes,
}

impl Differ {
    /// Runs a diff request. Blocks (git, compiles).
    pub fn run(&self, request: pb::DiffRequest) -> Result<pb::DiffResponse, DiffError> {
        let environment = self
            .environments
            .named(&request.environment)
            .map_err(|e| DiffError::InvalidRevision(e.to_string()))?;
        let serving = environment.stable.current();
        let to = if request.to.is_empty() {
            serving.as_ref().map(|r| r.commit.clone()).ok_or_else(|| {
                DiffError::CannotRun("no revision is served yet: give --to".to_string())
            })?
        } else {
            request.to.clone()
        };
        let from = self.side(&request.from, serving.as_ref())?;
        let to = self.side(&to, serving.as_ref())?;
        let selector: BTreeMap<String, String> = request
            .selector
            .map(|s| s.tags.into_iter().collect())
            .unwrap_or_default();
        let nodes: Vec<Node> = self
            .nodes
            .list(&selector)
            .map_err(|e| DiffError::CannotRun(e.to_string()))?
            .into_iter()
            .filter(|(record, _)| {
                record.status != NodeStatus::Gone
                    && self.environments.config().environment_of(record) == environment.name
            })
            .map(|(record, _)| crate::catalogs::node_of_record(&record))
            .collect();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let diff = diff_fleet(&from, &to, &nodes, threads);
        Ok(to_proto(&diff))
    }

    /// The revision `revision` names: the serving one as it is served,
    /// another read from the mirror, parsed, and its secrets read as
    /// serving would (age secrets decrypted with the server's identity,
    /// AWS values from the server's current cache).
    fn side(
        &self,
        revision: &str,
        serving: Option<&crate::git_sync::Revision>,
    ) -> Result<DiffSide, DiffError> {
        if let Some(serving) = serving
            && serving.commit == revision
        {
            return Ok(DiffSide::of(serving));
        }
        let Some(roles) = &self.roles else {
            return Err(DiffError::CannotRun(
                "the server follows a plain folder, not a git repository: there is no other revision to compare".to_string(),
            ));
        };
        let commit = roles.resolve_commit(revision).map_err(|e| match e {
            SyncError::UnknownRevision { .. } => DiffError::InvalidRevision(e.to_string()),
            other => DiffError::CannotRun(format!("{:#}", anyhow::Error::from(other))),
        })?;
        if let Some(serving) = serving
            && serving.commit == commit
        {
            return Ok(DiffSide::of(serving));
        }
        let files = roles
            .read_commit(&commit)
            .map_err(|e| DiffError::CannotRun(format!("{:#}", anyhow::Error::from(e))))?;
        let (repository, problems) = Repository::load(files);
        if !problems.is_empty() {
            return Err(DiffError::InvalidRevision(format!(
                "revision {} does not parse:\n{problems}",
                short(&commit)
            )));
        }
        let secrets = self.secrets.resolve(&repository).map_err(|problems| {
            DiffError::CannotRun(format!(
                "Failed to read the secrets of revision {}:\n{problems}",
                short(&commit)
            ))
        })?;
        let (values, generation) = secrets.values();
        Ok(DiffSide {
            commit,
            repository: Arc::new(repository),
            secrets: values,
            generation,
        })
    }
}

impl DiffSide {
    /// A revision as it is served.
    pub fn of(revision: &crate::git_sync::Revision) -> DiffSide {
        let (secrets, generation) = revision.secrets.values();
        DiffSide {
            commit: revision.commit.clone(),
            repository: revision.repository.clone(),
            secrets,
            generation,
        }
    }
}

/// The diff as the admin API sends it.
pub fn to_proto(diff: &FleetDiff) -> pb::DiffResponse {
    pb::DiffResponse {
        from: diff.from.clone(),
        to: diff.to.clone(),
        nodes: diff.nodes as u32,
        compiles: diff.compiles as u32,
        groups: diff
            .groups
            .iter()
            .map(|group| pb::DiffGroup {
                node_ids: group.node_ids.clone(),
                common_tags: group.common_tags.clone().into_iter().collect(),
                changes_json: serde_json::to_string(&group.changes).expect("changes serialize"),
                error: group.error.clone(),
            })
            .collect(),
    }
}

/// The diff the admin API sent, or why it cannot be read.
pub fn from_proto(response: pb::DiffResponse) -> anyhow::Result<FleetDiff> {
    let mut groups = Vec::new();
    for group in response.groups {
        groups.push(DiffGroup {
            node_ids: group.node_ids,
            common_tags: group.common_tags.into_iter().collect(),
            changes: serde_json::from_str(&group.changes_json)
                .map_err(|e| anyhow::anyhow!("Failed to read the server's diff: {e}"))?,
            error: group.error,
        });
    }
    Ok(FleetDiff {
        from: response.from,
        to: response.to,
        nodes: response.nodes as usize,
        compiles: response.compiles as usize,
        groups,
        new_roles: BTreeMap::new(),
    })
}

/// One revision to compile: its commit, parsed repository and secret
/// values.
#[derive(Clone)]
pub struct DiffSide {
    pub commit: String,
    pub repository: Arc<Repository>,
    pub secrets: Arc<SecretValues>,
    /// The generation of its AWS values (part of the compile key).
    pub generation: u64,
}

/// What became of one group of nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffGroup {
    /// The nodes, sorted.
    pub node_ids: Vec<String>,
    /// The tags every node of the group has.
    pub common_tags: BTreeMap<String, String>,
    /// Empty when the nodes' catalogs are the same, or failed.
    pub changes: Vec<ResourceChange>,
    /// Why a catalog failed to compile: `from`'s or `to`'s diagnostics
    /// (which never hold a secret value).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The whole diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDiff {
    pub from: String,
    pub to: String,
    pub nodes: usize,
    /// How many catalogs were compiled (both revisions).
    pub compiles: usize,
    /// Failed groups first, then changed ones (largest first), then the
    /// unchanged.
    pub groups: Vec<DiffGroup>,
    /// Each node's roles at `to`, in the order applied (empty when its
    /// catalog failed to compile there): a rollout's canaries are chosen
    /// per role list. Not sent over the admin API.
    #[serde(default, skip)]
    pub new_roles: BTreeMap<String, Vec<String>>,
}

type Compiled = Result<Arc<Catalog>, String>;

/// Compiles `nodes` at both revisions and groups them by change set.
pub fn diff_fleet(from: &DiffSide, to: &DiffSide, nodes: &[Node], threads: usize) -> FleetDiff {
    let keys = |side: &DiffSide| {
        let reads = NodeReads::of(&side.repository);
        nodes
            .iter()
            .map(|node| {
                CatalogKey::of(
                    &side.commit,
                    &side.repository,
                    node,
                    &reads,
                    side.generation,
                )
            })
            .collect::<Vec<_>>()
    };
    let (from_keys, to_keys) = (keys(from), keys(to));
    // One compile per distinct key and side, by the first node with it.
    let mut work: Vec<(usize, usize)> = Vec::new();
    let mut first: [HashMap<&CatalogKey, usize>; 2] = [HashMap::new(), HashMap::new()];
    for (side, side_keys) in [&from_keys, &to_keys].into_iter().enumerate() {
        for (index, key) in side_keys.iter().enumerate() {
            if !first[side].contains_key(key) {
                first[side].insert(key, index);
                work.push((side, index));
            }
        }
    }
    let results: Mutex<HashMap<(usize, usize), Compiled>> = Mutex::new(HashMap::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, work.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(side, index)) = work.get(at) else {
                        return;
                    };
                    let revision = if side == 0 { from } else { to };
                    let compiled = compile_with_secrets(
                        &revision.repository,
                        &nodes[index],
                        &revision.secrets,
                    )
                    .map(Arc::new)
                    .map_err(|d| d.to_string());
                    results
                        .lock()
                        .expect("results lock")
                        .insert((side, index), compiled);
                }
            });
        }
    });
    let results = results.into_inner().expect("results lock");
    let catalog_of = |side: usize, key: &CatalogKey| &results[&(side, first[side][key])];

    // One comparison per pair of keys; nodes grouped by its outcome.
    let mut outcomes: HashMap<(&CatalogKey, &CatalogKey), usize> = HashMap::new();
    let mut groups: Vec<DiffGroup> = Vec::new();
    let mut by_outcome: HashMap<(Vec<ResourceChange>, String), usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (index, (old_key, new_key)) in from_keys.iter().zip(&to_keys).enumerate() {
        let group = match outcomes.get(&(old_key, new_key)) {
            Some(group) => *group,
            None => {
                let outcome = match (catalog_of(0, old_key), catalog_of(1, new_key)) {
                    (Ok(old), Ok(new)) => (catalog_diff::diff(old, new), String::new()),
                    (Err(e), _) => (Vec::new(), format!("at {}: {e}", short(&from.commit))),
                    (_, Err(e)) => (Vec::new(), format!("at {}: {e}", short(&to.commit))),
                };
                let group = match by_outcome.get(&outcome) {
                    Some(group) => *group,
                    None => {
                        by_outcome.insert(outcome.clone(), groups.len());
                        groups.push(DiffGroup {
                            node_ids: Vec::new(),
                            common_tags: BTreeMap::new(),
                            changes: outcome.0,
                            error: outcome.1,
                        });
                        members.push(Vec::new());
                        groups.len() - 1
                    }
                };
                outcomes.insert((old_key, new_key), group);
                group
            }
        };
        members[group].push(index);
    }
    for (group, members) in groups.iter_mut().zip(&members) {
        let mut ids: Vec<String> = members.iter().map(|i| nodes[*i].id.clone()).collect();
        ids.sort();
        group.node_ids = ids;
        let mut common = nodes[members[0]].tags.clone();
        for index in &members[1..] {
            let tags = &nodes[*index].tags;
            common.retain(|name, value| tags.get(name) == Some(value));
        }
        group.common_tags = common;
    }
    groups.sort_by(|a, b| {
        let rank = |g: &DiffGroup| {
            if !g.error.is_empty() {
                0
            } else if !g.changes.is_empty() {
                1
            } else {
                2
            }
        };
        rank(a)
            .cmp(&rank(b))
            .then(b.node_ids.len().cmp(&a.node_ids.len()))
            .then(a.node_ids.cmp(&b.node_ids))
    });
    let new_roles = nodes
        .iter()
        .zip(&to_keys)
        .map(|(node, key)| {
            let roles = match catalog_of(1, key) {
                Ok(catalog) => catalog.roles.clone(),
                Err(_) => Vec::new(),
            };
            (node.id.clone(), roles)
        })
        .collect();
    FleetDiff {
        from: from.commit.clone(),
        to: to.commit.clone(),
        nodes: nodes.len(),
        compiles: results.len(),
        groups,
        new_roles,
    }
}

/// A commit id as people read it.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// The diff as people read it: one block per group.
pub fn render(diff: &FleetDiff) -> String {
    let mut out = format!(
        "diff {}..{}: {} nodes\n",
        short(&diff.from),
        short(&diff.to),
        diff.nodes
    );
    for group in &diff.groups {
        let count = group.node_ids.len();
        let tags = if group.common_tags.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                group
                    .common_tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let what = if !group.error.is_empty() {
            "failed to compile"
        } else if group.changes.is_empty() {
            "unchanged"
        } else {
            "change"
        };
        out.push_str(&format!(
            "\n{count} node{}{tags} {what}: {}\n",
            if count == 1 { "" } else { "s" },
            node_list(&group.node_ids)
        ));
        if !group.error.is_empty() {
            for line in group.error.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out.push_str(&catalog_diff::render(&group.changes, "  "));
    }
    out
}

/// The diff node by node, for `--format json`: `{from, to, compiles,
/// nodes: [{node, status: changed|unchanged|failed, changes, error}]}`,
/// nodes sorted by id.
pub fn per_node_json(diff: &FleetDiff) -> serde_json::Value {
    let mut nodes: Vec<(&String, &DiffGroup)> = diff
        .groups
        .iter()
        .flat_map(|group| group.node_ids.iter().map(move |id| (id, group)))
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(b.0));
    let nodes: Vec<serde_json::Value> = nodes
        .into_iter()
        .map(|(id, group)| {
            let status = if !group.error.is_empty() {
                "failed"
            } else if group.changes.is_empty() {
                "unchanged"
            } else {
                "changed"
            };
            let mut node = serde_json::json!({
                "node": id, "status": status, "changes": group.changes,
            });
            if !group.error.is_empty() {
                node["error"] = serde_json::json!(group.error);
            }
            node
        })
        .collect();
    serde_json::json!({
        "from": diff.from, "to": diff.to, "compiles": diff.compiles, "nodes": nodes,
    })
}

/// At most ten names, then how many more.
fn node_list(ids: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" … and {} more", ids.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use cms_roles::RepoFiles;

    fn side(commit: &str, web_port: &str) -> DiffSide {
        let mut files = RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert(
            "roles/web.toml",
            format!("[match]\nrole = \"web\"\n[[file]]\npath = \"/etc/web\"\ncontent = \"port={web_port}\\n\"\n").as_str(),
        );
        files.insert(
            "roles/db.toml",
            "[match]\nrole = \"db\"\n[[package]]\nname = \"postgresql\"\n",
        );
        files.insert(
            "roles/broken.toml",
            "[match]\nrole = \"broken\"\n[[file]]\npath = \"/etc/b\"\nowner = \"{{data.missing}}\"\n",
        );
        DiffSide {
            commit: commit.into(),
            repository: Arc::new(Repository::parse(files).expect("valid")),
            secrets: Arc::default(),
            generation: 0,
        }
    }

    fn node(id: &str, role: &str) -> Node {
        Node {
            id: id.into(),
            tags: BTreeMap::from([("role".into(), role.into())]),
            facts: BTreeMap::new(),
            attested: BTreeMap::new(),
        }
    }

    #[test]
    fn nodes_are_grouped_by_identical_change_sets_and_share_compiles() {
        let nodes: Vec<Node> = (0..50)
            .map(|i| node(&format!("web-{i:02}"), "web"))
            .chain((0..30).map(|i| node(&format!("db-{i:02}"), "db")))
            .collect();
        let diff = diff_fleet(&side("aaaa", "80"), &side("bbbb", "81"), &nodes, 2);
        // web and db, at each revision.
        assert_eq!(diff.compiles, 4);
        assert_eq!(diff.groups.len(), 2, "{diff:?}");
        assert_eq!(diff.groups[0].node_ids.len(), 50);
        assert_eq!(diff.groups[0].common_tags["role"], "web");
        assert_eq!(diff.groups[0].changes[0].reference, "file:/etc/web");
        assert!(diff.groups[1].changes.is_empty());
        let text = render(&diff);
        assert!(
            text.contains("50 nodes (role=web) change: web-00, web-01"),
            "{text}"
        );
        assert!(text.contains("… and 40 more"), "{text}");
        assert!(text.contains("30 nodes (role=db) unchanged"), "{text}");
    }

    #[test]
    fn a_node_that_fails_to_compile_is_listed_with_the_error() {
        let nodes = vec![node("b1", "broken"), node("w1", "web")];
        let diff = diff_fleet(&side("aaaa", "80"), &side("bbbb", "80"), &nodes, 1);
        assert_eq!(diff.groups[0].node_ids, ["b1"]);
        assert!(diff.groups[0].error.starts_with("at aaaa: "), "{diff:?}");
        assert!(
            diff.groups[0].error.contains("roles/broken.toml"),
            "{diff:?}"
        );
        assert!(diff.groups[1].changes.is_empty() && diff.groups[1].error.is_empty());
    }
}
