//! `cms-server explain`: why a node gets its roles and data
//! (`cms_roles::explain`), for a repository folder and given tags, or for
//! a live node.
//!
//! A live node is explained by the server (the `Explain` admin call),
//! with the node's stored tags, last facts and attested values, against
//! the revision the server serves that node: what the node really gets,
//! even during a rollout or under a pin. The CLI prints the answer as the
//! folder's explanation is printed.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use cms_proto::v1 as pb;
use cms_roles::{Explanation, Node, Repository, example_attested, example_facts, tags_text};
use tonic::Status;

use crate::admin::status_error;
use crate::cli::{EXIT_INVALID, ExplainArgs, Format, parse_tags};
use crate::resolve::AdminTarget;

/// `explain --repo DIR --tags …`.
pub fn run_repo(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let repo = args
        .repo
        .as_ref()
        .context("--repo is required without NODE")?;
    let tags = parse_tags(args.tags.as_deref().unwrap_or_default())?;
    let facts = match &args.facts {
        Some(path) => crate::check::read_facts(path)?,
        None => example_facts(),
    };
    let attested = match &args.attested {
        Some(path) => crate::check::read_attested(path)?,
        None => example_attested(),
    };
    // The node id as `check` chooses it: --node, else the attested
    // instance id; never a fact.
    let node = Node {
        id: args
            .node_id
            .clone()
            .or_else(|| attested.get("instance_id").cloned())
            .unwrap_or_else(|| "example".to_string()),
        tags,
        facts,
        attested,
    };
    let (repository, problems) = Repository::load_dir(repo);
    let explanation = cms_roles::explain(&repository, &node);
    let code = print(&explanation, None, args.admin.format)?;
    if !problems.is_empty() {
        for problem in problems.iter() {
            eprintln!("error: {problem}");
        }
        eprintln!(
            "error: the repository has {} problem{}: the explanation may leave out what they hide (`cms-server check --repo {}` lists them)",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            repo.display()
        );
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    Ok(code)
}

/// `explain NODE`: the server explains its node.
pub async fn run_node(args: &ExplainArgs, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let node_id = args.node.clone().unwrap_or_default();
    let mut client = crate::admin::connect_as(admin).await?;
    let answer = match client
        .explain(pb::ExplainRequest {
            node_id: node_id.clone(),
        })
        .await
    {
        Ok(answer) => answer.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            eprintln!(
                "error: {}\nhint: `cms-server nodes` lists the nodes the server knows",
                status.message()
            );
            return Ok(ExitCode::from(EXIT_INVALID));
        }
        Err(status) => return Err(status_error(status)),
    };
    let explanation: Explanation = serde_json::from_str(&answer.explanation_json)
        .context("Failed to read the server's explanation")?;
    print(&explanation, Some(&answer.revision), admin.format)
}

/// What the server answers `Explain`: the node as the compiler sees it,
/// explained against the revision it is served. Blocks (the store).
pub fn explain_node(
    nodes: &crate::nodes::Nodes,
    environments: &crate::environments::Environments,
    node_id: &str,
) -> Result<pb::ExplainResponse, Status> {
    let record = nodes.current(node_id)?;
    let revision = environments.revision_for(&record)?;
    let node = crate::catalogs::node_of_record(&record);
    let explanation = cms_roles::explain(&revision.repository, &node);
    let explanation_json = serde_json::to_string(&explanation)
        .map_err(|error| Status::internal(format!("Failed to encode the explanation: {error}")))?;
    Ok(pb::ExplainResponse {
        revision: revision.commit.clone(),
        explanation_json,
    })
}

/// Prints the explanation; exit status 1, with a message, when the node
/// gets no role.
fn print(
    explanation: &Explanation,
    revision: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    match format {
        Format::Json => {
            let mut json = serde_json::to_value(explanation)?;
            if let Some(revision) = revision {
                json["revision"] = revision.into();
            }
            println!("{json:#}");
        }
        Format::Text => print!("{}", explanation_text(explanation, revision)),
    }
    if explanation.matched_any() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: no role matches the node with {}: it would get an empty catalog\nhint: each role above says the first [match] entry that fails; fix the node's tags or a role's [match]",
        match tags_text(&explanation.tags).as_str() {
            "no tags" => "no tags".to_string(),
            tags => format!("tags {tags}"),
        }
    );
    Ok(ExitCode::from(EXIT_INVALID))
}

/// The explanation as people read it: roles, layers, values.
pub fn explanation_text(explanation: &Explanation, revision: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({})",
        explanation.node,
        tags_text(&explanation.tags)
    );
    if let Some(revision) = revision {
        let _ = writeln!(out, "revision {revision}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "roles, in the order they apply:");
    if explanation.matched.is_empty() {
        let _ = writeln!(out, "  none");
    }
    let rows: Vec<(String, String, String)> = explanation
        .matched
        .iter()
        .map(|role| {
            let why = if !role.matched {
                format!("included by {}", role.included_by.join(", "))
            } else if role.entries.is_empty() {
                "no [match]: every node".to_string()
            } else if role.included_by.is_empty() {
                "[match] holds".to_string()
            } else {
                format!(
                    "[match] holds; also included by {}",
                    role.included_by.join(", ")
                )
            };
            (role.name.clone(), role.file.clone(), why)
        })
        .collect();
    for (line, role) in table(&rows).iter().zip(&explanation.matched) {
        let _ = writeln!(out, "  {line}");
        let entries: Vec<[String; 2]> = role
            .entries
            .iter()
            .map(|entry| {
                [
                    format!("{} = {:?}", entry.tag, entry.pattern),
                    format!("matches tag.{} = {:?}", entry.tag, entry.value),
                ]
            })
            .collect();
        for entry in table2(&entries) {
            let _ = writeln!(out, "      {entry}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "roles not matched:");
    if explanation.unmatched.is_empty() {
        let _ = writeln!(out, "  none");
    }
    let rows: Vec<(String, String, String)> = explanation
        .unmatched
        .iter()
        .map(|role| {
            let why = match &role.value {
                None => format!(
                    "{} = {:?}: the node has no tag {}",
                    role.tag, role.pattern, role.tag
                ),
                Some(value) => format!(
                    "{} = {:?} does not match tag.{} = {:?}",
                    role.tag, role.pattern, role.tag, value
                ),
            };
            (role.name.clone(), role.file.clone(), why)
        })
        .collect();
    for line in table(&rows) {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "data layers, most specific first:");
    let rows: Vec<(String, String, String)> = explanation
        .layers
        .iter()
        .map(|layer| match (&layer.name, &layer.skipped) {
            (Some(name), _) => {
                let files: Vec<&str> = layer
                    .data_file
                    .iter()
                    .chain(&layer.secrets_file)
                    .map(String::as_str)
                    .collect();
                let files = if files.is_empty() {
                    "no file".to_string()
                } else {
                    files.join(", ")
                };
                (layer.written.clone(), name.clone(), files)
            }
            (None, skipped) => (
                layer.written.clone(),
                "skipped".to_string(),
                skipped.clone().unwrap_or_default(),
            ),
        })
        .collect();
    for line in table(&rows) {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "data values the roles read:");
    if explanation.values.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for value in &explanation.values {
        match (&value.value, &value.from) {
            (Some(found), Some(from)) => {
                let _ = writeln!(out, "  {} = {}", value.path, found);
                if value.overrides.is_empty() {
                    let _ = writeln!(out, "      from {from}");
                } else {
                    let _ = writeln!(
                        out,
                        "      from {from}, overriding {}",
                        value.overrides.join(", ")
                    );
                }
            }
            _ => {
                let _ = writeln!(out, "  {}", value.path);
                let _ = writeln!(out, "      not defined in any layer");
            }
        }
    }
    out
}

/// Rows of three columns, the first two padded to their widest, each
/// line without trailing blanks.
fn table(rows: &[(String, String, String)]) -> Vec<String> {
    let first = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let second = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    rows.iter()
        .map(|(a, b, c)| {
            format!("{a:<first$}  {b:<second$}  {c}")
                .trim_end()
                .to_string()
        })
        .collect()
}

fn table2(rows: &[[String; 2]]) -> Vec<String> {
    let first = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    rows.iter()
        .map(|[a, b]| format!("{a:<first$}  {b}"))
        .collect()
}
