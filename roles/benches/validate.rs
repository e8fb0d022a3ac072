//! Validation-time benchmark: what the server does to every commit (and
//! `cms-server check` to a folder) for repositories of 2,500, 10,000 and
//! 40,000 resources, in two shapes: one role file holding every resource,
//! and roles of 50 resources each (matched by their own `role` tag, all
//! including one base role). The time should grow linearly: each size is
//! four times the one before, so each time should be about four times too.
//!
//! Run with `cargo bench -p cms-roles --bench validate` (add
//! `--profile dev` for a debug build; the ratios are what matters).
//! Pass sizes as arguments to run others: `-- 2500 10000`.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use cms_roles::{RepoFiles, Repository, example_facts, validate};

const SIZES: &[usize] = &[2_500, 10_000, 40_000];
const PER_ROLE: usize = 50;

fn settings(files: &mut RepoFiles) {
    files.insert(
        "cms.toml",
        "[hierarchy]\nlayers = [\"role/{{tag.role}}\", \"common\"]\n",
    );
    files.insert("data/common.toml", "port = 8080\n");
    files.insert(
        "templates/app.conf.hbs",
        "name={{vars.name}}\nport={{data.port}}\n",
    );
}

/// Five resources of different kinds, numbered `n`, `n+1`, ….
fn resources(text: &mut String, prefix: &str, n: usize) {
    match n % 5 {
        0 => text.push_str(&format!("\n[[package]]\nname = \"pkg-{prefix}-{n}\"\n")),
        1 => text.push_str(&format!(
            "\n[[file]]\npath = \"/etc/{prefix}/f{n}.conf\"\ntemplate = \"app.conf.hbs\"\nvars = {{ name = \"app-{n}\" }}\nmode = \"0640\"\n"
        )),
        2 => text.push_str(&format!(
            "\n[[file]]\npath = \"/etc/{prefix}/s{n}.txt\"\ncontent = \"static {n}\\n\"\n"
        )),
        3 => text.push_str(&format!(
            "\n[[directory]]\npath = \"/var/lib/{prefix}/d{n}\"\nmode = \"0755\"\n"
        )),
        _ => text.push_str(&format!(
            "\n[[exec]]\nname = \"init-{prefix}-{n}\"\ncommand = \"/usr/bin/true\"\ncreates = \"/var/lib/{prefix}/d{}/.init\"\nrequire = [\"directory:/var/lib/{prefix}/d{}\"]\n",
            n - 1,
            n - 1
        )),
    }
}

/// One role file with every resource.
fn one_role(size: usize) -> RepoFiles {
    let mut files = RepoFiles::new();
    settings(&mut files);
    let mut text = String::from("description = \"everything\"\n");
    for n in 0..size {
        resources(&mut text, "big", n);
    }
    files.insert("roles/big.toml", text);
    files
}

/// Roles of 50 resources, each matched by its own `role` tag, all
/// including the base role.
fn many_roles(size: usize) -> RepoFiles {
    let mut files = RepoFiles::new();
    settings(&mut files);
    let mut base = String::from("description = \"base\"\n");
    for n in 0..PER_ROLE {
        resources(&mut base, "base", n);
    }
    files.insert("roles/base.toml", base);
    for r in 1..size / PER_ROLE {
        let mut text = format!("include = [\"base\"]\n[match]\nrole = \"r{r}\"\n");
        for n in 0..PER_ROLE {
            resources(&mut text, &format!("r{r}"), n);
        }
        files.insert(format!("roles/r{r:05}.toml"), text);
    }
    files
}

fn validate_once(files: RepoFiles) -> Duration {
    let start = Instant::now();
    let (repository, mut diagnostics) = Repository::load(files);
    diagnostics.extend(validate(&repository, &example_facts()));
    let elapsed = start.elapsed();
    assert!(
        diagnostics.is_empty(),
        "the benchmark repository is valid:\n{diagnostics}"
    );
    elapsed
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        SIZES.to_vec()
    } else {
        sizes
    };
    println!("validation (parse + compile every role for its nodes), one run each");
    for (shape, make) in [
        ("one role file", one_role as fn(usize) -> RepoFiles),
        ("roles of 50 resources", many_roles),
    ] {
        let mut previous: Option<Duration> = None;
        for &size in &sizes {
            let elapsed = validate_once(make(size));
            let ratio = previous
                .map(|p| {
                    format!(
                        "  (x{:.1} the previous size)",
                        elapsed.as_secs_f64() / p.as_secs_f64()
                    )
                })
                .unwrap_or_default();
            println!(
                "{shape:>22}: {size:>6} resources  {:9.1} ms{ratio}",
                elapsed.as_secs_f64() * 1000.0
            );
            previous = Some(elapsed);
        }
    }
}
