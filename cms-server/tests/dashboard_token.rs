//! `cms-server dashboard-token` against the real `cms-server serve` (sled
//! store, `--http-tls`) and the real binary: a token is made through the
//! running server (an admin call), printed once, stored as its sha256
//! only, and signs in to the dashboard until it is revoked; `--list` and
//! `--revoke` name tokens by id; tokens an older server kept in
//! `<data>/admin/dashboard-tokens` are imported at start, once, and sign in
//! after the upgrade.

mod serve_process;
use serve_process::ServeProcess;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cms_roles::digest::sha256_hex;

/// A `cms-server serve --http-tls` process on loopback with the data
/// directory `data`, its output in `data.log` (appended to, so that two
/// starts share one log); killed when dropped.
struct Server {
    process: ServeProcess,
    http: SocketAddr,
}

impl Server {
    fn start(data: &Path) -> Server {
        std::fs::create_dir_all(data).expect("the data directory");
        let process =
            ServeProcess::start_logging(data, &["--http-tls"], &data.with_extension("log"));
        Server {
            http: process.http,
            process,
        }
    }

    /// Stops the server at once (SIGKILL): what it acknowledged is durable.
    fn kill(self) {
        self.process.kill();
    }

    /// `POST /dashboard/login` with `token`: the status, and the session
    /// cookie when one was set.
    fn login(&self, token: &str) -> (u16, Option<String>) {
        let output = Command::new("curl")
            .args(["--silent", "--insecure", "--include", "--max-time", "30"])
            .args(["--data", &format!("token={token}")])
            .arg(format!("https://{}/dashboard/login", self.http))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let status = text
            .lines()
            .next()
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in curl's output: {text}"));
        let cookie = text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_owned())
                .filter(|cookie| cookie.starts_with("cms_session=") && cookie.len() > 12)
        });
        (status, cookie)
    }

    /// The status of `GET /dashboard` with the session `cookie`.
    fn page(&self, cookie: &str) -> u16 {
        let output = Command::new("curl")
            .args(["--silent", "--insecure", "--max-time", "30"])
            .args(["--output", "/dev/null", "--write-out", "%{http_code}"])
            .args(["--cookie", cookie])
            .arg(format!("https://{}/dashboard", self.http))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no HTTP status from curl: {output:?}"))
    }
}

fn log_text(data: &Path) -> String {
    std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
}

/// `cms-server ARGS --data DATA`: the server found from the address it
/// recorded there, with its bootstrap admin credential.
fn cli(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("CMS_ADMIN_CREDENTIAL")
        .env_remove("CMS_SERVER")
        .env_remove("CMS_SERVER_DATA")
        .output()
        .expect("run cms-server")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `cms-server dashboard-token --data DATA`: the token it printed.
fn make_token(data: &Path) -> String {
    let output = cli(data, &["dashboard-token"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone on stdout: {printed:?}");
    lines[0].to_owned()
}

/// `cms-server dashboard-token --list --format json`.
fn listed(data: &Path) -> Vec<serde_json::Value> {
    let output = cli(data, &["dashboard-token", "--list", "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("a JSON array")
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read a folder") {
            let entry = entry.expect("an entry");
            let kind = entry.file_type().expect("its type");
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path()).expect("read a file");
                files.push((entry.path(), bytes));
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn a_dashboard_token_is_made_through_the_running_server_printed_once_and_only_its_hash_is_stored() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("server");
    let server = Server::start(&data);

    let output = cli(&data, &["dashboard-token"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output).trim().to_owned();
    assert!(token.starts_with("cmsd_") && token.len() > 40, "{token}");
    let hash = sha256_hex(token.as_bytes());
    let id = &hash[..12];
    assert!(
        stderr(&output).contains(&format!("made dashboard token {id}")),
        "{}",
        stderr(&output)
    );
    assert_ne!(make_token(&data), token, "each call makes a new one");

    let (status, cookie) = server.login(&token);
    assert_eq!(status, 303, "the token signs in");
    assert!(cookie.is_some(), "a session cookie");

    let tokens = listed(&data);
    assert_eq!(tokens.len(), 2, "{tokens:#?}");
    let mine = tokens
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("{id} listed: {tokens:#?}"));
    assert_eq!(mine["created_by"], "admin");
    assert!(mine["revoked_unix_ms"].is_null(), "{mine}");
    let text = cli(&data, &["dashboard-token", "--list"]);
    let text = stdout(&text);
    assert!(text.starts_with("ID "), "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with(id) && line.contains(" UTC ") && line.contains("admin")),
        "{text}"
    );

    // The audit log names the operator and the token's id, never the token.
    let audit = cli(&data, &["audit", "--format", "json"]);
    assert!(audit.status.success(), "{}", stderr(&audit));
    assert!(!contains(&audit.stdout, token.as_bytes()));
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&audit.stdout).expect("JSON");
    assert!(
        audit
            .iter()
            .any(|entry| entry["method"] == "CreateDashboardToken"
                && entry["operator"] == "admin"
                && entry["target"] == id
                && entry["outcome"] == "ok"),
        "{audit:#?}"
    );

    server.kill();
    // No file of the data directory (the sled store, the admin folder, the
    // log) holds the token; the store holds its hash.
    let files = files_under(&data);
    let secret_part = token.trim_start_matches("cmsd_");
    for (path, bytes) in &files {
        assert!(
            !contains(bytes, secret_part.as_bytes()),
            "{} holds the token",
            path.display()
        );
    }
    assert!(
        !data.join("admin/dashboard-tokens").exists(),
        "no tokens file is written any more"
    );
    let store = cms_server::store::open(&data.join("db")).expect("open the store");
    let stored = store.dashboard_tokens().expect("the tokens");
    assert!(
        stored
            .iter()
            .any(|t| t.hash == hash && t.created_by == "admin" && !t.is_revoked()),
        "{stored:#?}"
    );
    drop(store);

    // Without a running server, the command says where it looked.
    let output = cli(&data, &["dashboard-token"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is `cms-server serve` running?"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_revoked_dashboard_token_signs_in_no_more_its_sessions_end_and_revoking_it_again_says_so() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("server");
    let server = Server::start(&data);
    let token = make_token(&data);
    let kept = make_token(&data);
    let id = sha256_hex(token.as_bytes())[..12].to_owned();
    let (status, session) = server.login(&token);
    assert_eq!(status, 303);
    let session = session.expect("a session cookie");
    let kept_session = server.login(&kept).1.expect("a session cookie");
    assert_eq!(server.page(&session), 200);

    let output = cli(&data, &["dashboard-token", "--revoke", &id]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with(&format!("revoked dashboard token {id} (made ")),
        "{}",
        stdout(&output)
    );
    assert_eq!(server.login(&token), (401, None), "revoked");
    assert_eq!(
        server.page(&session),
        401,
        "the session the revoked token opened is over"
    );
    assert_eq!(server.page(&kept_session), 200, "the other's goes on");
    assert_eq!(server.login(&kept).0, 303, "the other token still works");
    let tokens = listed(&data);
    let revoked = tokens
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed");
    assert_eq!(revoked["revoked_by"], "admin");
    assert!(
        revoked["revoked_unix_ms"].as_i64().unwrap_or(0) > 0,
        "{revoked}"
    );

    let again = cli(&data, &["dashboard-token", "--revoke", &id]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).starts_with(&format!("dashboard token {id} was revoked already, at ")),
        "{}",
        stdout(&again)
    );
    let unknown = cli(&data, &["dashboard-token", "--revoke", "000000000000"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    assert_eq!(
        stderr(&unknown),
        "error: no dashboard token has the id 000000000000; `cms-server dashboard-token --list` shows them\n"
    );
    assert_eq!(server.login(&token).0, 401);
}

#[test]
fn tokens_of_an_old_dashboard_tokens_file_sign_in_after_the_upgrade_and_are_imported_once() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("server");
    Server::start(&data).kill();
    // What `cms-server dashboard-token` wrote before the tokens moved to
    // the store.
    let old = "cmsd_madebyanolderserver0123456789abcdefghijklmnop";
    let file = data.join("admin/dashboard-tokens");
    std::fs::write(
        &file,
        format!(
            "{} created 2025-11-26 08:40:00 UTC\n",
            sha256_hex(old.as_bytes())
        ),
    )
    .expect("write the old file");

    let server = Server::start(&data);
    assert_eq!(server.login(old).0, 303, "{}", log_text(&data));
    assert!(!file.exists(), "the old file is renamed");
    assert!(data.join("admin/dashboard-tokens.imported").exists());
    let tokens = listed(&data);
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    assert_eq!(tokens[0]["id"], &sha256_hex(old.as_bytes())[..12]);
    assert_eq!(tokens[0]["created_by"], "(imported)");
    let text = stdout(&cli(&data, &["dashboard-token", "--list"]));
    assert!(
        text.contains("2025-11-26 08:40:00 UTC  (imported)"),
        "{text}"
    );
    server.kill();

    let server = Server::start(&data);
    assert_eq!(server.login(old).0, 303, "still after a restart");
    let log = log_text(&data);
    assert_eq!(
        log.matches("imported the dashboard tokens of").count(),
        1,
        "logged once, at the start that imported it:\n{log}"
    );
    assert_eq!(listed(&data).len(), 1);
}
