//! Parsing must be linear in the size of a role file: ten times the
//! resources, about ten times the time. This benchmark builds the role of a
//! typical migrated host (200 files rendered from one template with
//! per-file `vars`, 50 static files, 20 symlinks, 14 directories and
//! 5 packages: 289 resources in one file), the same role ten times over
//! (2,890 resources in one file), and an empty role (the fixed cost), then
//! times parsing the repository and compiling one catalog for each.
//!
//! Run with `cargo bench -p cms-roles --bench parse`. Prints the median and
//! the fastest of several runs, and the ratio of the ×10 role to the 289
//! resource one.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cms_roles::{Node, RepoFiles, Repository, compile, example_attested, example_facts};

const RUNS: usize = 21;
const PACKAGES: [&str; 5] = ["bash", "coreutils", "dpkg", "tar", "gzip"];

/// One copy of the role: 289 resources. Copy `c` names its paths apart
/// from the others'.
fn role_text(copies: usize) -> String {
    let mut role = String::from("description = \"bench\"\n[match]\nrole = \"bench\"\n\n");
    for c in 0..copies {
        let t = format!("/srv/bench/c{c}");
        for (p, package) in PACKAGES.iter().enumerate() {
            // The first copy names packages every Debian system has, so
            // that the written repository (below) applies without
            // installing anything.
            let name = match c {
                0 => package.to_string(),
                _ => format!("pkg-{c}-{p}"),
            };
            role.push_str(&format!("[[package]]\nname = \"{name}\"\n\n"));
        }
        for d in 0..14 {
            role.push_str(&format!(
                "[[directory]]\npath = \"{t}/d{d}\"\nmode = \"0755\"\n\n"
            ));
        }
        for f in 0..200 {
            role.push_str(&format!(
                "[[file]]\npath = \"{t}/d{}/app-{f}.conf\"\ntemplate = \"app.conf.hbs\"\nvars = {{ name = \"app-{f}\" }}\nmode = \"0640\"\n\n",
                f % 14
            ));
        }
        for f in 0..50 {
            role.push_str(&format!(
                "[[file]]\npath = \"{t}/d{}/static-{f}.txt\"\nsource = \"static.txt\"\nmode = \"0644\"\n\n",
                f % 14
            ));
        }
        for l in 0..20 {
            role.push_str(&format!(
                "[[symlink]]\npath = \"{t}/d{}/link-{l}\"\ntarget = \"app-{l}.conf\"\n\n",
                l % 14
            ));
        }
    }
    role
}

fn repository(copies: usize) -> RepoFiles {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert(
        "data/common.toml",
        "port = 8080\n[db]\nhost = \"db.internal\"\npool = 10\n",
    );
    files.insert(
        "templates/app.conf.hbs",
        "# Managed by cms\nname={{vars.name}}\nhost={{fact.hostname}}\nport={{data.port}}\ndb={{data.db.host}}:{{data.db.pool}}\nheap=-Xmx{{memory_percent 50}}\n",
    );
    files.insert("files/static.txt", "static line of text\n".repeat(20));
    files.insert("roles/bench.toml", role_text(copies));
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

struct Measured {
    resources: usize,
    bytes: usize,
    parse: Duration,
    compile: Duration,
}

fn measure(copies: usize) -> Measured {
    let files = repository(copies);
    let bytes = role_text(copies).len();
    let (parse_times, repository) =
        time(|| Repository::parse(files.clone()).expect("the benchmark repository is valid"));
    let node = Node {
        id: "i-bench".to_string(),
        tags: BTreeMap::from([("role".to_string(), "bench".to_string())]),
        facts: example_facts(),
        attested: example_attested(),
    };
    let (compile_times, catalog) =
        time(|| compile(&repository, &node).expect("the benchmark repository compiles"));
    let resources = catalog.resources.len();
    assert_eq!(resources, 289 * copies, "every resource is in the catalog");
    println!(
        "{resources:>5} resources ({:>4} KiB role file): parse median {:8.2} ms  min {:8.2} ms   compile median {:8.2} ms  min {:8.2} ms",
        bytes / 1024,
        ms(parse_times[RUNS / 2]),
        ms(parse_times[0]),
        ms(compile_times[RUNS / 2]),
        ms(compile_times[0]),
    );
    Measured {
        resources,
        bytes,
        parse: parse_times[RUNS / 2],
        compile: compile_times[RUNS / 2],
    }
}

/// `--write DIR [COPIES]`: writes the repository to DIR instead of timing
/// it, to time `cms-agent apply --repo DIR --root …` on it.
fn write_repository(dir: &std::path::Path, copies: usize) {
    let files = repository(copies);
    for (path, entry) in files.under("") {
        let cms_roles::Entry::File(bytes) = entry else {
            continue;
        };
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--write") {
        let dir = args.get(at + 1).expect("--write DIR [COPIES]");
        let copies = args.get(at + 2).map_or(1, |c| c.parse().expect("COPIES"));
        write_repository(std::path::Path::new(dir), copies);
        return;
    }
    println!(
        "{RUNS} runs each; role: 200 template files with vars, 50 static files, 20 symlinks, 14 directories, 5 packages per copy"
    );
    let empty = {
        let mut files = repository(0);
        files.insert("roles/bench.toml", "[match]\nrole = \"bench\"\n");
        let (parse_times, repository) = time(|| Repository::parse(files.clone()).expect("valid"));
        let node = Node {
            id: "i-bench".to_string(),
            tags: BTreeMap::from([("role".to_string(), "bench".to_string())]),
            facts: example_facts(),
            attested: example_attested(),
        };
        let (compile_times, _) = time(|| compile(&repository, &node).expect("compiles"));
        (parse_times[RUNS / 2], compile_times[RUNS / 2])
    };
    println!(
        "    0 resources (empty role):            parse median {:8.2} ms                       compile median {:8.2} ms",
        ms(empty.0),
        ms(empty.1)
    );
    let one = measure(1);
    let ten = measure(10);
    println!(
        "×{:.1} input ({} → {} resources, {} → {} bytes): parse ×{:.1}, compile ×{:.1}",
        ten.bytes as f64 / one.bytes as f64,
        one.resources,
        ten.resources,
        one.bytes,
        ten.bytes,
        ten.parse.as_secs_f64() / one.parse.as_secs_f64(),
        ten.compile.as_secs_f64() / one.compile.as_secs_f64(),
    );
}
