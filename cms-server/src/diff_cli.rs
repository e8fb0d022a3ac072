//! `cms-server diff`: asks the server (admin API `Diff`) which nodes'
//! catalogs change between two revisions, and prints the groups of nodes
//! with identical change sets (`fleet_diff::render`), or the whole diff as
//! JSON.
//!
//! Exit status: 0 the diff ran, changes or not; 1 a revision, flag or
//! environment is invalid (refused here, or `InvalidArgument` or `NotFound`
//! from the server); 3 the diff could not run.

use std::process::ExitCode;

use cms_proto::v1 as pb;

use crate::admin::status_error;
use crate::cli::{DiffArgs, EXIT_INVALID, Format, parse_tags};
use crate::resolve::AdminTarget;

/// The request the flags ask for, or what is wrong with them.
fn validated_request(args: &DiffArgs) -> anyhow::Result<pb::DiffRequest> {
    let selector = parse_tags(args.select.as_deref().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("--select: {e}"))?;
    for (flag, revision) in [("--from", Some(&args.from)), ("--to", args.to.as_ref())] {
        if let Some(revision) = revision {
            anyhow::ensure!(
                crate::git_sync::is_commit_prefix(revision),
                "{flag}: `{revision}` is not a commit id: give a commit id or a prefix of at least 4 hex digits"
            );
        }
    }
    Ok(pb::DiffRequest {
        from: args.from.clone(),
        to: args.to.clone().unwrap_or_default(),
        selector: Some(pb::Selector {
            tags: selector.into_iter().collect(),
        }),
        environment: args.environment.clone().unwrap_or_default(),
    })
}

pub async fn run(args: DiffArgs, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let request = match validated_request(&args) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let mut client = crate::admin::connect_as(admin).await?;
    let response = match client.diff(request).await {
        Ok(response) => response.into_inner(),
        // A diff that cannot run (no revision served, unreadable secrets)
        // is `FailedPrecondition`: exit 3, not a bad request.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ) =>
        {
            eprintln!("error: {}", status.message());
            return Ok(ExitCode::from(EXIT_INVALID));
        }
        Err(status) => return Err(status_error(status)),
    };
    let diff = crate::fleet_diff::from_proto(response)?;
    match admin.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&crate::fleet_diff::per_node_json(&diff))
                .expect("a diff serializes")
        ),
        Format::Text => print!("{}", crate::fleet_diff::render(&diff)),
    }
    Ok(ExitCode::SUCCESS)
}
