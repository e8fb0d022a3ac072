//! `cms-server diff` over 10,000 nodes of 20 kinds (20 roles, one tag set
//! each): the time to compile both revisions and compare them
//! (`fleet_diff::diff_fleet`), and how many compiles that took. The second
//! revision changes the content of 5 of the roles' templates and the mode
//! of one file, and adds a package to one role.
//!
//! Each node has a hostname and 20 facts no template reads, so nodes of a
//! kind share a compile key. Run with
//! `cargo bench -p cms-server --bench fleet_diff` (or, for debug numbers,
//! `cargo test -p cms-server --bench fleet_diff`).

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cms_roles::{Node, RepoFiles, Repository};
use cms_server::fleet_diff::{DiffSide, diff_fleet, render};

const NODES: usize = 10_000;
const KINDS: usize = 20;

/// A repository of `KINDS` roles, each with 10 files rendered from
/// templates and 5 packages; `changed` rewrites some of them.
fn repository(changed: bool) -> Arc<Repository> {
    let mut files = RepoFiles::new();
    files.insert(
        "cms.toml",
        "[hierarchy]\nlayers = [\"role/{{tag.role}}\", \"common\"]\n",
    );
    files.insert("data/common.toml", "workers = 4\nport = 80\n");
    for kind in 0..KINDS {
        let port = if changed && kind % 4 == 0 {
            8000 + kind
        } else {
            80
        };
        files.insert(
            format!("data/role/r{kind:02}.toml").as_str(),
            format!("port = {port}\n").as_str(),
        );
        let mut role = format!("[match]\nrole = \"r{kind:02}\"\n");
        for package in 0..5 {
            role.push_str(&format!("[[package]]\nname = \"pkg-{kind}-{package}\"\n"));
        }
        if changed && kind == 1 {
            role.push_str("[[package]]\nname = \"added-in-the-new-revision\"\n");
        }
        for file in 0..10 {
            let mode = if changed && kind == 2 && file == 0 {
                "0600"
            } else {
                "0644"
            };
            role.push_str(&format!(
                "[[file]]\npath = \"/etc/r{kind:02}/f{file}.conf\"\ntemplate = \"app.hbs\"\nmode = \"{mode}\"\nvars = {{ n = {file} }}\n"
            ));
        }
        files.insert(format!("roles/r{kind:02}.toml").as_str(), role.as_str());
    }
    let mut template =
        "# {{tag.role}} file {{vars.n}}\nlisten {{data.port}}\nworkers {{data.workers}}\n"
            .to_string();
    for line in 0..30 {
        template.push_str(&format!("setting_{line} = {line}\n"));
    }
    files.insert("templates/app.hbs", template.as_str());
    Arc::new(Repository::parse(files).unwrap_or_else(|d| panic!("{d}")))
}

fn nodes() -> Vec<Node> {
    (0..NODES)
        .map(|i| {
            let mut facts = BTreeMap::new();
            facts.insert(
                "hostname".to_string(),
                serde_json::json!(format!("ip-10-0-{i}")),
            );
            for n in 0..20 {
                facts.insert(
                    format!("fact_{n}"),
                    serde_json::json!(format!("{n} of {i}")),
                );
            }
            Node {
                id: format!("node-{i:05}"),
                tags: BTreeMap::from([("role".to_string(), format!("r{:02}", i % KINDS))]),
                facts,
                attested: BTreeMap::new(),
            }
        })
        .collect()
}

fn main() {
    let side = |commit: &str, changed: bool| DiffSide {
        commit: commit.to_string(),
        repository: repository(changed),
        secrets: Arc::default(),
        generation: 0,
    };
    let (from, to) = (side("aaaaaaaa", false), side("bbbbbbbb", true));
    let nodes = nodes();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    let reads = cms_roles::NodeReads::of(&from.repository);
    for node in &nodes {
        std::hint::black_box(cms_server::catalogs::CatalogKey::of(
            &from.commit,
            &from.repository,
            node,
            &reads,
            0,
        ));
    }
    println!(
        "fleet_diff: compile keys of {NODES} nodes at one revision: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let started = Instant::now();
    for node in nodes.iter().take(KINDS) {
        std::hint::black_box(cms_roles::compile(&to.repository, node).expect("compiles"));
    }
    println!(
        "fleet_diff: {KINDS} compiles one after another: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    for run in 0..3 {
        let started = Instant::now();
        let diff = diff_fleet(&from, &to, &nodes, threads);
        let took = started.elapsed();
        let rendered = Instant::now();
        let text = render(&diff);
        let render_took = rendered.elapsed();
        let changed: usize = diff
            .groups
            .iter()
            .filter(|g| !g.changes.is_empty())
            .map(|g| g.node_ids.len())
            .sum();
        println!(
            "fleet_diff run {run}: {} nodes of {KINDS} kinds, {threads} threads: {} compiles, {} groups, {changed} nodes change; diff {:.1} ms, render {:.1} ms ({} lines)",
            diff.nodes,
            diff.compiles,
            diff.groups.len(),
            took.as_secs_f64() * 1000.0,
            render_took.as_secs_f64() * 1000.0,
            text.lines().count()
        );
        assert_eq!(diff.compiles, 2 * KINDS);
    }
}
