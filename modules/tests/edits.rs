//! The file-editing kinds (`line`, `ini`, `properties`, `json`, `yaml`) on
//! a host whose root is a temporary directory: each test writes a file as a
//! package would ship it, declares a resource as a role would, converges,
//! and looks at the file and the changes. The [`Root`] at the top is the
//! only place that knows how providers are called.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;

use cms_modules::{BackupStore, Change, Context, Host, Session, error_text, provider};
use cms_roles::{Node, RepoFiles, Repository, ResourceKind, compile, example_facts};
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Harness

struct Root {
    root: TempDir,
    _backup_dir: TempDir,
    host: Host,
    backups: BackupStore,
    session: Session,
    /// The catalog's contents and managed paths: editing kinds use neither.
    contents: BTreeMap<String, cms_roles::Content>,
    managed_paths: BTreeSet<String>,
}

impl Root {
    fn new() -> Root {
        let root = TempDir::new().expect("a temporary root");
        let backup_dir = TempDir::new().expect("a temporary backup directory");
        let host = Host::new(root.path());
        let backups = BackupStore::open(backup_dir.path().join("backups")).expect("opens");
        std::fs::create_dir_all(root.path().join("etc")).expect("etc");
        Root {
            root,
            _backup_dir: backup_dir,
            host,
            backups,
            session: Session::default(),
            contents: BTreeMap::new(),
            managed_paths: BTreeSet::new(),
        }
    }

    fn context(&self, sensitive: bool) -> Context<'_> {
        Context {
            host: &self.host,
            contents: &self.contents,
            backups: &self.backups,
            managed_paths: &self.managed_paths,
            session: &self.session,
            restarts: &cms_modules::UNCOORDINATED,
            sensitive,
        }
    }

    fn write(&self, path: &str, text: &str) {
        std::fs::write(self.real(path), text).expect("writes");
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.real(path)).expect("reads")
    }

    fn real(&self, path: &str) -> std::path::PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    fn mode(&self, path: &str) -> u32 {
        std::fs::metadata(self.real(path))
            .expect("exists")
            .permissions()
            .mode()
            & 0o7777
    }

    /// What `check` finds, or the error as a report shows it.
    fn check(&self, resource: &ResourceKind, sensitive: bool) -> Result<Vec<Change>, String> {
        self.run(resource, false, sensitive)
    }

    /// Checks and applies, as the agent does; returns the changes as
    /// `check` listed them.
    fn converge(&self, resource: &ResourceKind) -> Result<Vec<Change>, String> {
        self.run(resource, true, false)
    }

    fn run(
        &self,
        resource: &ResourceKind,
        apply: bool,
        sensitive: bool,
    ) -> Result<Vec<Change>, String> {
        let cx = self.context(sensitive);
        let provider = provider(resource);
        let changes = provider.check(&cx).map_err(|e| error_text(&e))?;
        if apply && !changes.is_empty() {
            provider.apply(&changes, &cx).map_err(|e| error_text(&e))?;
        }
        Ok(changes)
    }

    /// The error of a check as a report shows it, for a sensitive
    /// resource or not.
    fn provider_error(&self, resource: &ResourceKind, sensitive: bool) -> String {
        let error = provider(resource)
            .check(&self.context(sensitive))
            .expect_err("the check fails");
        cms_modules::report_error(&error, sensitive)
    }

    /// Converges `resource` and checks that a second run finds nothing:
    /// returns the first run's changes as `attribute: from -> to` lines.
    #[track_caller]
    fn converge_twice(&self, resource: &ResourceKind) -> Vec<String> {
        let changes = self
            .converge(resource)
            .unwrap_or_else(|error| panic!("first run: {error}"));
        let again = self
            .check(resource, false)
            .unwrap_or_else(|error| panic!("second run: {error}"));
        assert_eq!(again, Vec::new(), "a second run changes nothing");
        changes.iter().map(ToString::to_string).collect()
    }

    /// Converges a resource expected to fail; the file stays as it was.
    #[track_caller]
    fn refused(&self, resource: &ResourceKind) -> String {
        let path = resource.name().to_string();
        let before = std::fs::read(self.real(&path)).ok();
        let error = self
            .converge(resource)
            .expect_err("the resource is refused");
        assert_eq!(
            std::fs::read(self.real(&path)).ok(),
            before,
            "a refused edit leaves the file as it was"
        );
        error
    }
}

/// The one resource a role declares, compiled as the server would.
#[track_caller]
fn resource(role: &str) -> ResourceKind {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert("roles/app.toml", role);
    let repository = Repository::parse(files).unwrap_or_else(|d| panic!("parse failed:\n{d}"));
    let node = Node {
        id: "n1".into(),
        tags: BTreeMap::new(),
        facts: example_facts(),
        attested: BTreeMap::new(),
    };
    let catalog = compile(&repository, &node).unwrap_or_else(|d| panic!("compile failed:\n{d}"));
    assert_eq!(catalog.resources.len(), 1, "one resource");
    catalog.resources[0].kind.clone()
}

// ---------------------------------------------------------------------------
// line

const SSHD_CONFIG: &str = "# sshd_config shipped by the package\nPort 22\n#PermitRootLogin prohibit-password\nPasswordAuthentication yes\n\n# Subsystem\nSubsystem sftp /usr/lib/openssh/sftp-server\n";

#[test]
fn line_replaces_the_line_match_finds_appends_or_inserts_after_and_keeps_the_rest() {
    let root = Root::new();
    root.write("/etc/ssh_config", SSHD_CONFIG);
    let line = resource(
        r#"
[[line]]
path = "/etc/ssh_config"
lines = [
  { line = "PermitRootLogin no", match = "^#?PermitRootLogin" },
  { line = "PasswordAuthentication no", match = "^PasswordAuthentication " },
  { line = "AllowGroups ssh", after = "^Port " },
  { line = "UseDNS no" },
]
"#,
    );
    let changes = root.converge_twice(&line);
    assert_eq!(
        changes,
        [
            "line: #PermitRootLogin prohibit-password -> PermitRootLogin no",
            "line: PasswordAuthentication yes -> PasswordAuthentication no",
            "line: absent -> AllowGroups ssh",
            "line: absent -> UseDNS no",
        ]
    );
    assert_eq!(
        root.read("/etc/ssh_config"),
        "# sshd_config shipped by the package\nPort 22\nAllowGroups ssh\nPermitRootLogin no\nPasswordAuthentication no\n\n# Subsystem\nSubsystem sftp /usr/lib/openssh/sftp-server\nUseDNS no\n"
    );
}

#[test]
fn line_absent_removes_every_line_match_finds_or_equal_to_line() {
    let root = Root::new();
    root.write(
        "/etc/hosts.allow",
        "keep\nALL: 10.0.0.1\nALL: 10.0.0.2\nsshd: ALL\n",
    );
    let line = resource(
        r#"
[[line]]
path = "/etc/hosts.allow"
lines = [
  { match = "^ALL: ", ensure = "absent" },
  { line = "sshd: ALL", ensure = "absent" },
]
"#,
    );
    let changes = root.converge_twice(&line);
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!(root.read("/etc/hosts.allow"), "keep\n");
}

#[test]
fn line_match_finding_two_lines_is_an_error_naming_both() {
    let root = Root::new();
    root.write("/etc/ssh_config", "Port 22\n#Port 2222\n");
    let line = resource(
        "[[line]]\npath = \"/etc/ssh_config\"\nlines = [{ line = \"Port 2200\", match = \"Port\" }]\n",
    );
    let error = root.refused(&line);
    assert_eq!(
        error,
        "Failed to edit /etc/ssh_config: line 2: lines entry 1: `match` finds 2 lines (1 and 2), and replaces one: make the pattern match only the line to replace (e.g. anchor it with ^)"
    );
}

// ---------------------------------------------------------------------------
// ini

const MY_CNF: &str = "; my.cnf shipped by the package\n[client]\nport=3306\n\n[mysqld]\n# networking\nskip-networking\nmax_connections=100 ; the default\nbind-address=127.0.0.1\n\n[mysqldump]\nquick\n";

#[test]
fn ini_sets_keys_in_their_sections_keeping_comments_spacing_and_order() {
    let root = Root::new();
    root.write("/etc/my.cnf", MY_CNF);
    let ini = resource(
        r#"
[[ini]]
path = "/etc/my.cnf"
remove = ["mysqld.bind-address"]
[ini.settings.mysqld]
max_connections = 200
skip-networking = "0"
innodb_buffer_pool_size = "1G"
[ini.settings.mysqld_safe]
log-error = "/var/log/mysqld.log"
"#,
    );
    let changes = root.converge_twice(&ini);
    assert_eq!(
        changes,
        [
            "key mysqld.innodb_buffer_pool_size: absent -> 1G",
            "key mysqld.max_connections: 100 -> 200",
            "key mysqld.skip-networking: (no value) -> 0",
            "key mysqld_safe.log-error: absent -> /var/log/mysqld.log",
            "key mysqld.bind-address: 127.0.0.1 -> absent",
        ]
    );
    assert_eq!(
        root.read("/etc/my.cnf"),
        "; my.cnf shipped by the package\n[client]\nport=3306\n\n[mysqld]\n# networking\nskip-networking=0\nmax_connections=200 ; the default\ninnodb_buffer_pool_size=1G\n\n[mysqldump]\nquick\n\n[mysqld_safe]\nlog-error=/var/log/mysqld.log\n"
    );
}

#[test]
fn ini_keys_before_the_first_section_and_dotted_keys_keep_their_places() {
    let root = Root::new();
    root.write(
        "/etc/php.ini",
        "[PHP]\nmemory_limit = 128M\n\n[opcache]\n;opcache.enable = 0\n",
    );
    let ini = resource(
        r#"
[[ini]]
path = "/etc/php.ini"
settings = { top = "1", PHP = { memory_limit = "256M" }, opcache = { "opcache.enable" = 1 } }
"#,
    );
    root.converge_twice(&ini);
    assert_eq!(
        root.read("/etc/php.ini"),
        "top = 1\n[PHP]\nmemory_limit = 256M\n\n[opcache]\nopcache.enable = 1\n;opcache.enable = 0\n"
    );
}

#[test]
fn ini_refuses_a_broken_header_and_a_key_written_twice_naming_the_lines() {
    let root = Root::new();
    let ini = resource("[[ini]]\npath = \"/etc/a.ini\"\nsettings = { s = { k = \"v\" } }\n");
    root.write("/etc/a.ini", "[s]\nk = 1\n[broken\n");
    assert_eq!(
        root.refused(&ini),
        "Failed to edit /etc/a.ini: line 3: a section header without its closing `]`: write `[name]`"
    );
    root.write("/etc/a.ini", "[s]\nk = 1\nother = 2\nk = 3\n");
    assert_eq!(
        root.refused(&ini),
        "Failed to edit /etc/a.ini: line 4: `k` is written 2 times in section [s] (lines 2 and 4); which one counts depends on the program: keep one by hand, then run again"
    );
}

// ---------------------------------------------------------------------------
// properties

#[test]
fn properties_sets_and_removes_keys_escaping_values_and_keeping_comments() {
    let root = Root::new();
    root.write(
        "/etc/app.properties",
        "# shipped\nserver.port = 8080\n! old style comment\ngreeting = hello \\\n    world\nlegacy.flag: true\nserver.port = 8081\n",
    );
    let properties = resource(
        r#"
[[properties]]
path = "/etc/app.properties"
remove = ["legacy.flag"]
[properties.settings]
server.port = 9090
greeting = "hello world"
"db.url" = "jdbc:postgresql://db:5432/app"
motto = " café = bien"
"#,
    );
    let changes = root.converge_twice(&properties);
    assert_eq!(
        changes,
        [
            "key db.url: absent -> jdbc:postgresql://db:5432/app",
            "key motto: absent ->  café = bien",
            "key server.port: 8081 -> 9090",
            "key legacy.flag: true -> absent",
        ]
    );
    assert_eq!(
        root.read("/etc/app.properties"),
        "# shipped\nserver.port = 8080\n! old style comment\ngreeting = hello \\\n    world\nserver.port = 9090\ndb.url = jdbc\\:postgresql\\://db\\:5432/app\nmotto = \\ caf\\u00E9 \\= bien\n"
    );
}

#[test]
fn properties_refuses_a_broken_unicode_escape_naming_its_line() {
    let root = Root::new();
    root.write("/etc/app.properties", "a=1\nb=\\u12\n");
    let properties =
        resource("[[properties]]\npath = \"/etc/app.properties\"\nsettings = { a = \"2\" }\n");
    let error = root.refused(&properties);
    assert!(
        error.starts_with("Failed to edit /etc/app.properties: line 2: a `\\u` escape without four hexadecimal digits"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// json

const PACKAGE_JSON: &str = r#"{
    "name": "app",
    "server": {
        "port": 8080,
        "hosts": ["a", "b"]
    },
    "debug": true,
    "zeta": 1.50
}
"#;

#[test]
fn json_sets_typed_values_by_path_keeping_key_order_and_formatting() {
    let root = Root::new();
    root.write("/etc/app.json", PACKAGE_JSON);
    let json = resource(
        r#"
[[json]]
path = "/etc/app.json"
remove = ["debug"]
[json.settings]
"server.port" = 9090
server.tls = { enabled = true, ciphers = ["a", "b"] }
logging.level = "info"
name = "app"
"#,
    );
    let changes = root.converge_twice(&json);
    assert_eq!(
        changes,
        [
            "key logging.level: absent -> \"info\"",
            "key server.tls.ciphers: absent -> [\"a\",\"b\"]",
            "key server.tls.enabled: absent -> true",
            "key server.port: 8080 -> 9090",
            "key debug: true -> absent",
        ]
    );
    assert_eq!(
        root.read("/etc/app.json"),
        r#"{
    "name": "app",
    "server": {
        "port": 9090,
        "hosts": ["a", "b"],
        "tls": {
            "ciphers": [
                "a",
                "b"
            ],
            "enabled": true
        }
    },
    "zeta": 1.50,
    "logging": {
        "level": "info"
    }
}
"#
    );
}

#[test]
fn json_refuses_a_malformed_file_and_a_path_through_a_value_naming_the_line() {
    let root = Root::new();
    root.write("/etc/app.json", "{\n  \"a\": 1,\n  \"b\": [1,\n}\n");
    let json = resource("[[json]]\npath = \"/etc/app.json\"\nsettings = { \"a.x\" = 1 }\n");
    assert_eq!(
        root.refused(&json),
        "Failed to edit /etc/app.json: line 4: not valid JSON: expected a value (an object, list, string, number, true, false or null); fix the file, then run again"
    );
    root.write("/etc/app.json", "{\n  \"a\": 1\n}\n");
    assert_eq!(
        root.refused(&json),
        "Failed to edit /etc/app.json: line 2: `a` holds a number in the file, not an object, so `a.x` cannot be set: set `a` itself, or fix the file"
    );
}

#[test]
fn json_in_one_line_stays_on_one_line_and_a_created_file_starts_as_an_object() {
    let root = Root::new();
    root.write("/etc/one.json", "{\"a\": 1, \"b\": {}}");
    let json =
        resource("[[json]]\npath = \"/etc/one.json\"\nsettings = { c = \"x\", \"b.d\" = 2 }\n");
    root.converge_twice(&json);
    assert_eq!(
        root.read("/etc/one.json"),
        "{\"a\": 1, \"b\": {\n  \"d\": 2\n}, \"c\": \"x\"}"
    );
    let created = resource(
        "[[json]]\npath = \"/etc/new.json\"\ncreate = true\nsettings = { \"a.b\" = [1, 2] }\n",
    );
    root.converge_twice(&created);
    assert_eq!(
        root.read("/etc/new.json"),
        "{\n  \"a\": {\n    \"b\": [\n      1,\n      2\n    ]\n  }\n}\n"
    );
}

// ---------------------------------------------------------------------------
// yaml

const APP_YAML: &str = "# app.yaml shipped by the package\nserver:\n  port: 8080 # the default\n  host: \"0.0.0.0\"\n  paths:\n    - /a\n    - /b\nlogging:\n  level: debug\n  format: |\n    {time} {message}\n    level: not a key\n\nfeature: on\n";

#[test]
fn yaml_sets_and_removes_keys_keeping_comments_and_quoting_when_needed() {
    let root = Root::new();
    root.write("/etc/app.yaml", APP_YAML);
    let yaml = resource(
        r#"
[[yaml]]
path = "/etc/app.yaml"
remove = ["logging.format"]
[yaml.settings]
server.port = 9090
server.host = "0.0.0.0"
server.tls.cert = "/etc/ssl/app: main.pem"
logging.level = "info"
feature = "yes"
new = true
"#,
    );
    let changes = root.converge_twice(&yaml);
    assert_eq!(
        changes,
        [
            "key feature: on -> \"yes\"",
            "key logging.level: debug -> info",
            "key new: absent -> true",
            "key server.port: 8080 -> 9090",
            "key server.tls.cert: absent -> \"/etc/ssl/app: main.pem\"",
            "key logging.format: | -> absent",
        ]
    );
    assert_eq!(
        root.read("/etc/app.yaml"),
        "# app.yaml shipped by the package\nserver:\n  port: 9090 # the default\n  host: \"0.0.0.0\"\n  paths:\n    - /a\n    - /b\n  tls:\n    cert: \"/etc/ssl/app: main.pem\"\nlogging:\n  level: info\n\nfeature: \"yes\"\nnew: true\n"
    );
}

#[test]
fn yaml_refuses_what_it_cannot_edit_safely_naming_the_line() {
    let root = Root::new();
    let cases = [
        ("a: 1\n---\nb: 2\n", "a", "line 2: a second YAML document"),
        ("{a: 1}\n", "a", "line 1: the file is in flow style"),
        (
            "a: {b: 1}\n",
            "a.b",
            "line 1: `a` holds a flow-style value here",
        ),
        (
            "base: &b\n  x: 1\n",
            "base.x",
            "line 1: `base` holds an anchor or alias here",
        ),
        ("a: *b\n", "a", "line 1: `a` has an anchor or alias"),
        (
            "a:\n  - 1\n",
            "a.b",
            "line 2: a list where a mapping of keys was expected",
        ),
        (
            "a:\n  b: 1\n",
            "a",
            "line 1: `a` holds a mapping or list on the lines below",
        ),
        (
            "a: |\n  text\n",
            "a",
            "line 1: `a` holds a value over several lines",
        ),
        (
            "a: 1\na: 2\n",
            "a",
            "line 2: `a` is written 2 times in one mapping (lines 1 and 2)",
        ),
    ];
    for (text, key, expected) in cases {
        root.write("/etc/c.yaml", text);
        let yaml = resource(&format!(
            "[[yaml]]\npath = \"/etc/c.yaml\"\nsettings = {{ \"{key}\" = 5 }}\n"
        ));
        let error = root.refused(&yaml);
        assert!(
            error.starts_with(&format!("Failed to edit /etc/c.yaml: {expected}")),
            "{text:?}: {error}"
        );
    }
}

// ---------------------------------------------------------------------------
// What every editing kind shares

#[test]
fn a_missing_file_is_an_error_saying_to_require_its_package_or_create_it() {
    let root = Root::new();
    let ini = resource("[[ini]]\npath = \"/etc/missing.ini\"\nsettings = { s = { k = \"v\" } }\n");
    assert_eq!(
        root.refused(&ini),
        "Failed to edit /etc/missing.ini: the file does not exist; if a package installs it, add that package to `require` (`require = [\"package:NAME\"]`) so it is installed first, or set `create = true` to create it"
    );
    let created = resource(
        "[[ini]]\npath = \"/etc/missing.ini\"\ncreate = true\nmode = \"0640\"\nsettings = { s = { k = \"v\" } }\n",
    );
    let changes = root.converge_twice(&created);
    assert_eq!(
        changes,
        ["ensure: absent -> present", "key s.k: absent -> v"]
    );
    assert_eq!(root.read("/etc/missing.ini"), "[s]\nk = v\n");
    assert_eq!(root.mode("/etc/missing.ini"), 0o640);
}

#[test]
fn an_edit_keeps_the_files_mode_saves_the_old_content_and_shows_a_diff() {
    let root = Root::new();
    root.write("/etc/app.properties", "a=1\n");
    std::fs::set_permissions(
        root.real("/etc/app.properties"),
        std::fs::Permissions::from_mode(0o604),
    )
    .expect("chmod");
    let properties =
        resource("[[properties]]\npath = \"/etc/app.properties\"\nsettings = { a = \"2\" }\n");
    let changes = root.converge(&properties).expect("converges");
    assert_eq!(
        changes[0].diff.as_deref(),
        Some(
            "--- /etc/app.properties (current)\n+++ /etc/app.properties (catalog)\n@@ -1 +1 @@\n-a=1\n+a=2\n"
        )
    );
    assert_eq!(root.read("/etc/app.properties"), "a=2\n");
    assert_eq!(root.mode("/etc/app.properties"), 0o604);
    let saved = root.backups.entries("/etc/app.properties").expect("lists");
    assert_eq!(saved.len(), 1, "the old content is in the backup store");
    assert_eq!(root.backups.content(&saved[0]).expect("reads"), b"a=1\n");
    // A mode the resource sets is enforced, without touching the content.
    let with_mode = resource(
        "[[properties]]\npath = \"/etc/app.properties\"\nmode = \"0600\"\nsettings = { a = \"2\" }\n",
    );
    let changes = root.converge_twice(&with_mode);
    assert_eq!(changes, ["mode: 0604 -> 0600"]);
    assert_eq!(root.mode("/etc/app.properties"), 0o600);
}

#[test]
fn a_check_changes_nothing_and_a_sensitive_resource_shows_no_value_or_diff() {
    let root = Root::new();
    root.write("/etc/app.yaml", "password: old\n");
    let yaml =
        resource("[[yaml]]\npath = \"/etc/app.yaml\"\nsettings = { password = \"hunter2\" }\n");
    let changes = root.check(&yaml, false).expect("checks");
    assert_eq!(changes.len(), 1);
    assert_eq!(
        root.read("/etc/app.yaml"),
        "password: old\n",
        "check changes nothing"
    );
    let changes = root.check(&yaml, true).expect("checks");
    assert_eq!(
        changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["key password changed (sensitive)"]
    );
    assert!(changes.iter().all(|c| c.diff.is_none()));
}

#[test]
fn a_sensitive_resources_error_still_says_where_and_what_to_do() {
    let root = Root::new();
    root.write(
        "/etc/app.yaml",
        "a: {b: 1}
",
    );
    let yaml =
        resource("[[yaml]]\npath = \"/etc/app.yaml\"\nsettings = { \"a.b\" = \"hunter2\" }\n");
    let error = root.provider_error(&yaml, true);
    assert!(
        error
            .starts_with("Failed to edit /etc/app.yaml: line 1: `a` holds a flow-style value here"),
        "{error}"
    );
    assert!(!error.contains("hunter2"));
}

#[test]
fn a_symlink_at_the_path_is_never_followed() {
    let root = Root::new();
    root.write("/etc/real.ini", "[s]\nk = 1\n");
    std::os::unix::fs::symlink("real.ini", root.real("/etc/link.ini")).expect("links");
    let ini = resource("[[ini]]\npath = \"/etc/link.ini\"\nsettings = { s = { k = \"2\" } }\n");
    assert_eq!(
        root.refused(&ini),
        "Failed to edit /etc/link.ini: it is a symlink to real.ini; an edit never follows a link: edit the path it points to"
    );
    assert_eq!(root.read("/etc/real.ini"), "[s]\nk = 1\n");
}

#[test]
fn line_breaks_and_document_markers_of_the_file_are_kept() {
    let root = Root::new();
    root.write("/etc/win.ini", "[s]\r\nk = 1\r\n");
    let ini = resource("[[ini]]\npath = \"/etc/win.ini\"\nsettings = { s = { k = 2, new = 3 } }\n");
    root.converge_twice(&ini);
    assert_eq!(root.read("/etc/win.ini"), "[s]\r\nk = 2\r\nnew = 3\r\n");

    root.write("/etc/doc.yaml", "%YAML 1.2\n---\n# settings\na: 1");
    let yaml = resource("[[yaml]]\npath = \"/etc/doc.yaml\"\nsettings = { a = 2, b = \"x\" }\n");
    root.converge_twice(&yaml);
    assert_eq!(
        root.read("/etc/doc.yaml"),
        "%YAML 1.2\n---\n# settings\na: 2\nb: x"
    );
}

#[test]
fn a_created_file_of_each_format_holds_only_the_keys_set() {
    let root = Root::new();
    for (kind, path, expected) in [
        ("yaml", "/etc/new.yaml", "a:\n  b: 1\n"),
        ("properties", "/etc/new.properties", "a.b=1\n"),
        ("line", "/etc/new.conf", "a.b\n"),
    ] {
        let body = if kind == "line" {
            "lines = [{ line = \"a.b\" }]"
        } else {
            "settings = { \"a.b\" = 1 }"
        };
        let created = resource(&format!(
            "[[{kind}]]\npath = \"{path}\"\ncreate = true\n{body}\n"
        ));
        let changes = root.converge_twice(&created);
        assert_eq!(changes[0], "ensure: absent -> present", "{kind}");
        assert_eq!(root.read(path), expected, "{kind}");
        assert_eq!(root.mode(path), 0o644, "{kind}");
    }
}

#[test]
fn removing_a_key_that_is_not_there_changes_nothing_in_any_format() {
    let root = Root::new();
    for (kind, path, text) in [
        ("yaml", "/etc/r.yaml", "a: 1\nc:\n  d: 2\n"),
        ("json", "/etc/r.json", "{\"a\": 1, \"c\": {\"d\": 2}}\n"),
        ("ini", "/etc/r.ini", "a = 1\n[c]\nd = 2\n"),
        ("properties", "/etc/r.properties", "a=1\nc.d=2\n"),
    ] {
        root.write(path, text);
        let absent = resource(&format!(
            "[[{kind}]]\npath = \"{path}\"\nremove = [\"a.b\", \"c.x\", \"z\"]\n"
        ));
        assert_eq!(root.converge_twice(&absent), Vec::<String>::new(), "{kind}");
        assert_eq!(root.read(path), text, "{kind}");
    }
}
