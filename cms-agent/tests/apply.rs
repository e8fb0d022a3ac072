//! `cms-agent apply` as a user runs it: the real binary, a roles repository
//! and a target root in fresh temporary folders.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Fixture {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    root: PathBuf,
}

const ROLE: &str = r#"
[[directory]]
path = "/etc/app"
mode = "0755"

[[file]]
path = "/etc/app/app.conf"
template = "app.conf.hbs"
mode = "0640"
require = ["directory:/etc/app"]

[[file]]
path = "/etc/app/static.txt"
content = "static\n"

[[symlink]]
path = "/etc/app/current.conf"
target = "app.conf"

[[package]]
name = "not-applied-under-a-root"
"#;

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let root = dir.path().join("root");
        for (path, text) in [
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("data/common.toml", "port = 8080\n"),
            (
                "templates/app.conf.hbs",
                "role={{tag.role}}\nport={{data.port}}\n",
            ),
            ("roles/app.toml", ROLE),
        ] {
            let path = repo.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        Fixture {
            _dir: dir,
            repo,
            root,
        }
    }

    fn agent(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cms-agent"))
            .args(args)
            .arg("--root")
            .arg(&self.root)
            .env("NO_COLOR", "1")
            .output()
            .expect("cms-agent runs")
    }

    fn apply(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "apply",
            "--repo",
            self.repo.to_str().expect("utf-8"),
            "--tags",
            "role=api",
        ];
        args.extend_from_slice(extra);
        self.agent(&args)
    }

    fn file(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn apply_converges_then_changes_nothing_then_repairs_drift() {
    let fixture = Fixture::new();
    let first = fixture.apply(&[]);
    assert_eq!(
        first.status.code(),
        Some(2),
        "{}{}",
        stdout(&first),
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        read(&fixture.file("/etc/app/app.conf")),
        "role=api\nport=8080\n"
    );
    assert_eq!(
        std::fs::read_link(fixture.file("/etc/app/current.conf")).expect("link"),
        Path::new("app.conf")
    );
    assert!(
        stdout(&first).contains("skipped package:not-applied-under-a-root"),
        "{}",
        stdout(&first)
    );

    let second = fixture.apply(&[]);
    assert_eq!(second.status.code(), Some(0), "{}", stdout(&second));
    assert!(stdout(&second).contains("0 changed"), "{}", stdout(&second));

    std::fs::write(fixture.file("/etc/app/app.conf"), "edited by hand\n").expect("edit");
    std::fs::remove_file(fixture.file("/etc/app/static.txt")).expect("delete");
    let repair = fixture.apply(&[]);
    assert_eq!(repair.status.code(), Some(2));
    let text = stdout(&repair);
    assert!(text.contains("changed file:/etc/app/app.conf"), "{text}");
    assert!(
        text.contains("-edited by hand") && text.contains("+role=api"),
        "{text}"
    );
    assert_eq!(
        read(&fixture.file("/etc/app/app.conf")),
        "role=api\nport=8080\n"
    );
    assert_eq!(read(&fixture.file("/etc/app/static.txt")), "static\n");
}

#[test]
fn noop_shows_the_diff_and_changes_nothing() {
    let fixture = Fixture::new();
    assert_eq!(fixture.apply(&[]).status.code(), Some(2));
    std::fs::write(fixture.file("/etc/app/app.conf"), "edited by hand\n").expect("edit");
    let noop = fixture.apply(&["--noop"]);
    assert_eq!(noop.status.code(), Some(2));
    let text = stdout(&noop);
    assert!(
        text.contains("would change file:/etc/app/app.conf"),
        "{text}"
    );
    assert!(
        text.contains("--- /etc/app/app.conf") && text.contains("+port=8080"),
        "{text}"
    );
    assert!(text.contains("(nothing was changed)"), "{text}");
    assert_eq!(read(&fixture.file("/etc/app/app.conf")), "edited by hand\n");
}

#[test]
fn json_output_is_the_run_report() {
    let fixture = Fixture::new();
    let output = fixture.apply(&["--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["summary"]["changed"], 4);
    assert_eq!(report["summary"]["skipped"], 1);
    assert_eq!(report["resources"][0]["reference"], "directory:/etc/app");
    assert_eq!(report["resources"][0]["status"], "changed");
}

#[test]
fn restore_puts_back_what_a_run_replaced() {
    let fixture = Fixture::new();
    assert_eq!(fixture.apply(&[]).status.code(), Some(2));
    std::fs::write(fixture.file("/etc/app/app.conf"), "hand-tuned\n").expect("edit");
    assert_eq!(fixture.apply(&[]).status.code(), Some(2));
    assert_eq!(
        read(&fixture.file("/etc/app/app.conf")),
        "role=api\nport=8080\n"
    );

    let listed = fixture.agent(&["restore", "/etc/app/app.conf", "--list"]);
    let table = stdout(&listed);
    assert!(table.starts_with("TIME"), "{table}");
    let hand_tuned_sha256: String = sha2::Sha256::digest(b"hand-tuned\n")
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert!(table.contains(&hand_tuned_sha256), "{table}");
    let listed = fixture.agent(&["restore", "/etc/app/app.conf", "--list", "--format", "json"]);
    let backups: serde_json::Value = serde_json::from_str(&stdout(&listed)).expect("JSON");
    let backups = backups.as_array().expect("a list of backups");
    assert!(
        backups
            .iter()
            .any(|backup| backup["sha256"] == hand_tuned_sha256.as_str()
                && backup["path"] == "/etc/app/app.conf"
                && backup["size"] == 11),
        "{backups:?}"
    );
    let restored = fixture.agent(&["restore", "/etc/app/app.conf"]);
    assert_eq!(
        restored.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(read(&fixture.file("/etc/app/app.conf")), "hand-tuned\n");
}

#[test]
fn a_broken_repository_stops_the_run_before_anything_changes() {
    let fixture = Fixture::new();
    std::fs::write(
        fixture.repo.join("roles/app.toml"),
        format!("{ROLE}\n[[file]]\npath = \"/x\"\ncontnet = \"typo\"\n"),
    )
    .expect("write");
    let output = fixture.apply(&[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("roles/app.toml:25:1: unknown field `contnet`"),
        "{stderr}"
    );
    // The line itself, with a caret under the column, as rustc shows it.
    assert!(
        stderr.contains("\n   |\n25 | contnet = \"typo\"\n   | ^\n"),
        "{stderr}"
    );
    assert!(!fixture.file("/etc/app").exists());
}

#[test]
fn a_missing_parent_directory_fails_that_file_only_and_says_which() {
    let fixture = Fixture::new();
    std::fs::remove_dir(fixture.root.join("etc")).expect("rmdir");
    let output = fixture.apply(&[]);
    assert_eq!(output.status.code(), Some(4));
    let text = stdout(&output);
    assert!(text.contains("failed directory:/etc/app"), "{text}");
    assert!(text.contains("skipped file:/etc/app/app.conf"), "{text}");
}

#[test]
fn a_second_run_says_who_holds_the_lock_and_waits_for_it() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let fixture = Fixture::new();
    let state_dir = fixture.root.join("var/lib/cms/agent");
    let held = cms_agent::lock::RunLock::acquire(&state_dir, |_| panic!("nobody else holds it"))
        .expect("lock");

    let mut child = Command::new(env!("CARGO_BIN_EXE_cms-agent"))
        .args([
            "apply",
            "--repo",
            fixture.repo.to_str().expect("utf-8"),
            "--tags",
            "role=api",
            "--root",
        ])
        .arg(&fixture.root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cms-agent runs");
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the second run says it waits");
        if line.starts_with("waiting:") {
            break line;
        }
    };
    assert!(
        waiting.contains(&format!("pid {}", std::process::id())),
        "{waiting}"
    );
    assert!(
        child.try_wait().expect("status").is_none(),
        "it waits while the lock is held"
    );
    assert!(
        !fixture.file("/etc/app").exists(),
        "nothing converged while waiting"
    );

    drop(held);
    let status = child.wait().expect("finishes");
    assert_eq!(status.code(), Some(2));
    assert!(fixture.file("/etc/app/app.conf").exists());
}

#[test]
fn facts_prints_the_facts_and_the_tags_from_the_tags_file() {
    let fixture = Fixture::new();
    std::fs::create_dir_all(fixture.file("/etc/cms")).expect("mkdir");
    std::fs::write(
        fixture.file("/etc/cms/tags.toml"),
        "role = \"web\"\nenv = \"prod\"\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_cms-agent"))
        .args(["facts", "--format", "json", "--root"])
        .arg(&fixture.root)
        .output()
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        json["tags"],
        serde_json::json!({"env": "prod", "role": "web"})
    );
    assert!(
        json["tags_source"]
            .as_str()
            .is_some_and(|s| s.ends_with("etc/cms/tags.toml"))
    );
    assert!(json["facts"]["cpus"].as_u64().is_some_and(|n| n >= 1));
    assert!(json["facts"]["hostname"].is_string());
}

#[test]
fn a_usage_error_exits_1_not_the_changes_made_code() {
    let output = Command::new(env!("CARGO_BIN_EXE_cms-agent"))
        .args(["apply", "--no-such-flag"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let help = Command::new(env!("CARGO_BIN_EXE_cms-agent"))
        .arg("--help")
        .output()
        .expect("runs");
    assert_eq!(help.status.code(), Some(0));
}

#[test]
fn a_run_killed_with_sigkill_midway_is_completed_by_the_next_run() {
    use std::time::{Duration, Instant};

    // Commands only run on the real root, so this role works in a
    // temporary folder of the real machine.
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, state, target) = (
        dir.path().join("repo"),
        dir.path().join("state"),
        dir.path().join("target"),
    );
    std::fs::create_dir_all(repo.join("roles")).expect("mkdir");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::fs::write(
        repo.join("cms.toml"),
        "[hierarchy]\nlayers = [\"common\"]\n",
    )
    .expect("write");
    let t = target.display();
    // The exec is slow until `fast` exists: the first run is killed while
    // it waits, after the first file was written.
    std::fs::write(
        repo.join("roles/app.toml"),
        format!(
            "[[file]]\npath = \"{t}/first.conf\"\ncontent = \"first\\n\"\n\n[[exec]]\nname = \"slow\"\ncommand = \"if [ -f {t}/fast ]; then touch {t}/done; else touch {t}/started; sleep 60; fi\"\ncreates = \"{t}/done\"\ntimeout = 120\n\n[[file]]\npath = \"{t}/last.conf\"\ncontent = \"last\\n\"\n"
        ),
    )
    .expect("write role");
    let apply = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cms-agent"));
        command
            .args([
                "apply",
                "--repo",
                repo.to_str().expect("utf-8"),
                "--tags",
                "role=api",
                "--state-dir",
            ])
            .arg(&state)
            .env("NO_COLOR", "1");
        command
    };
    let mut child = apply()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !target.join("started").exists() {
        assert!(
            Instant::now() < deadline,
            "the first run never reached the slow exec"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert_eq!(read(&target.join("first.conf")), "first\n");
    assert!(!target.join("last.conf").exists());

    std::fs::write(target.join("fast"), "").expect("write");
    let next = apply().output().expect("runs");
    assert_eq!(next.status.code(), Some(2), "{}", stdout(&next));
    assert_eq!(read(&target.join("last.conf")), "last\n");
    assert!(stdout(&next).contains("last.conf"), "{}", stdout(&next));
    assert!(
        !stdout(&next).contains("first.conf"),
        "what the killed run did stays done:\n{}",
        stdout(&next)
    );
    let after = apply().output().expect("runs");
    assert_eq!(after.status.code(), Some(0), "{}", stdout(&after));
}

#[test]
fn the_state_directory_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Fixture::new();
    assert_eq!(fixture.apply(&[]).status.code(), Some(2));
    let state = fixture.root.join("var/lib/cms/agent");
    for path in [
        state.clone(),
        state.join("last_run.json"),
        state.join("backups"),
    ] {
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o077;
        assert_eq!(mode, 0, "{} is readable by others", path.display());
    }
}

#[test]
fn apply_with_tags_no_role_matches_exits_1_naming_the_tags_and_each_roles_match() {
    let fixture = Fixture::new();
    std::fs::write(
        fixture.repo.join("roles/app.toml"),
        format!("[match]\nrole = \"api\"\nenv = \"prod*\"\n{ROLE}"),
    )
    .expect("write");
    let output = fixture.agent(&[
        "apply",
        "--repo",
        fixture.repo.to_str().expect("utf-8"),
        "--tags",
        "role=api,env=staging",
        "--node",
        "web-7",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("No role matches node web-7 with tags env=staging,role=api (from --tags)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  app matches env=prod*, role=api"),
        "{stderr}"
    );
    assert!(!fixture.file("/etc/app").exists(), "nothing converged");
}

#[test]
fn apply_with_no_tags_at_all_exits_1_and_says_where_it_looked() {
    let fixture = Fixture::new();
    std::fs::write(
        fixture.repo.join("roles/app.toml"),
        format!("[match]\nrole = \"api\"\n{ROLE}"),
    )
    .expect("write");
    let output = fixture.agent(&[
        "apply",
        "--repo",
        fixture.repo.to_str().expect("utf-8"),
        "--tags",
        "",
        "--node",
        "web-7",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("No role matches node web-7: it has no tags (looked in --tags)"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: give them with --tags"), "{stderr}");
}
