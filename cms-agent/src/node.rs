//! What the agent observes of its node: its tags (given on the command line,
//! or discovered from instance metadata or the tags file), its facts, and
//! the id it goes by. One place, so `apply`, `facts`, `enroll` and
//! `converge` see the node the same way.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::facts::{FactSources, gather};
use crate::tags::{TagSources, discover};

/// How long one instance-metadata request may take: boot must not wait.
const METADATA_TIMEOUT: Duration = Duration::from_millis(500);
/// How long all of them together may take.
const METADATA_BUDGET: Duration = Duration::from_secs(3);

/// The node as the agent sees it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub tags: BTreeMap<String, String>,
    pub facts: BTreeMap<String, Value>,
    /// Where the tags came from: `--tags`, `metadata service` or a path.
    pub tags_source: String,
}

/// Gathers facts under `root`, and the tags: `given` when there are, else
/// discovered (a metadata problem is a warning on stderr, then the tags
/// file is used).
pub fn observe(
    root: &Path,
    given: Option<BTreeMap<String, String>>,
    metadata_endpoint: Option<String>,
) -> anyhow::Result<Observed> {
    let (tags, instance_id, ec2, tags_source) = match given {
        Some(tags) => (tags, None, BTreeMap::new(), "--tags".to_string()),
        None => {
            let found = discover(&TagSources {
                root,
                metadata_endpoint,
                metadata_timeout: METADATA_TIMEOUT,
                metadata_budget: METADATA_BUDGET,
            })?;
            match &found.warning {
                Some(warning) if found.source == "metadata service" => {
                    eprintln!("warning: {warning}");
                }
                Some(warning) => eprintln!(
                    "warning: {warning}\nwarning: using {} instead",
                    found.source
                ),
                None => {}
            }
            (found.tags, found.instance_id, found.ec2, found.source)
        }
    };
    let gathered = gather(&FactSources {
        root,
        instance_id,
        ec2,
    });
    for warning in &gathered.warnings {
        eprintln!("warning: {warning}");
    }
    let facts = gathered.facts;
    Ok(Observed {
        tags,
        facts,
        tags_source,
    })
}

/// The instance identity document and its signature, for attested
/// enrollment, read with the same time limits as tag discovery.
pub fn instance_identity(
    root: &Path,
    metadata_endpoint: Option<String>,
) -> anyhow::Result<crate::tags::InstanceIdentity> {
    crate::tags::instance_identity(&TagSources {
        root,
        metadata_endpoint,
        metadata_timeout: METADATA_TIMEOUT,
        metadata_budget: METADATA_BUDGET,
    })
}

/// The node's id: the one given, else its instance id, else its hostname.
pub fn node_id(given: Option<String>, facts: &BTreeMap<String, Value>) -> String {
    let fact = |name: &str| facts.get(name).and_then(Value::as_str).map(str::to_string);
    given
        .or_else(|| fact("instance_id"))
        .or_else(|| fact("hostname"))
        .unwrap_or_else(|| "localhost".to_string())
}
