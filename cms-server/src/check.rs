//! `cms-server check`: validate a roles repository, or show the catalog a
//! node would get. Data goes to stdout, problems to stderr.
//!
//! `check` has neither the server's age key nor its AWS credentials: it
//! compiles with a stand-in for every secret (`SecretValues::placeholders`),
//! and prints `<sensitive>` instead of the summary of a resource that used
//! one, so it never prints a value.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use cms_roles::{
    Catalog, Diagnostics, Node, Repository, Resource, SecretValues, compile_with_secrets,
    example_attested, example_facts, tags_text, unincluded_parameterized_roles, unmatchable_globs,
    validate_with_secrets, validation_tags,
};
use serde_json::Value;

use crate::cli::{CheckArgs, EXIT_INVALID, Format, parse_tags};

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let facts = match &args.facts {
        Some(path) => read_facts(path)?,
        None => example_facts(),
    };
    let tags = args.tags.as_deref().map(parse_tags).transpose()?;
    let (repository, parse_problems) = Repository::load_dir(&args.repo);
    let stand_ins = SecretValues::placeholders(&repository);
    let Some(tags) = tags else {
        let mut diagnostics = parse_problems;
        diagnostics.extend(validate_with_secrets(&repository, &facts, &stand_ins));
        let diagnostics = diagnostics.into_sorted();
        // What validation compiled, one tag combination a line.
        let compiled = validation_tags(&repository);
        let mut warnings = unmatchable_globs(&repository);
        warnings.extend(unincluded_parameterized_roles(&repository));
        for warning in warnings.iter() {
            eprintln!("warning: {warning}");
        }
        if !diagnostics.is_empty() {
            // Errors that depend on the node name its tags already.
            return Ok(invalid(&diagnostics, args));
        }
        if args.format == Format::Text {
            for tags in &compiled {
                println!("compiled for {}", tags_text(tags));
            }
        }
        let summary = serde_json::json!({
            "valid": true,
            "roles": repository.roles.keys().collect::<Vec<_>>(),
            "data_layers": repository.data.len(),
            "compiled": compiled,
            "warnings": warnings.0,
        });
        match args.format {
            Format::Json => println!("{summary:#}"),
            Format::Text => println!(
                "ok: {} roles valid ({})",
                repository.roles.len(),
                repository
                    .roles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        return Ok(ExitCode::SUCCESS);
    };
    let attested = match &args.attested {
        Some(path) => read_attested(path)?,
        None => example_attested(),
    };
    // The node id is the server's (`trusted.id`): what --node says, else
    // the attested instance id, as attested enrollment names nodes; never
    // a fact.
    let node = Node {
        id: args
            .node
            .clone()
            .or_else(|| attested.get("instance_id").cloned())
            .unwrap_or_else(|| "example".to_string()),
        tags,
        facts,
        attested,
    };
    if !parse_problems.is_empty() {
        return Ok(invalid(&parse_problems, args));
    }
    if args.facts.is_none() {
        eprintln!(
            "note: no --facts given; compiling with the example facts of a small Debian instance"
        );
    }
    if args.attested.is_none() {
        eprintln!(
            "note: no --attested given; compiling as an EC2 instance attested as {}",
            node.attested.get("instance_id").map_or("", String::as_str)
        );
    }
    // A catalog the server would refuse to send is invalid, as in validation.
    let compiled = compile_with_secrets(&repository, &node, &stand_ins).and_then(|catalog| {
        let too_large = cms_roles::check_catalog_size(&repository, &catalog);
        if too_large.is_empty() {
            Ok(catalog)
        } else {
            Err(too_large)
        }
    });
    match compiled {
        Ok(catalog) => {
            let mut out = std::io::stdout().lock();
            match args.format {
                Format::Json => {
                    serde_json::to_writer_pretty(&mut out, &catalog)?;
                    writeln!(out)?;
                }
                Format::Text => write_catalog_text(&mut out, &node, &catalog)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => Ok(invalid(&diagnostics, args)),
    }
}

/// Every problem on stderr, each with its source line and a caret, then
/// the count; with `--format json` the list on stdout too.
fn invalid(diagnostics: &Diagnostics, args: &CheckArgs) -> ExitCode {
    let format = args.format;
    eprint!(
        "{}",
        cms_roles::render_with_sources(diagnostics, &args.repo)
    );
    eprintln!(
        "error: Failed to check the repository: {} problem{}",
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
    if format == Format::Json {
        let json = serde_json::json!({ "valid": false, "errors": diagnostics.0 });
        println!("{json:#}");
    }
    ExitCode::from(EXIT_INVALID)
}

/// `role=api,env=prod` → tags.
pub(crate) fn read_facts(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read facts from {}", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("Failed to parse facts in {} as JSON", path.display()))?;
    match value {
        Value::Object(map) => Ok(map.into_iter().collect()),
        _ => bail!(
            "Failed to read facts from {}: expected a JSON object",
            path.display()
        ),
    }
}

/// `{"instance_id": "i-…", …}` → attested values; `{}` is a node enrolled
/// with a token.
pub(crate) fn read_attested(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read attested values from {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "Failed to parse attested values in {}: expected a JSON object of strings, e.g. {{\"instance_id\": \"i-0123456789abcdef0\"}}",
            path.display()
        )
    })
}

fn write_catalog_text(out: &mut impl Write, node: &Node, catalog: &Catalog) -> std::io::Result<()> {
    let tags: Vec<String> = node.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(out, "catalog {}", catalog.catalog_id)?;
    writeln!(out, "node    {} ({})", node.id, tags.join(", "))?;
    writeln!(out, "roles   {}", catalog.roles.join(", "))?;
    writeln!(out)?;
    for resource in &catalog.resources {
        writeln!(
            out,
            "{}  [{}]{}",
            resource.reference,
            resource.role,
            details(resource)
        )?;
        for required in &resource.require {
            writeln!(out, "    require {required}")?;
        }
        for notified in &resource.notify {
            writeln!(out, "    notify  {notified}")?;
        }
    }
    writeln!(out)?;
    let total: usize = catalog.contents.values().map(|c| c.0.len()).sum();
    writeln!(
        out,
        "{} resources, {} contents ({} bytes)",
        catalog.resources.len(),
        catalog.contents.len(),
        total
    )
}

/// A short summary of what a resource asks for; `<sensitive>` for one
/// that used a secret, whose fields and content hash could carry it.
fn details(resource: &Resource) -> String {
    if resource.sensitive {
        return " <sensitive>".to_string();
    }
    // Each kind writes its own summary (`Kind::summary` in cms-roles).
    resource.kind.summary()
}
