//! The file-editing kinds (`line`, `ini`, `properties`, `json`, `yaml`)
//! inside real instances, on configuration files a package from the
//! internal apt repository ships: the package is installed first
//! (`require`), the edit is made and notifies an exec, a second run
//! changes nothing, `--noop` after drift reports the change and writes
//! nothing, a real run repairs the drift, and a bad value is refused
//! before anything runs, with its file, line and field.
//!
//! One test per kind, each in an instance of its own; the testbed, the
//! package repository and the baked image are shared (see
//! [`SharedFixture`]).

use std::sync::Arc;

use anyhow::{Result, ensure};
use cms_integration::{
    BakedImage, DebPackageSpec, HttpFileServer, Instance, InstanceConfig, PackageRepo,
    SharedFixture, Testbed, TestbedSettings, bake_agent_image, check_prerequisites,
    find_leftovers_of_instance,
};

struct Fixture {
    // Declared in teardown order.
    _package_server: HttpFileServer,
    testbed: Testbed,
    _repo: PackageRepo,
    baked: BakedImage,
}

static FIXTURE: SharedFixture<Fixture> = SharedFixture::new();

fn fixture() -> Result<Arc<Fixture>> {
    FIXTURE.get_or_start(|| {
        check_prerequisites()?;
        let settings = TestbedSettings::from_environment();
        let baked = bake_agent_image(&settings)?;
        let testbed = Testbed::start(&settings)?;
        let mut repo = PackageRepo::create(&settings)?;
        repo.build_package(&shipped_configuration())?;
        let package_server = testbed.serve_package_repo(&repo)?;
        Ok(Fixture {
            _package_server: package_server,
            testbed,
            _repo: repo,
            baked,
        })
    })
}

const SSHD_CONFIG: &str = "# shipped by cms-test-config\nPort 22\n#PermitRootLogin prohibit-password\nPasswordAuthentication yes\n";
const PHP_INI: &str = "; shipped by cms-test-config\n[PHP]\nmemory_limit = 128M ; per script\nexpose_php = On\n\n[Date]\n;date.timezone =\n";
const APP_PROPERTIES: &str =
    "# shipped by cms-test-config\nserver.port=8080\n! the database\ndb.url=jdbc:h2:mem\n";
const APP_JSON: &str =
    "{\n  \"name\": \"app\",\n  \"server\": {\n    \"port\": 8080\n  },\n  \"debug\": true\n}\n";
const APP_YAML: &str = "# shipped by cms-test-config\nserver:\n  port: 8080  # the default\n  host: localhost\nlogging:\n  level: debug\n";

/// The package whose configuration files the roles edit.
fn shipped_configuration() -> DebPackageSpec {
    DebPackageSpec::new("cms-test-config", "1.0")
        .with_file("/etc/cms-test/sshd_config", SSHD_CONFIG, 0o644)
        .with_file("/etc/cms-test/php.ini", PHP_INI, 0o640)
        .with_file("/etc/cms-test/app.properties", APP_PROPERTIES, 0o644)
        .with_file("/etc/cms-test/app.json", APP_JSON, 0o644)
        .with_file("/etc/cms-test/app.yaml", APP_YAML, 0o644)
}

/// One kind's case: the resource a role declares, what the file holds
/// after it, a drift, what `--noop` shows of it, and a bad value.
struct Case {
    instance: &'static str,
    path: &'static str,
    reference: &'static str,
    /// The resource, without `require` and `notify` (added here).
    resource: &'static str,
    converged: &'static str,
    /// A shell command undoing part of the edit.
    drift: &'static str,
    noop_shows: &'static [&'static str],
    bad_resource: &'static str,
    /// What `cms-agent apply` prints for it.
    refused_with: &'static str,
}

const SETTINGS: &str = "[hierarchy]\nlayers = [\"common\"]\n";

/// The role: the package, the kind's resource notifying an exec that
/// counts its runs.
fn role(resource: &str) -> String {
    format!(
        r#"
[[package]]
name = "cms-test-config"

{resource}
require = ["package:cms-test-config"]
notify = ["exec:reload"]

[[exec]]
name = "reload"
command = "echo reloaded >> /var/tmp/reloads"
refreshonly = true
"#
    )
}

fn write_roles(instance: &Instance, role_text: &str) -> Result<()> {
    instance.write_roles_repository(&[("cms.toml", SETTINGS), ("roles/app.toml", role_text)])
}

/// Runs `cms-agent apply` in the instance and checks its exit code
/// (0 nothing changed, 1 refused, 2 changed); returns its output (stdout
/// then stderr).
fn apply_expecting(
    instance: &Instance,
    extra: &[&str],
    expected: i32,
    what: &str,
) -> Result<String> {
    let (code, text) = instance.apply_roles_repository("role=app", extra)?;
    ensure!(
        code == expected,
        "{what} (exit {expected}), got {code}:\n{text}"
    );
    Ok(text)
}

fn run(instance: &Instance, command: &str) -> Result<String> {
    Ok(instance
        .run_successfully(&["sh", "-c", command])?
        .stdout
        .to_string())
}

fn reloads(instance: &Instance) -> Result<usize> {
    Ok(run(instance, "cat /var/tmp/reloads 2>/dev/null || true")?
        .lines()
        .count())
}

/// Every behaviour of one kind, in an instance of its own.
fn exercise(case: &Case) -> Result<()> {
    let fixture = fixture()?;
    let instance = fixture.testbed.boot(
        &fixture.baked,
        InstanceConfig::new(case.instance).with_tag("role", "app"),
    )?;
    let cat = format!("cat {}", case.path);
    let mode = format!("stat -c %a {}", case.path);

    // Applied: the package installs the file, the edit follows and
    // notifies the exec once; the file keeps the package's mode.
    write_roles(&instance, &role(case.resource))?;
    let output = apply_expecting(&instance, &[], 2, "the first run changes things")?;
    ensure!(
        output.contains(&format!("changed {}", case.reference)),
        "the first run names the edit:\n{output}"
    );
    let converged = run(&instance, &cat)?;
    ensure!(
        converged == case.converged,
        "after the first run {} is\n{converged}\nexpected\n{}",
        case.path,
        case.converged
    );
    let shipped_mode = if case.path.ends_with("php.ini") {
        "640"
    } else {
        "644"
    };
    ensure!(
        run(&instance, &mode)?.trim() == shipped_mode,
        "the edit keeps the file's mode"
    );
    ensure!(reloads(&instance)? == 1, "the edit notified the exec once");

    // A second run: nothing to do, nothing notified.
    apply_expecting(&instance, &[], 0, "the second run changes nothing")?;
    ensure!(reloads(&instance)? == 1, "the second run notified nothing");

    // Drift, then --noop: the change is reported, nothing is written.
    run(&instance, case.drift)?;
    let drifted = run(&instance, &cat)?;
    ensure!(drifted != case.converged, "the drift changed the file");
    let output = apply_expecting(&instance, &["--noop"], 2, "--noop with drift")?;
    ensure!(
        output.contains(&format!("would change {}", case.reference)),
        "--noop names the resource:\n{output}"
    );
    for expected in case.noop_shows {
        ensure!(
            output.contains(expected),
            "--noop shows {expected:?}:\n{output}"
        );
    }
    ensure!(run(&instance, &cat)? == drifted, "--noop wrote nothing");
    ensure!(reloads(&instance)? == 1, "--noop ran nothing");

    // A real run repairs the drift and notifies again.
    let output = apply_expecting(&instance, &[], 2, "the repair changes the file")?;
    ensure!(
        run(&instance, &cat)? == case.converged,
        "the drift is repaired:\n{output}"
    );
    ensure!(reloads(&instance)? == 2, "the repair notified the exec");

    // A bad value: refused with its file, line and field; nothing runs.
    write_roles(&instance, &role(case.bad_resource))?;
    let output = apply_expecting(&instance, &[], 1, "a bad value stops the run")?;
    ensure!(
        output.contains(case.refused_with),
        "the refusal says {:?}:\n{output}",
        case.refused_with
    );
    ensure!(
        run(&instance, &cat)? == case.converged,
        "a refused role changes nothing"
    );

    let name = instance.name().to_string();
    instance.shutdown()?;
    let leftovers = find_leftovers_of_instance(fixture.testbed.settings(), &name)?;
    ensure!(leftovers.is_empty(), "after {name}'s teardown, {leftovers}");
    Ok(())
}

#[test]
fn line_edits_a_shipped_sshd_config_idempotently_repairs_drift_and_refuses_a_bad_pattern()
-> Result<()> {
    exercise(&Case {
        instance: "edits-line",
        path: "/etc/cms-test/sshd_config",
        reference: "line:/etc/cms-test/sshd_config",
        resource: r#"[[line]]
path = "/etc/cms-test/sshd_config"
lines = [
  { line = "PermitRootLogin no", match = "^#?PermitRootLogin" },
  { line = "AllowGroups ssh", after = "^Port " },
  { match = "^PasswordAuthentication", ensure = "absent" },
]"#,
        converged: "# shipped by cms-test-config\nPort 22\nAllowGroups ssh\nPermitRootLogin no\n",
        drift: "sed -i 's/^PermitRootLogin no$/PermitRootLogin yes/' /etc/cms-test/sshd_config",
        noop_shows: &[
            "line: PermitRootLogin yes -> PermitRootLogin no",
            "-PermitRootLogin yes",
            "+PermitRootLogin no",
        ],
        bad_resource: r#"[[line]]
path = "/etc/cms-test/sshd_config"
lines = [{ line = "PermitRootLogin no", match = "^(PermitRootLogin" }]"#,
        refused_with: "roles/app.toml:7:1: lines entry 1: `match` is not a valid regular expression",
    })
}

#[test]
fn ini_sets_keys_of_a_shipped_php_ini_keeping_comments_and_refuses_a_list_value() -> Result<()> {
    exercise(&Case {
        instance: "edits-ini",
        path: "/etc/cms-test/php.ini",
        reference: "ini:/etc/cms-test/php.ini",
        resource: r#"[[ini]]
path = "/etc/cms-test/php.ini"
remove = ["PHP.expose_php"]
settings = { PHP = { memory_limit = "256M" }, Date = { "date.timezone" = "UTC" } }"#,
        converged: "; shipped by cms-test-config\n[PHP]\nmemory_limit = 256M ; per script\n\n[Date]\ndate.timezone = UTC\n;date.timezone =\n",
        drift: "sed -i 's/^memory_limit = 256M/memory_limit = 64M/' /etc/cms-test/php.ini",
        noop_shows: &[
            "key PHP.memory_limit: 64M -> 256M",
            "+memory_limit = 256M ; per script",
        ],
        bad_resource: r#"[[ini]]
path = "/etc/cms-test/php.ini"
settings = { PHP = { memory_limit = ["256M"] } }"#,
        refused_with: "roles/app.toml:7:1: settings: `PHP.memory_limit` is a list, but ini values are strings, numbers or booleans",
    })
}

#[test]
fn properties_sets_escaped_values_in_a_shipped_file_and_refuses_an_empty_key() -> Result<()> {
    exercise(&Case {
        instance: "edits-properties",
        path: "/etc/cms-test/app.properties",
        reference: "properties:/etc/cms-test/app.properties",
        resource: r#"[[properties]]
path = "/etc/cms-test/app.properties"
settings = { server.port = 9090, "db.url" = "jdbc:postgresql://db:5432/app" }"#,
        converged: "# shipped by cms-test-config\nserver.port=9090\n! the database\ndb.url=jdbc\\:postgresql\\://db\\:5432/app\n",
        drift: "sed -i 's/^server.port=9090$/server.port=1/' /etc/cms-test/app.properties",
        noop_shows: &["key server.port: 1 -> 9090"],
        bad_resource: r#"[[properties]]
path = "/etc/cms-test/app.properties"
remove = [""]"#,
        refused_with: "roles/app.toml:7:1: remove: `` has an empty key",
    })
}

#[test]
fn json_sets_typed_values_by_path_in_a_shipped_file_and_refuses_a_key_both_set_and_removed()
-> Result<()> {
    exercise(&Case {
        instance: "edits-json",
        path: "/etc/cms-test/app.json",
        reference: "json:/etc/cms-test/app.json",
        resource: r#"[[json]]
path = "/etc/cms-test/app.json"
remove = ["debug"]
settings = { "server.port" = 9090, server.tls = true, logging = { level = "info" } }"#,
        converged: "{\n  \"name\": \"app\",\n  \"server\": {\n    \"port\": 9090,\n    \"tls\": true\n  },\n  \"logging\": {\n    \"level\": \"info\"\n  }\n}\n",
        drift: "sed -i 's/\"port\": 9090/\"port\": \"9090\"/' /etc/cms-test/app.json",
        noop_shows: &["key server.port: \"9090\" -> 9090"],
        bad_resource: r#"[[json]]
path = "/etc/cms-test/app.json"
remove = ["debug"]
settings = { debug = false }"#,
        refused_with: "roles/app.toml:7:1: `debug` is both in settings and in remove (or twice): keep it in one place",
    })
}

#[test]
fn yaml_sets_keys_of_a_shipped_block_file_keeping_comments_and_refuses_a_relative_path()
-> Result<()> {
    exercise(&Case {
        instance: "edits-yaml",
        path: "/etc/cms-test/app.yaml",
        reference: "yaml:/etc/cms-test/app.yaml",
        resource: r#"[[yaml]]
path = "/etc/cms-test/app.yaml"
settings = { server = { port = 9090, host = "0.0.0.0" }, logging.level = "on", logging.file = "/var/log/app: main.log" }"#,
        converged: "# shipped by cms-test-config\nserver:\n  port: 9090  # the default\n  host: 0.0.0.0\nlogging:\n  level: \"on\"\n  file: \"/var/log/app: main.log\"\n",
        drift: "sed -i 's/^  port: 9090/  port: 80/' /etc/cms-test/app.yaml",
        noop_shows: &["key server.port: 80 -> 9090"],
        bad_resource: r#"[[yaml]]
path = "etc/cms-test/app.yaml"
settings = { server.port = 9090 }"#,
        refused_with: "roles/app.toml:6:1: path `etc/cms-test/app.yaml` must be absolute",
    })
}
