//! Compile-time benchmark: a repository of 100 roles and 5,000 resources,
//! compiled for one node that gets all of them.
//!
//! Run with `cargo bench -p cms-roles --bench compile`. Prints the median
//! and worst of several runs for parsing the repository and for compiling
//! one catalog; the target is well under 100 ms for the compile.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cms_roles::{Node, RepoFiles, Repository, compile, example_attested, example_facts};

const ROLES: usize = 100;
const RESOURCES_PER_ROLE: usize = 50;
const RUNS: usize = 15;

/// Each role: 10 packages, 20 files (half rendered from a template with
/// vars, half literal), 10 directories, 5 services notified by files,
/// 5 execs. Roles 1..99 include role 0 and match on tags with globs.
fn repository() -> RepoFiles {
    let mut files = RepoFiles::new();
    files.insert(
        "cms.toml",
        "[hierarchy]\nlayers = [\"node/{{trusted.instance_id}}\", \"env/{{tag.env}}\", \"role/{{tag.role}}\", \"common\"]\n",
    );
    files.insert(
        "data/common.toml",
        "port = 8080\n[db]\nhost = \"db.common\"\npool = 10\n",
    );
    files.insert("data/env/prod.toml", "[db]\nhost = \"db.prod\"\n");
    files.insert(
        "templates/app.conf.hbs",
        "# Managed by cms\nname={{vars.name}}\nport={{data.port}}\ndb={{data.db.host}}:{{data.db.pool}}\nheap=-Xmx{{memory_percent 50}}\n{{#if (tag_is \"env\" \"prod\")}}mode=prod{{/if}}\n",
    );
    for r in 0..ROLES {
        let mut text = String::new();
        if r == 0 {
            text.push_str("description = \"base\"\n");
        } else {
            text.push_str(&format!("description = \"role {r}\"\ninclude = [\"role000\"]\n[match]\nenv = \"pr*\"\nrole = \"*\"\n"));
        }
        for p in 0..10 {
            text.push_str(&format!("\n[[package]]\nname = \"pkg-{r}-{p}\"\n"));
        }
        for s in 0..5 {
            text.push_str(&format!("\n[[service]]\nname = \"svc-{r}-{s}\"\nensure = \"running\"\nenable = true\nrequire = [\"package:pkg-{r}-{s}\"]\n"));
        }
        for f in 0..20 {
            if f % 2 == 0 {
                text.push_str(&format!(
                    "\n[[file]]\npath = \"/etc/app-{r}/conf-{f}.conf\"\ntemplate = \"app.conf.hbs\"\nvars = {{ name = \"app-{r}-{f}\" }}\nmode = \"0640\"\nowner = \"root\"\nnotify = [\"service:svc-{r}-{}\"]\n",
                    f % 5
                ));
            } else {
                text.push_str(&format!(
                    "\n[[file]]\npath = \"/etc/app-{r}/static-{f}.txt\"\ncontent = \"static content {r} {f}\\n\"\nmode = \"0644\"\n"
                ));
            }
        }
        for d in 0..10 {
            text.push_str(&format!(
                "\n[[directory]]\npath = \"/var/lib/app-{r}/d{d}\"\nmode = \"0755\"\n"
            ));
        }
        for e in 0..5 {
            text.push_str(&format!(
                "\n[[exec]]\nname = \"init-{r}-{e}\"\ncommand = \"/usr/bin/true\"\ncreates = \"/var/lib/app-{r}/d{e}/.init\"\nrequire = [\"directory:/var/lib/app-{r}/d{e}\"]\n"
            ));
        }
        files.insert(format!("roles/role{r:03}.toml"), text);
    }
    files
}

fn time<T>(mut f: impl FnMut() -> T) -> (Vec<Duration>, T) {
    let mut times = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    (times, last.expect("at least one run"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let files = repository();
    let (parse_times, repository) =
        time(|| Repository::parse(files.clone()).expect("the benchmark repository is valid"));
    let node = Node {
        id: "i-bench".to_string(),
        tags: BTreeMap::from([
            ("env".to_string(), "prod".to_string()),
            ("role".to_string(), "api".to_string()),
        ]),
        facts: example_facts(),
        attested: example_attested(),
    };
    let (compile_times, catalog) =
        time(|| compile(&repository, &node).expect("the benchmark repository compiles"));
    assert_eq!(catalog.roles.len(), ROLES);
    assert_eq!(catalog.resources.len(), ROLES * RESOURCES_PER_ROLE);
    println!(
        "repository: {ROLES} roles, {} resources, {} contents; {RUNS} runs each",
        catalog.resources.len(),
        catalog.contents.len()
    );
    println!(
        "parse repository:      median {:7.2} ms   max {:7.2} ms",
        ms(parse_times[RUNS / 2]),
        ms(parse_times[RUNS - 1])
    );
    println!(
        "compile one catalog:   median {:7.2} ms   max {:7.2} ms",
        ms(compile_times[RUNS / 2]),
        ms(compile_times[RUNS - 1])
    );
}
