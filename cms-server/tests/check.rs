//! `cms-server check` as a user runs it: the real binary, on the example
//! repository and on broken repositories in fresh temp folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../roles/examples/roles-repo")
}

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .arg("check")
        .args(args)
        .output()
        .expect("cms-server runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `(path, text)` pairs into a fresh folder.
fn write_repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }
    dir
}

#[test]
fn the_example_repository_is_valid() {
    let out = check(&["--repo", example_repo().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "compiled for env=prod, role=api\n\
         compiled for env=staging, role=api\n\
         compiled for no tags\n\
         compiled for never=matched-directly\n\
         compiled for env=prod, role=web\n\
         compiled for env=staging, role=web\n\
         ok: 5 roles valid (api, base, java, java_service, web)\n"
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn a_match_glob_no_known_value_matches_is_a_warning_not_an_error() {
    let repo = write_repo(&[
        (
            "cms.toml",
            "[hierarchy]\nlayers = [\"env/{{tag.env}}\", \"common\"]\n",
        ),
        ("data/env/prod.toml", "x = 1\n"),
        ("data/env/staging.toml", "x = 2\n"),
        ("roles/web.toml", "[match]\nenv = \"prd*\"\n"),
    ]);
    let out = check(&["--repo", repo.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "compiled for env=prdexample\nok: 1 roles valid (web)\n"
    );
    assert_eq!(
        text(&out.stderr),
        "warning: roles/web.toml:2:7: [match] env = \"prd*\" matches no value of tag env this repository knows (known: prod, staging; from layer names under data/ and secrets/, secret scopes and [match] values), so it is compiled for env=prdexample; check its spelling, or add a data/ layer file for the value it should match\n"
    );
}

#[test]
fn with_tags_it_prints_the_catalog_of_such_a_node() {
    let repo = example_repo();
    let out = check(&[
        "--repo",
        repo.to_str().expect("utf-8"),
        "--tags",
        "role=api,env=prod",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("roles   base, java, java_service, api"),
        "{stdout}"
    );
    assert!(
        stdout.contains("java_app:orders  [java_service]"),
        "{stdout}"
    );

    let out = check(&[
        "--repo",
        repo.to_str().expect("utf-8"),
        "--tags",
        "role=api,env=prod",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let catalog: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(
        catalog["roles"],
        serde_json::json!(["base", "java", "java_service", "api"])
    );
    assert_eq!(catalog["catalog_id"].as_str().map(str::len), Some(64));
}

#[test]
fn facts_from_a_file_reach_the_templates() {
    let repo = write_repo(&[
        ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
        ("templates/t.hbs", "cpus={{fact.cpus}}"),
        (
            "roles/r.toml",
            "[[file]]\npath = \"/t\"\ntemplate = \"t.hbs\"\n",
        ),
        ("facts.json", "{\"cpus\": 64}"),
    ]);
    let root = repo.path().to_str().expect("utf-8");
    let facts = repo.path().join("facts.json");
    let out = check(&[
        "--repo",
        root,
        "--tags",
        "",
        "--facts",
        facts.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let catalog: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let content = catalog["contents"]
        .as_object()
        .expect("contents")
        .values()
        .next()
        .expect("one");
    assert_eq!(content, "Y3B1cz02NA=="); // base64 of "cpus=64"
}

#[test]
fn a_broken_repository_fails_with_every_error_on_stderr() {
    let repo = write_repo(&[
        ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
        (
            "roles/a.toml",
            "[[file]]\npath = \"/x\"\ncontent = \"x\"\nowner = \"root\"\nmdoe = \"0644\"\n",
        ),
        (
            "roles/b.toml",
            "[[service]]\nname = \"nginx\"\nrequire = [\"package:nginx\"]\n",
        ),
        (
            "roles/c.toml",
            "[[package]]\nname = \"x\"\nensure = \"sometimes\"\n",
        ),
        ("templates/t.hbs", "{{#each x}}unclosed\n"),
    ]);
    let out = check(&["--repo", repo.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    for expected in [
        "error: roles/a.toml:5:1: unknown field `mdoe`",
        // Each problem is followed by its line and a caret under the column.
        "\n  |\n5 | mdoe = \"0644\"\n  | ^\n",
        "\n  |\n3 | ensure = \"sometimes\"\n  |          ^\n",
        "error: roles/b.toml:3:1: require `package:nginx` refers to no resource",
        "error: roles/c.toml:3:10: invalid package ensure `sometimes`",
        "error: templates/t.hbs:",
        "error: Failed to check the repository: 4 problems",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn a_role_file_with_a_name_that_is_not_utf8_is_an_error_naming_it() {
    use std::os::unix::ffi::OsStrExt;
    let repo = write_repo(&[
        ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
        ("roles/base.toml", "[[package]]\nname = \"curl\"\n"),
    ]);
    std::fs::write(
        repo.path()
            .join(std::ffi::OsStr::from_bytes(b"roles/caf\xe9.toml")),
        "[[package]]\nname = \"vim\"\n",
    )
    .expect("write a Latin-1 file name");
    let out = check(&["--repo", repo.path().to_str().expect("utf-8")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: roles/caf\u{FFFD}.toml: the name is not valid UTF-8"),
        "{stderr}"
    );
}

#[test]
fn a_template_nested_1500_deep_is_refused_with_the_limit() {
    let nested = format!(
        "{}deep{}",
        "{{#if fact.hostname}}\n".repeat(1500),
        "{{/if}}\n".repeat(1500)
    );
    let repo = write_repo(&[
        ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
        (
            "roles/base.toml",
            "[[file]]\npath = \"/etc/deep\"\ntemplate = \"deep.hbs\"\n",
        ),
        ("templates/deep.hbs", &nested),
    ]);
    let out = check(&["--repo", repo.path().to_str().expect("utf-8")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: templates/deep.hbs:65:1: blocks nested 65 deep; the limit is 64"),
        "{stderr}"
    );
}

#[test]
fn malformed_tags_and_missing_repositories_are_explained() {
    let out = check(&["--repo", "/nonexistent/roles", "--tags", "role"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("`role` is not name=value"),
        "{}",
        text(&out.stderr)
    );

    let out = check(&["--repo", "/nonexistent/roles"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Failed to read roles repository at /nonexistent/roles"),
        "{}",
        text(&out.stderr)
    );
}

/// An armored age file (check reads only its armor).
const AGE: &str = "-----BEGIN AGE ENCRYPTED FILE-----
YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBhYmNkZWZnaGlqa2xtbm9w
cXJzdHV2d3h5ego=
-----END AGE ENCRYPTED FILE-----
";

fn secrets_repo(scope: &str) -> tempfile::TempDir {
    let secrets = format!(
        "[db_password]\nage = \"\"\"\n{AGE}\"\"\"\n{scope}\n[api]\nfrom = \"ssm:/prod/api\"\n"
    );
    write_repo(&[
        (
            "cms.toml",
            "[hierarchy]\nlayers = [\"env/{{tag.env}}\", \"common\"]\n",
        ),
        ("secrets/common.toml", &secrets),
        ("data/env/staging.toml", "port = 1\n"),
        (
            "templates/db.hbs",
            "user=app\npassword={{secret \"db_password\"}}\n",
        ),
        (
            "roles/db.toml",
            "[match]\nenv = \"*\"\n\n[[file]]\npath = \"/etc/db\"\ntemplate = \"db.hbs\"\nmode = \"0600\"\n\n[[exec]]\nname = \"login\"\ncommand = '/bin/login --key {{secret \"api\"}}'\n\n[[file]]\npath = \"/etc/plain\"\ncontent = \"plain\"\nmode = \"0644\"\n",
        ),
    ])
}

#[test]
fn check_compiles_secrets_with_stand_ins_and_prints_sensitive_resources_as_sensitive() {
    let repo = secrets_repo("");
    let path = repo.path().to_str().expect("utf-8");
    let out = check(&["--repo", path]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));

    let out = check(&["--repo", path, "--tags", "env=prod"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("file:/etc/db  [db] <sensitive>\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("exec:login  [db] <sensitive>\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("file:/etc/plain  [db] ensure=present mode=0644 sha256="),
        "{stdout}"
    );
    assert!(!stdout.contains("placeholder"), "{stdout}");
    assert!(!stdout.contains("mode=0600"), "{stdout}");

    let out = check(&["--repo", path, "--tags", "env=prod", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let catalog: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let flags: Vec<(&str, bool)> = catalog["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            (
                r["reference"].as_str().expect("reference"),
                r["sensitive"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("file:/etc/db", true),
            ("exec:login", true),
            ("file:/etc/plain", false)
        ]
    );
}

#[test]
fn check_refuses_a_role_rendering_a_secret_outside_its_scope_with_file_and_line() {
    let repo = secrets_repo("scope = { env = \"prod\" }");
    let out = check(&["--repo", repo.path().to_str().expect("utf-8")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("templates/db.hbs:2:10: Failed to render: secret `db_password` (secrets/common.toml:1) is scoped to env=prod; this role is compiled for env=staging"),
        "{stderr}"
    );
}
