//! `cms-server diff` against a running server: a roles repository with two
//! commits and three enrolled nodes of two roles; the diff lists exactly
//! the nodes whose catalogs change, with the field that changed, and
//! refuses a revision that names no commit.

mod support;

use std::process::Command;

use cms_proto::v1 as pb;
use support::Server;

struct Upstream {
    dir: tempfile::TempDir,
}

impl Upstream {
    fn new() -> Upstream {
        let upstream = Upstream {
            dir: tempfile::tempdir().unwrap(),
        };
        upstream.git(&["init", "--quiet", "--initial-branch=main"]);
        upstream
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn commit(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--message", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    #[track_caller]
    fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args([
                "-c",
                "user.name=cms tests",
                "-c",
                "user.email=tests@cms.invalid",
            ])
            .args(["-c", "commit.gpgsign=false"])
            .args(args)
            .current_dir(self.dir.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("the git command line is installed");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }
}

fn web_role(port: u32) -> String {
    format!(
        "[match]\nrole = \"web\"\n[[file]]\npath = \"/etc/web.conf\"\ncontent = \"port={port}\\nworkers=4\\n\"\nmode = \"0644\"\n"
    )
}

const DB_ROLE: &str = "[match]\nrole = \"db\"\n[[package]]\nname = \"postgresql\"\n";

/// Runs the `cms-server diff` binary against `server` and returns its
/// exit status and standard output and error.
fn diff_cli(server: &Server, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .arg("diff")
        .args(args)
        .args(["--server", &server.address.to_string(), "--data"])
        .arg(&server.data)
        .output()
        .expect("cms-server runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_lists_exactly_the_nodes_whose_catalogs_change_between_two_commits() {
    let upstream = Upstream::new();
    upstream.write("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    upstream.write("roles/web.toml", &web_role(80));
    upstream.write("roles/db.toml", DB_ROLE);
    let first = upstream.commit("web on port 80");
    upstream.write("roles/web.toml", &web_role(8080));
    let second = upstream.commit("web on port 8080");

    let repo = upstream.dir.path().to_string_lossy().into_owned();
    let server = Server::start(move |config| {
        config.repo = repo;
        config.branch = "main".to_string();
    })
    .await;
    for (name, role) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")] {
        server.enroll(name, &[("role", role)]).await;
    }

    // The admin API: from the first commit (a prefix) to the one served.
    let mut admin = server.admin().await.unwrap();
    let diff = admin
        .diff(pb::DiffRequest {
            from: first[..8].to_string(),
            to: String::new(),
            selector: None,
            environment: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((diff.from.as_str(), diff.to.as_str()), (&*first, &*second));
    assert_eq!(diff.nodes, 3);
    // web and db at each revision: nodes of one kind share a compile.
    assert_eq!(diff.compiles, 4);
    let changed: Vec<&pb::DiffGroup> = diff
        .groups
        .iter()
        .filter(|g| g.changes_json != "[]")
        .collect();
    assert_eq!(changed.len(), 1, "{diff:?}");
    assert_eq!(changed[0].node_ids, ["web-1", "web-2"]);
    assert!(
        changed[0].changes_json.contains("file:/etc/web.conf"),
        "{diff:?}"
    );
    let unchanged: Vec<&String> = diff
        .groups
        .iter()
        .filter(|g| g.changes_json == "[]" && g.error.is_empty())
        .flat_map(|g| &g.node_ids)
        .collect();
    assert_eq!(unchanged, ["db-1"]);

    // The command: text grouped by change set, with the content's diff.
    let (code, out, err) = diff_cli(&server, &["--from", &first[..10]]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("2 nodes (role=web) change: web-1, web-2"),
        "{out}"
    );
    assert!(out.contains("file:/etc/web.conf changed"), "{out}");
    assert!(out.contains("-port=80"), "{out}");
    assert!(out.contains("+port=8080"), "{out}");
    assert!(out.contains("1 node (role=db) unchanged: db-1"), "{out}");

    // JSON, node by node, with a selector.
    let (code, out, err) = diff_cli(
        &server,
        &["--from", &first, "--select", "role=web", "--format", "json"],
    );
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes: Vec<(&str, &str)> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    assert_eq!(nodes, [("web-1", "changed"), ("web-2", "changed")]);

    // The same revision on both sides changes nothing, and exits 0.
    let (code, out, err) = diff_cli(&server, &["--from", &second]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("3 nodes unchanged"), "{out}");

    // A revision that names no commit is refused: exit 1.
    let (code, _, err) = diff_cli(&server, &["--from", "0000000"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`0000000`"), "{err}");
    let (code, _, err) = diff_cli(&server, &["--from", "main"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--from"), "{err}");
}

/// The attack: a secret rotated between two commits changes the catalogs
/// of the nodes that use it, and the diff says so without showing the old
/// value, the new one, or a hash of the content that holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_between_two_commits_shows_only_that_the_content_changed() {
    let upstream = Upstream::new();
    upstream.write("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    upstream.write("roles/web.toml", &web_role(80));
    upstream.write("roles/db.toml", DB_ROLE);
    upstream.commit("no secrets yet");
    let repo = upstream.dir.path().to_string_lossy().into_owned();
    let server = Server::start(move |config| {
        config.repo = repo;
        config.branch = "main".to_string();
    })
    .await;
    for (name, role) in [("web-1", "web"), ("db-1", "db")] {
        server.enroll(name, &[("role", role)]).await;
    }
    let identity = cms_server::secrets::identity::read_identity_file(
        &cms_server::secrets::identity::identity_path(&server.data),
    )
    .unwrap();
    let recipient = identity.to_public();
    let with_secret = |value: &[u8]| {
        let armored =
            cms_server::secrets::crypt::encrypt_armored(value, std::slice::from_ref(&recipient))
                .unwrap();
        upstream.write(
            "cms.toml",
            &format!(
                "[hierarchy]\nlayers = [\"common\"]\n[secrets]\nrecipients = [\"{recipient}\"]\n"
            ),
        );
        upstream.write(
            "secrets/common.toml",
            &format!("[db_password]\nage = '''\n{armored}'''\n"),
        );
        upstream.write(
            "templates/db.conf.hbs",
            "user=app\npassword={{secret \"db_password\"}}\n",
        );
        upstream.write(
            "roles/web.toml",
            &format!(
                "{}[[file]]\npath = \"/etc/db.conf\"\ntemplate = \"db.conf.hbs\"\n",
                web_role(80)
            ),
        );
    };
    with_secret(b"hunter2-before-rotation");
    let before = upstream.commit("the database password");
    with_secret(b"s3cret-after-rotation");
    let after = upstream.commit("the database password, rotated");
    let mut admin = server.admin().await.unwrap();
    let synced = admin.sync(pb::SyncRequest {}).await.unwrap().into_inner();
    assert!(synced.accepted, "{synced:?}");
    assert_eq!(synced.revision, after);

    let (code, text, err) = diff_cli(&server, &["--from", &before]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("1 node (role=web) change: web-1"), "{text}");
    assert!(text.contains("file:/etc/db.conf changed"), "{text}");
    assert!(text.contains("content changed (sensitive)"), "{text}");
    let (code, json, err) = diff_cli(&server, &["--from", &before, "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    for shown in [&text, &json] {
        for value in ["hunter2", "s3cret", "password="] {
            assert!(!shown.contains(value), "{value} shown: {shown}");
        }
        let longest_hex_run = shown
            .split(|c: char| !c.is_ascii_hexdigit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        // Commit ids (40) are shown; a sha256 (64) never is.
        assert!(longest_hex_run <= 40, "a content hash shown: {shown}");
    }
}
