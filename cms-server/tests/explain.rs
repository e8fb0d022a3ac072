//! `cms-server explain --repo DIR --tags …` as a user runs it: the real
//! binary on a repository in a fresh temp folder, its output compared
//! whole.

use std::process::{Command, Output};

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

/// A web role matched by a glob, reading two values of which production
/// overrides one, and a db role.
fn web_and_db() -> tempfile::TempDir {
    write_repo(&[
        (
            "cms.toml",
            "[hierarchy]\nlayers = [\"env/{{tag.env}}\", \"common\"]\n",
        ),
        ("data/common.toml", "[web]\nport = 80\nworkers = 4\n"),
        ("data/env/prod.toml", "# production\n[web]\nport = 8080\n"),
        (
            "roles/web.toml",
            "[match]\nrole = \"web*\"\nenv = \"prod\"\n\n[[file]]\npath = \"/etc/web.conf\"\ntemplate = \"web.conf.hbs\"\n",
        ),
        (
            "templates/web.conf.hbs",
            "port={{data.web.port}}\nworkers={{data.web.workers}}\n",
        ),
        (
            "roles/db.toml",
            "[match]\nrole = \"db\"\n\n[[package]]\nname = \"postgresql\"\n",
        ),
    ])
}

fn explain(repo: &tempfile::TempDir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .arg("explain")
        .arg("--repo")
        .arg(repo.path())
        .args(args)
        .output()
        .expect("cms-server runs")
}

#[test]
fn explain_shows_each_match_entry_the_layers_and_where_each_value_comes_from() {
    let repo = web_and_db();
    let out = explain(&repo, &["--tags", "role=web-1,env=prod"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "\
node i-0123456789abcdef0 (env=prod, role=web-1)

roles, in the order they apply:
  web  roles/web.toml  [match] holds
      env = \"prod\"   matches tag.env = \"prod\"
      role = \"web*\"  matches tag.role = \"web-1\"

roles not matched:
  db  roles/db.toml  role = \"db\" does not match tag.role = \"web-1\"

data layers, most specific first:
  env/{{tag.env}}  env/prod  data/env/prod.toml
  common           common    data/common.toml

data values the roles read:
  data.web.port = 8080
      from data/env/prod.toml:3, overriding data/common.toml:2
  data.web.workers = 4
      from data/common.toml:3
"
    );
}

#[test]
fn explain_names_the_missing_tag_of_an_unmatched_role_and_the_skipped_layer() {
    let repo = web_and_db();
    let out = explain(&repo, &["--tags", "role=db"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("  web  roles/web.toml  env = \"prod\": the node has no tag env\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  env/{{tag.env}}  skipped  the node has no tag.env\n"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("data values the roles read:\n  none\n"),
        "{stdout}"
    );
}

#[test]
fn explain_of_a_node_no_role_matches_says_so_and_exits_1() {
    let repo = web_and_db();
    let out = explain(&repo, &["--tags", "role=cache,env=prod"]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr),
        "error: no role matches the node with tags env=prod, role=cache: it would get an empty catalog\n\
         hint: each role above says the first [match] entry that fails; fix the node's tags or a role's [match]\n"
    );
    assert!(
        text(&out.stdout).contains("roles, in the order they apply:\n  none\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn explain_as_json_gives_each_value_with_its_origin() {
    let repo = web_and_db();
    let out = explain(
        &repo,
        &["--tags", "role=web-1,env=prod", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        json["values"][0],
        serde_json::json!({
            "path": "data.web.port",
            "value": 8080,
            "from": "data/env/prod.toml:3",
            "overrides": ["data/common.toml:2"],
        })
    );
    assert_eq!(json["matched"][0]["entries"][1]["pattern"], "web*");
    assert_eq!(json["unmatched"][0]["name"], "db");
}
