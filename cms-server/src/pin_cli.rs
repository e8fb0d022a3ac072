//! `cms-server pin`, `cms-server unpin` and `cms-server environments`:
//! holding nodes on a revision, releasing them, and the environments with
//! their pins, through the admin API (`Pin`, `Unpin`, `ListEnvironments`).
//! Flags are checked before the server is asked; what is printed is made
//! by pure functions of the answers.
//!
//! Exit status: 0 ok; 1 the request is invalid (a bad selector or
//! revision, refused here; an unknown environment, revision or pin,
//! refused by the server); 3 the server cannot be reached.

use std::collections::BTreeMap;
use std::process::ExitCode;

use cms_proto::v1 as pb;

use crate::admin::refusal;
use crate::cli::{EXIT_INVALID, Format, PinArgs, UnpinArgs, parse_tags};
use crate::resolve::AdminTarget;
use crate::rollout_cli::{pretty, short_revision, time_text};

/// `pin`: the nodes the selector matches held on a revision.
pub async fn pin(args: PinArgs, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let request = match pin_request(&args) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let selector = selector_text(request.selector.as_ref());
    let mut client = crate::admin::connect_as(admin).await?;
    let pinned = match client.pin(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return refusal(status),
    };
    match admin.format {
        Format::Json => println!(
            "{}",
            pretty(&serde_json::json!({
                "environment": pinned.environment,
                "selector": selector,
                "revision": pinned.revision,
                "nodes": pinned.nodes,
            }))
        ),
        Format::Text => print!("{}", pin_text(&selector, &pinned)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `unpin`: the nodes of a pin follow their environment again.
pub async fn unpin(args: UnpinArgs, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let request = match unpin_request(&args) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let selector = selector_text(request.selector.as_ref());
    let environment = request.environment.clone();
    let mut client = crate::admin::connect_as(admin).await?;
    let released = match client.unpin(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return refusal(status),
    };
    match admin.format {
        Format::Json => println!(
            "{}",
            pretty(&serde_json::json!({
                "environment": environment,
                "selector": selector,
                "nodes": released.nodes,
            }))
        ),
        Format::Text => print!("{}", unpin_text(&selector, &released)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `environments`: each environment with its revisions, rollout and pins.
pub async fn environments(admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect_as(admin).await?;
    let environments = match client
        .list_environments(pb::ListEnvironmentsRequest {})
        .await
    {
        Ok(response) => response.into_inner().environments,
        Err(status) => return refusal(status),
    };
    match admin.format {
        Format::Json => println!("{}", pretty(&environments_json(&environments))),
        Format::Text => print!("{}", environments_text(&environments)),
    }
    Ok(ExitCode::SUCCESS)
}

/// A selector from `--select`: at least one tag.
fn selector(select: &str) -> anyhow::Result<pb::Selector> {
    let tags = parse_tags(select).map_err(|e| anyhow::anyhow!("--select: {e}"))?;
    anyhow::ensure!(
        !tags.is_empty(),
        "--select: name at least one tag, e.g. --select role=api"
    );
    Ok(pb::Selector {
        tags: tags.into_iter().collect(),
    })
}

/// The `Pin` request the flags ask for, or what is wrong with them.
fn pin_request(args: &PinArgs) -> anyhow::Result<pb::PinRequest> {
    if let Some(revision) = &args.revision {
        anyhow::ensure!(
            crate::git_sync::is_commit_prefix(revision),
            "--revision: `{revision}` is not a commit id: give a commit id or a prefix of at least 4 hex digits"
        );
    }
    Ok(pb::PinRequest {
        environment: args.environment.clone().unwrap_or_default(),
        selector: Some(selector(&args.select)?),
        revision: args.revision.clone().unwrap_or_default(),
    })
}

/// The `Unpin` request the flags ask for, or what is wrong with them.
fn unpin_request(args: &UnpinArgs) -> anyhow::Result<pb::UnpinRequest> {
    Ok(pb::UnpinRequest {
        environment: args.environment.clone().unwrap_or_default(),
        selector: Some(selector(&args.select)?),
    })
}

/// A selector as `--select` writes it, its tags in name order.
fn selector_text(selector: Option<&pb::Selector>) -> String {
    let Some(selector) = selector else {
        return String::new();
    };
    selector
        .tags
        .iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn nodes_text(nodes: &[String]) -> String {
    if nodes.is_empty() {
        return "no live node matches yet".to_owned();
    }
    format!("{} node(s): {}", nodes.len(), nodes.join(", "))
}

fn pin_text(selector: &str, pinned: &pb::PinResponse) -> String {
    format!(
        "pinned {selector} in {} on {}: {}\n",
        pinned.environment,
        short_revision(&pinned.revision),
        nodes_text(&pinned.nodes)
    )
}

fn unpin_text(selector: &str, released: &pb::UnpinResponse) -> String {
    format!(
        "unpinned {selector}: {}\n",
        if released.nodes.is_empty() {
            "no live node was held".to_owned()
        } else {
            format!(
                "{} node(s) follow their environment again: {}",
                released.nodes.len(),
                released.nodes.join(", ")
            )
        }
    )
}

/// `environments` as a table, each pin on a line of its own below its
/// environment.
fn environments_text(environments: &[pb::EnvironmentStatus]) -> String {
    let mut out = format!(
        "{:<16} {:<20} {:<8} {:<12} {:<16} {:<12} {:>5} PINS\n",
        "ENVIRONMENT", "BRANCH", "DEFAULT", "STABLE", "ROLLOUT", "PENDING", "NODES"
    );
    for environment in environments {
        out.push_str(&format!(
            "{:<16} {:<20} {:<8} {:<12} {:<16} {:<12} {:>5} {}\n",
            environment.name,
            environment.branch,
            if environment.is_default { "*" } else { "-" },
            short_revision(&environment.stable_revision),
            if environment.active_rollout_id.is_empty() {
                "-"
            } else {
                &environment.active_rollout_id
            },
            short_revision(&environment.pending_revision),
            environment.nodes,
            environment.pins.len()
        ));
        for pin in &environment.pins {
            out.push_str(&format!(
                "  pin {} on {} by {} at {}\n",
                selector_text(pin.selector.as_ref()),
                short_revision(&pin.revision),
                pin.created_by,
                time_text(pin.created_unix_ms)
            ));
        }
    }
    out
}

fn environments_json(environments: &[pb::EnvironmentStatus]) -> serde_json::Value {
    serde_json::Value::Array(
        environments
            .iter()
            .map(|environment| {
                serde_json::json!({
                    "name": environment.name,
                    "branch": environment.branch,
                    "default": environment.is_default,
                    "stable_revision": environment.stable_revision,
                    "active_rollout_id": environment.active_rollout_id,
                    "pending_revision": environment.pending_revision,
                    "nodes": environment.nodes,
                    "pins": environment.pins.iter().map(|pin| serde_json::json!({
                        "selector": pin.selector.as_ref().map(|s| s.tags.iter().collect::<BTreeMap<_, _>>()).unwrap_or_default(),
                        "revision": pin.revision,
                        "created_unix_ms": pin.created_unix_ms,
                        "created_by": pin.created_by,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    const STABLE: &str = "3f2a9c1e0b7d55aa00112233445566778899aabb";

    fn tags(pairs: &[(&str, &str)]) -> pb::Selector {
        pb::Selector {
            tags: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn environments() -> Vec<pb::EnvironmentStatus> {
        vec![
            pb::EnvironmentStatus {
                name: "production".to_owned(),
                branch: "main".to_owned(),
                is_default: true,
                stable_revision: STABLE.to_owned(),
                active_rollout_id: "r1764108000000".to_owned(),
                pending_revision: "8be04d2a91c3ffee00112233445566778899aabb".to_owned(),
                pins: vec![pb::Pin {
                    selector: Some(tags(&[("role", "api"), ("az", "a")])),
                    revision: STABLE.to_owned(),
                    created_unix_ms: 1_764_108_000_000,
                    created_by: "alice".to_owned(),
                }],
                nodes: 42,
            },
            pb::EnvironmentStatus {
                name: "staging".to_owned(),
                branch: "staging".to_owned(),
                is_default: false,
                stable_revision: String::new(),
                active_rollout_id: String::new(),
                pending_revision: String::new(),
                pins: Vec::new(),
                nodes: 0,
            },
        ]
    }

    #[test]
    fn environments_show_branch_default_revisions_rollout_nodes_and_each_pin() {
        let text = environments_text(&environments());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "production",
                "main",
                "*",
                "3f2a9c1e0b7d",
                "r1764108000000",
                "8be04d2a91c3",
                "42",
                "1"
            ]
        );
        assert_eq!(
            lines[2],
            "  pin az=a,role=api on 3f2a9c1e0b7d by alice at 2025-11-25 22:00:00 UTC"
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["staging", "staging", "-", "-", "-", "-", "0", "0"]
        );
    }

    #[test]
    fn environments_json_has_every_field() {
        let json = environments_json(&environments());
        assert_eq!(
            json[0],
            serde_json::json!({
                "name": "production", "branch": "main", "default": true,
                "stable_revision": STABLE, "active_rollout_id": "r1764108000000",
                "pending_revision": "8be04d2a91c3ffee00112233445566778899aabb", "nodes": 42,
                "pins": [{"selector": {"az": "a", "role": "api"}, "revision": STABLE,
                          "created_unix_ms": 1_764_108_000_000_i64, "created_by": "alice"}],
            })
        );
        assert_eq!(json[1]["pins"], serde_json::json!([]));
    }

    #[test]
    fn pin_and_unpin_name_the_nodes() {
        let pinned = pb::PinResponse {
            environment: "production".to_owned(),
            revision: STABLE.to_owned(),
            nodes: vec!["api-1".to_owned(), "api-2".to_owned()],
        };
        assert_eq!(
            pin_text("role=api", &pinned),
            "pinned role=api in production on 3f2a9c1e0b7d: 2 node(s): api-1, api-2\n"
        );
        assert_eq!(
            unpin_text("role=api", &pb::UnpinResponse { nodes: Vec::new() }),
            "unpinned role=api: no live node was held\n"
        );
    }

    fn parsed(line: &[&str]) -> Result<crate::cli::Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("cms-server").chain(line.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn pin_takes_a_selector_a_revision_and_an_environment() {
        let crate::cli::Command::Pin(args) = parsed(&[
            "pin",
            "--select",
            "role=api",
            "--revision",
            "abc123",
            "--env",
            "staging",
        ])
        .expect("parses") else {
            panic!("not pin")
        };
        let request = pin_request(&args).expect("valid");
        assert_eq!(request.environment, "staging");
        assert_eq!(request.revision, "abc123");
        assert_eq!(selector_text(request.selector.as_ref()), "role=api");
        assert!(
            parsed(&["pin", "--revision", "abc123"]).is_err(),
            "--select is required"
        );
    }

    #[test]
    fn pin_refuses_a_branch_name_or_an_empty_selector_before_asking_the_server() {
        let request = |line: &[&str]| {
            let crate::cli::Command::Pin(args) = parsed(line).expect("parses") else {
                panic!("not pin")
            };
            pin_request(&args).map_err(|e| e.to_string())
        };
        let error = request(&["pin", "--select", "role=api", "--revision", "main"]).unwrap_err();
        assert!(
            error.starts_with("--revision: `main` is not a commit id"),
            "{error}"
        );
        let error = request(&["pin", "--select", ""]).unwrap_err();
        assert!(error.starts_with("--select:"), "{error}");
        let crate::cli::Command::Unpin(args) =
            parsed(&["unpin", "--select", "role=api"]).expect("parses")
        else {
            panic!("not unpin")
        };
        let request = unpin_request(&args).expect("valid");
        assert_eq!(request.environment, "", "the default environment");
    }
}
