//! Environments: the branches the server follows, which environment a node
//! belongs to, and which revision each node is served.
//!
//! Each environment follows one branch of the roles repository and has a
//! **stable** revision, the one its nodes get. A rollout (`rollouts.rs`)
//! moves nodes to a newer revision wave by wave, and a pin holds the nodes
//! a selector matches on a revision; [`Environment::revision_for`] is the
//! one rule that decides: a pin first, then the rollout, then stable.
//!
//! A node's environment is bound when it enrolls, from its trusted tags
//! (the token's scope or EC2's tags, never what it reports later): the
//! value of the environment tag when it names an environment, else the
//! default environment ([`EnvironmentsConfig::bind`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use crate::git_sync::Revision;
use crate::revision::{CatalogError, ServingRevision};
use crate::store::{EnvironmentRecord, NodeRecord};

/// The environment of a server given no `--environment`.
pub const DEFAULT_ENVIRONMENT: &str = "production";
/// The tag whose value names a node's environment unless told.
pub const DEFAULT_ENVIRONMENT_TAG: &str = "env";

/// One environment as configured: its name and the branch it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentSpec {
    pub name: String,
    pub branch: String,
}

impl EnvironmentSpec {
    /// Reads `NAME=BRANCH`.
    pub fn parse(text: &str) -> Result<EnvironmentSpec, String> {
        let Some((name, branch)) = text.split_once('=') else {
            return Err(format!(
                "`{text}` is not an environment: write NAME=BRANCH, e.g. prod=main"
            ));
        };
        let (name, branch) = (name.trim(), branch.trim());
        check_name(name)?;
        if branch.is_empty() || branch.starts_with('-') || branch.contains("..") {
            return Err(format!(
                "`{branch}` is not a branch name (environment {name}): write NAME=BRANCH, e.g. prod=main"
            ));
        }
        Ok(EnvironmentSpec {
            name: name.to_string(),
            branch: branch.to_string(),
        })
    }
}

/// An environment name: lowercase letters, digits, `-` and `_`, starting
/// with a letter or digit, at most 63 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an environment name: use lowercase letters, digits, - and _ (at most 63), e.g. prod"
        ))
    }
}

/// The environments the server follows, which is the default, and the tag
/// that binds a node to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentsConfig {
    environments: Vec<EnvironmentSpec>,
    default: String,
    tag: String,
}

impl EnvironmentsConfig {
    /// One environment, `production`, following `branch`: a server given
    /// no `--environment`.
    pub fn single(branch: &str) -> EnvironmentsConfig {
        EnvironmentsConfig {
            environments: vec![EnvironmentSpec {
                name: DEFAULT_ENVIRONMENT.to_string(),
                branch: branch.to_string(),
            }],
            default: DEFAULT_ENVIRONMENT.to_string(),
            tag: DEFAULT_ENVIRONMENT_TAG.to_string(),
        }
    }

    /// Checks names are unique and the default is one of them (the first
    /// when not given).
    pub fn new(
        environments: Vec<EnvironmentSpec>,
        default: Option<String>,
        tag: String,
    ) -> Result<EnvironmentsConfig, String> {
        let Some(first) = environments.first() else {
            return Err("no environment: give --environment NAME=BRANCH".to_string());
        };
        let mut seen = BTreeSet::new();
        for environment in &environments {
            if !seen.insert(environment.name.as_str()) {
                return Err(format!(
                    "environment {} is given twice: each --environment needs its own name",
                    environment.name
                ));
            }
        }
        let default = default.unwrap_or_else(|| first.name.clone());
        if !seen.contains(default.as_str()) {
            return Err(format!(
                "--default-environment {default} is not one of the environments ({})",
                seen.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        if tag.trim().is_empty() {
            return Err("--environment-tag needs a tag name, e.g. env".to_string());
        }
        Ok(EnvironmentsConfig {
            environments,
            default,
            tag,
        })
    }

    pub fn environments(&self) -> &[EnvironmentSpec] {
        &self.environments
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The environment a node with these trusted tags belongs to: the one
    /// its environment tag names, else the default.
    pub fn bind(&self, tags: &BTreeMap<String, String>) -> String {
        tags.get(&self.tag)
            .filter(|value| self.environments.iter().any(|e| &e.name == *value))
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }

    /// A node's environment: the one bound at enrollment, or for a record
    /// stored before environments existed, bound now by the same rule from
    /// its stored tags.
    pub fn environment_of(&self, node: &NodeRecord) -> String {
        if node.environment.is_empty() {
            self.bind(&node.tags)
        } else {
            node.environment.clone()
        }
    }
}

/// Where a rollout stands for serving: the revision it moves nodes to and
/// the nodes moved so far.
#[derive(Debug, Clone)]
pub struct Moved {
    pub rollout_id: String,
    pub to: Revision,
    pub nodes: BTreeSet<String>,
}

/// A pin for serving: nodes whose tags match `selector` get `revision`.
#[derive(Debug, Clone)]
pub struct PinnedRevision {
    pub selector: BTreeMap<String, String>,
    pub revision: Revision,
}

/// Which nodes get something other than the stable revision.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub rollout: Option<Moved>,
    pub pins: Vec<PinnedRevision>,
}

impl Placement {
    /// The pin holding a node with `tags`, the first one pinned.
    pub fn pin_of(&self, tags: &BTreeMap<String, String>) -> Option<&PinnedRevision> {
        self.pins
            .iter()
            .find(|pin| selector_matches(&pin.selector, tags))
    }
}

/// Whether `tags` match every glob of `selector`.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    tags: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(name, pattern)| {
        tags.get(name)
            .is_some_and(|value| cms_roles::glob_match(pattern, value))
    })
}

/// One environment: its branch, its stable revision, where nodes stand
/// (rollout, pins) and its stored record.
#[derive(Debug)]
pub struct Environment {
    pub name: String,
    pub branch: String,
    /// The revision the environment's nodes get unless moved or pinned.
    pub stable: Arc<ServingRevision>,
    placement: RwLock<Placement>,
    /// The stored state (stable commit, rollouts, pins), changed only under
    /// this lock and written whole.
    pub(crate) record: tokio::sync::Mutex<EnvironmentRecord>,
    /// A newer accepted commit waiting for the active rollout to end.
    pub(crate) pending: std::sync::Mutex<Option<Revision>>,
    /// When a node's outcome was last written (`rollouts` writes them at
    /// most once a second; each step after a wave writes the record).
    pub(crate) outcome_saved: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Environment {
    pub fn new(
        spec: &EnvironmentSpec,
        stable: Option<Revision>,
        placement: Placement,
        record: EnvironmentRecord,
    ) -> Environment {
        Environment {
            name: spec.name.clone(),
            branch: spec.branch.clone(),
            stable: Arc::new(ServingRevision::new(stable)),
            placement: RwLock::new(placement),
            record: tokio::sync::Mutex::new(record),
            pending: std::sync::Mutex::new(None),
            outcome_saved: std::sync::Mutex::new(None),
        }
    }

    /// The revision `node_id` with `tags` is served: its pin's, else the
    /// rollout's when the rollout moved it, else the stable one.
    pub fn revision_for(
        &self,
        node_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Revision, CatalogError> {
        {
            let placement = self.placement.read().expect("placement lock");
            if let Some(pin) = placement.pin_of(tags) {
                return Ok(pin.revision.clone());
            }
            if let Some(moved) = &placement.rollout
                && moved.nodes.contains(node_id)
            {
                return Ok(moved.to.clone());
            }
        }
        self.stable.serving()
    }

    /// A copy of where nodes stand.
    pub fn placement(&self) -> Placement {
        self.placement.read().expect("placement lock").clone()
    }

    pub(crate) fn update_placement<T>(&self, change: impl FnOnce(&mut Placement) -> T) -> T {
        change(&mut self.placement.write().expect("placement lock"))
    }

    /// Every revision some node of the environment may be served now.
    pub fn revisions_in_use(&self) -> Vec<Revision> {
        let placement = self.placement();
        let mut revisions: Vec<Revision> = self.stable.current().into_iter().collect();
        revisions.extend(placement.rollout.map(|moved| moved.to));
        revisions.extend(placement.pins.into_iter().map(|pin| pin.revision));
        revisions
    }
}

/// Why an environment was not found.
#[derive(Debug, thiserror::Error)]
pub enum EnvironmentError {
    #[error("no environment {name}: this server follows {known}")]
    Unknown { name: String, known: String },
}

/// Every environment the server follows.
#[derive(Debug)]
pub struct Environments {
    config: EnvironmentsConfig,
    by_name: BTreeMap<String, Arc<Environment>>,
}

impl Environments {
    /// The environments of `config`, each as `restored` gives it (an
    /// environment missing there starts with nothing served).
    pub fn new(
        config: EnvironmentsConfig,
        mut restored: BTreeMap<String, Environment>,
    ) -> Environments {
        let by_name = config
            .environments()
            .iter()
            .map(|spec| {
                let environment = restored.remove(&spec.name).unwrap_or_else(|| {
                    Environment::new(
                        spec,
                        None,
                        Placement::default(),
                        EnvironmentRecord::default(),
                    )
                });
                (spec.name.clone(), Arc::new(environment))
            })
            .collect();
        Environments { config, by_name }
    }

    pub fn config(&self) -> &EnvironmentsConfig {
        &self.config
    }

    /// Every environment, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Environment>> {
        self.by_name.values()
    }

    /// The default environment.
    pub fn default_environment(&self) -> &Arc<Environment> {
        &self.by_name[self.config.default_name()]
    }

    /// The environment `name` names; empty means the default.
    pub fn named(&self, name: &str) -> Result<&Arc<Environment>, EnvironmentError> {
        if name.is_empty() {
            return Ok(self.default_environment());
        }
        self.by_name
            .get(name)
            .ok_or_else(|| EnvironmentError::Unknown {
                name: name.to_string(),
                known: self.by_name.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// The environment a node belongs to; an environment no longer
    /// configured is an error, never another environment's roles.
    pub fn of_node(&self, node: &NodeRecord) -> Result<&Arc<Environment>, CatalogError> {
        let name = self.config.environment_of(node);
        self.by_name
            .get(&name)
            .ok_or_else(|| CatalogError::EnvironmentNotServed {
                node_id: node.id.clone(),
                environment: name,
            })
    }

    /// The revision `node` is served.
    pub fn revision_for(&self, node: &NodeRecord) -> Result<Revision, CatalogError> {
        self.of_node(node)?.revision_for(&node.id, &node.tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{node, tags};

    fn config() -> EnvironmentsConfig {
        EnvironmentsConfig::new(
            vec![
                EnvironmentSpec::parse("prod=main").unwrap(),
                EnvironmentSpec::parse("staging=staging").unwrap(),
            ],
            None,
            "env".to_string(),
        )
        .unwrap()
    }

    fn revision(commit: &str) -> Revision {
        let mut files = cms_roles::RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        let (repository, problems) = cms_roles::Repository::load(files);
        assert!(problems.is_empty(), "{problems}");
        Revision {
            commit: commit.to_string(),
            repository: Arc::new(repository),
            secrets: crate::secrets::RevisionSecrets::empty(),
        }
    }

    #[test]
    fn environment_specs_are_name_equals_branch_with_checked_names() {
        assert_eq!(
            EnvironmentSpec::parse("prod=main").unwrap(),
            EnvironmentSpec {
                name: "prod".into(),
                branch: "main".into()
            }
        );
        assert_eq!(
            EnvironmentSpec::parse("qa=release/2.1").unwrap().branch,
            "release/2.1"
        );
        for bad in [
            "prod",
            "Prod=main",
            "=main",
            "prod=",
            "pr od=main",
            "prod=-x",
        ] {
            assert!(EnvironmentSpec::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_default_is_the_first_environment_unless_named_and_must_exist() {
        assert_eq!(config().default_name(), "prod");
        let specs = config().environments().to_vec();
        let named =
            EnvironmentsConfig::new(specs.clone(), Some("staging".into()), "env".into()).unwrap();
        assert_eq!(named.default_name(), "staging");
        let error =
            EnvironmentsConfig::new(specs.clone(), Some("qa".into()), "env".into()).unwrap_err();
        assert!(
            error.contains("not one of the environments (prod, staging)"),
            "{error}"
        );
        let twice = vec![specs[0].clone(), specs[0].clone()];
        assert!(EnvironmentsConfig::new(twice, None, "env".into()).is_err());
    }

    #[test]
    fn a_node_is_bound_by_its_environment_tag_else_to_the_default() {
        let config = config();
        assert_eq!(config.bind(&tags(&[("env", "staging")])), "staging");
        assert_eq!(config.bind(&tags(&[("env", "prod")])), "prod");
        assert_eq!(config.bind(&tags(&[("env", "qa")])), "prod");
        assert_eq!(config.bind(&tags(&[("role", "web")])), "prod");
        let mut record = node("web-1");
        record.tags = tags(&[("env", "staging")]);
        assert_eq!(config.environment_of(&record), "staging");
        // Bound at enrollment: what is stored wins over the tags.
        record.environment = "prod".into();
        assert_eq!(config.environment_of(&record), "prod");
    }

    #[test]
    fn a_pin_wins_over_the_rollout_which_wins_over_stable_for_the_nodes_it_moved() {
        let spec = EnvironmentSpec::parse("prod=main").unwrap();
        let environment = Environment::new(
            &spec,
            Some(revision("stable")),
            Placement::default(),
            EnvironmentRecord::default(),
        );
        let web = tags(&[("role", "web")]);
        let api = tags(&[("role", "api")]);
        let commit = |id: &str, tags: &BTreeMap<String, String>| {
            environment.revision_for(id, tags).unwrap().commit
        };
        assert_eq!(commit("web-1", &web), "stable");
        environment.update_placement(|placement| {
            placement.rollout = Some(Moved {
                rollout_id: "r1".into(),
                to: revision("new"),
                nodes: ["web-1".to_string(), "api-1".to_string()].into(),
            })
        });
        assert_eq!(commit("web-1", &web), "new");
        assert_eq!(commit("web-2", &web), "stable");
        environment.update_placement(|placement| {
            placement.pins.push(PinnedRevision {
                selector: tags(&[("role", "ap*")]),
                revision: revision("old"),
            })
        });
        assert_eq!(commit("api-1", &api), "old");
        assert_eq!(commit("web-1", &web), "new");
    }

    #[test]
    fn a_node_of_an_environment_no_longer_served_gets_no_catalog() {
        let environments = Environments::new(config(), BTreeMap::new());
        let mut record = node("web-1");
        record.environment = "qa".into();
        let error = environments.revision_for(&record).unwrap_err();
        assert!(error.to_string().contains("environment qa"), "{error}");
        assert!(environments.named("qa").is_err());
        assert_eq!(environments.named("").unwrap().name, "prod");
    }
}
