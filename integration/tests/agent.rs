//! `cms-agent apply` inside real instances: packages from the internal apt
//! repository, systemd services, users and groups, package sources, and
//! commands, converged from scratch, unchanged on the second run, repaired
//! after drift, and never touched by `--noop`.
//!
//! One behaviour per test. The testbed, the internal package repository and
//! the baked image are shared by the tests of this binary (see
//! [`SharedFixture`]); each test boots an instance of its own, so that no
//! test sees what another one converged and tests run side by side.

use std::sync::{Arc, Mutex};

use anyhow::{Result, ensure};
use cms_integration::{
    BakedImage, DebPackageSpec, HttpFileServer, Instance, InstanceConfig, PackageRepo,
    SharedFixture, Testbed, TestbedSettings, bake_agent_image, check_prerequisites,
};

/// What the tests share: the testbed, the internal repository holding the
/// test daemon 1.0 and the test tool, and the image with the agent baked in.
struct Fixture {
    // Declared in teardown order.
    _package_server: HttpFileServer,
    testbed: Testbed,
    /// Behind a lock: the upgrade test adds the daemon's version 2.0.
    repo: Mutex<PackageRepo>,
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
        repo.build_package(&test_daemon("1.0"))?;
        repo.build_package(&test_tool("cms-test-tool"))?;
        let package_server = testbed.serve_package_repo(&repo)?;
        Ok(Fixture {
            _package_server: package_server,
            testbed,
            repo: Mutex::new(repo),
            baked,
        })
    })
}

/// Shuts the test's instance down and checks that nothing of it is left on
/// the host (the testbed itself lives on for the other tests).
fn shut_down_leaving_nothing(fixture: &Fixture, instance: Instance) -> Result<()> {
    fixture.testbed.shut_down_leaving_nothing(instance)
}

/// An instance of its own for one test, tagged `role=app`.
fn boot(fixture: &Fixture, name: &str) -> Result<Instance> {
    fixture.testbed.boot(
        &fixture.baked,
        InstanceConfig::new(name).with_tag("role", "app"),
    )
}

/// A daemon that records each start, so a test can count restarts.
fn test_daemon(version: &str) -> DebPackageSpec {
    DebPackageSpec::new("cms-test-daemon", version)
        .with_file(
            "/usr/bin/cms-test-daemon",
            format!("#!/bin/sh\nmkdir -p /var/lib/cms-test-daemon\necho \"start {version}\" >> /var/lib/cms-test-daemon/starts\nexec sleep infinity\n"),
            0o755,
        )
        .with_file(
            "/lib/systemd/system/cms-test-daemon.service",
            "[Unit]\nDescription=cms test daemon\n[Service]\nExecStart=/usr/bin/cms-test-daemon\n[Install]\nWantedBy=multi-user.target\n",
            0o644,
        )
}

fn test_tool(name: &str) -> DebPackageSpec {
    DebPackageSpec::new(name, "1.0").with_file(
        &format!("/usr/bin/{name}"),
        "#!/bin/sh\necho tool\n",
        0o755,
    )
}

const SETTINGS: &str = "[hierarchy]\nlayers = [\"common\"]\n";

/// The role, with the daemon's version, its config text and the tool's
/// ensure as parameters.
fn role(daemon_version: &str, config: &str, tool_ensure: &str, extra: &str) -> String {
    format!(
        r#"
[[group]]
name = "appgroup"
system = true

[[user]]
name = "appuser"
system = true
home = "/var/lib/appuser"
manage_home = true
shell = "/usr/sbin/nologin"
groups = ["appgroup"]
require = ["group:appgroup"]

[[package]]
name = "cms-test-daemon"
ensure = "{daemon_version}"

[[package]]
name = "cms-test-tool"
ensure = "{tool_ensure}"

[[file]]
path = "/etc/cms-test-daemon.conf"
content = "{config}"
owner = "appuser"
group = "appgroup"
mode = "0640"
require = ["user:appuser"]
notify = ["service:cms-test-daemon"]

[[file]]
path = "/etc/cms-test-daemon.extra"
content = "{config}"
notify = ["service:cms-test-daemon"]

[[service]]
name = "cms-test-daemon"
ensure = "running"
enable = true
require = ["package:cms-test-daemon"]

[[exec]]
name = "first-boot-marker"
command = "date > /var/tmp/first-boot"
creates = "/var/tmp/first-boot"
{extra}
"#
    )
}

fn write_roles(instance: &Instance, role_text: &str) -> Result<()> {
    instance.write_roles_repository(&[("cms.toml", SETTINGS), ("roles/app.toml", role_text)])
}

/// Runs `cms-agent apply` in the instance; returns the exit code and output.
fn apply(instance: &Instance, extra: &[&str]) -> Result<(i32, String)> {
    instance.apply_roles_repository("role=app", extra)
}

fn run(instance: &Instance, command: &str) -> Result<String> {
    instance.shell(command)
}

fn starts(instance: &Instance) -> Result<usize> {
    Ok(run(
        instance,
        "cat /var/lib/cms-test-daemon/starts 2>/dev/null || true",
    )?
    .lines()
    .count())
}

/// The role converged from scratch: the first run changes things (exit 2).
fn converge_from_scratch(instance: &Instance) -> Result<()> {
    write_roles(instance, &role("1.0", "v1", "present", ""))?;
    let (code, output) = apply(instance, &[])?;
    ensure!(
        code == 2,
        "first run should change things (exit 2), got {code}:\n{output}"
    );
    Ok(())
}

/// Drift on every kind of resource of the role: the service stopped and
/// disabled, the tool removed, the membership dropped, a file overwritten.
fn drift(instance: &Instance) -> Result<()> {
    run(
        instance,
        "systemctl stop cms-test-daemon && systemctl disable cms-test-daemon 2>/dev/null; apt-get remove -y -q cms-test-tool >/dev/null 2>&1; gpasswd -d appuser appgroup >/dev/null; echo drift > /etc/cms-test-daemon.conf",
    )?;
    Ok(())
}

#[test]
fn a_first_run_installs_creates_and_starts_everything_and_starts_the_service_once() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "first-run")?;
    // From scratch: everything is made so; the service starts once, and the
    // notifications of its config files cause no extra restart, since it
    // started with them.
    write_roles(&instance, &role("1.0", "v1", "present", ""))?;
    let (code, output) = apply(&instance, &[])?;
    ensure!(
        code == 2,
        "first run should change things (exit 2), got {code}:\n{output}"
    );
    ensure!(
        run(&instance, "dpkg-query -W -f '${Version}' cms-test-daemon")? == "1.0",
        "daemon 1.0 installed"
    );
    ensure!(
        run(&instance, "systemctl is-active cms-test-daemon")? == "active",
        "service running"
    );
    ensure!(
        run(&instance, "systemctl is-enabled cms-test-daemon")? == "enabled",
        "service enabled"
    );
    ensure!(starts(&instance)? == 1, "started exactly once:\n{output}");
    ensure!(
        run(&instance, "id -nG appuser")?
            .split_whitespace()
            .any(|g| g == "appgroup"),
        "appuser in appgroup"
    );
    ensure!(
        run(&instance, "stat -c '%U:%G %a' /etc/cms-test-daemon.conf")? == "appuser:appgroup 640",
        "file owner and mode"
    );
    ensure!(
        run(&instance, "stat -c %U /var/lib/appuser")? == "appuser",
        "home directory"
    );
    ensure!(
        run(&instance, "test -f /var/tmp/first-boot && echo yes")? == "yes",
        "exec ran"
    );
    shut_down_leaving_nothing(&fixture, instance)
}

#[test]
fn a_second_run_changes_nothing_and_restarts_nothing() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "second-run")?;
    converge_from_scratch(&instance)?;
    let (code, output) = apply(&instance, &[])?;
    ensure!(
        code == 0,
        "second run should change nothing (exit 0), got {code}:\n{output}"
    );
    ensure!(starts(&instance)? == 1, "no restart on an unchanged run");
    shut_down_leaving_nothing(&fixture, instance)
}

#[test]
fn two_changed_files_that_notify_a_service_restart_it_once() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "two-notifications")?;
    converge_from_scratch(&instance)?;
    // Both config files change: the service restarts exactly once, after
    // both.
    write_roles(&instance, &role("1.0", "v2", "present", ""))?;
    let (code, output) = apply(&instance, &[])?;
    ensure!(code == 2, "config change, got {code}:\n{output}");
    ensure!(
        starts(&instance)? == 2,
        "one restart for two notifying files:\n{output}"
    );
    ensure!(
        output.contains("refresh: restarted cms-test-daemon.service"),
        "{output}"
    );
    shut_down_leaving_nothing(&fixture, instance)
}

#[test]
fn noop_prints_the_restart_a_file_change_would_cause_and_restarts_nothing() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "noop-restart")?;
    converge_from_scratch(&instance)?;
    write_roles(&instance, &role("1.0", "v2", "present", ""))?;
    let (code, output) = apply(&instance, &["--noop"])?;
    ensure!(
        code == 2,
        "noop with a change should exit 2, got {code}:\n{output}"
    );
    for expected in [
        "would change file:/etc/cms-test-daemon.conf",
        "would change file:/etc/cms-test-daemon.extra",
        "refresh: would restart cms-test-daemon.service",
    ] {
        ensure!(
            output.contains(expected),
            "noop output lacks {expected:?}:\n{output}"
        );
    }
    ensure!(
        output
            .matches("would restart cms-test-daemon.service")
            .count()
            == 1,
        "one restart announced for two notifying files:\n{output}"
    );
    ensure!(starts(&instance)? == 1, "noop restarted nothing");
    ensure!(
        run(&instance, "cat /etc/cms-test-daemon.conf")? == "v1",
        "noop wrote nothing"
    );
    shut_down_leaving_nothing(&fixture, instance)
}

#[test]
fn noop_shows_every_drift_and_changes_nothing() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "noop-drift")?;
    converge_from_scratch(&instance)?;
    write_roles(&instance, &role("1.0", "v2", "present", ""))?;
    let (code, output) = apply(&instance, &[])?;
    ensure!(code == 2, "config change, got {code}:\n{output}");
    // Drift, then --noop: every difference shown, nothing changed.
    drift(&instance)?;
    let (code, output) = apply(&instance, &["--noop"])?;
    ensure!(
        code == 2,
        "noop with drift should exit 2, got {code}:\n{output}"
    );
    for expected in [
        "would change package:cms-test-tool",
        "would change service:cms-test-daemon",
        "would change user:appuser",
        "would change file:/etc/cms-test-daemon.conf",
        "-drift",
    ] {
        ensure!(
            output.contains(expected),
            "noop output lacks {expected:?}:\n{output}"
        );
    }
    ensure!(
        run(&instance, "systemctl is-active cms-test-daemon || true")? != "active",
        "noop started nothing"
    );
    ensure!(
        run(&instance, "cat /etc/cms-test-daemon.conf")? == "drift",
        "noop wrote nothing"
    );
    shut_down_leaving_nothing(&fixture, instance)
}

#[test]
fn a_run_repairs_every_drift_and_leaves_nothing_to_do() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "repair")?;
    converge_from_scratch(&instance)?;
    write_roles(&instance, &role("1.0", "v2", "present", ""))?;
    let (code, output) = apply(&instance, &[])?;
    ensure!(code == 2, "config change, got {code}:\n{output}");
    drift(&instance)?;
    // A real run repairs all of it.
    let (code, output) = apply(&instance, &[])?;
    ensure!(code == 2, "repair run, got {code}:\n{output}");
    ensure!(
        run(&instance, "systemctl is-active cms-test-daemon")? == "active",
        "service running again"
    );
    ensure!(
        run(&instance, "systemctl is-enabled cms-test-daemon")? == "enabled",
        "service enabled again"
    );
    ensure!(
        run(&instance, "dpkg-query -W -f '${Status}' cms-test-tool")? == "install ok installed",
        "tool reinstalled"
    );
    ensure!(
        run(&instance, "id -nG appuser")?
            .split_whitespace()
            .any(|g| g == "appgroup"),
        "membership repaired"
    );
    ensure!(
        run(&instance, "cat /etc/cms-test-daemon.conf")? == "v2",
        "file repaired"
    );
    let (code, output) = apply(&instance, &[])?;
    ensure!(
        code == 0,
        "after repair nothing is left to do, got {code}:\n{output}"
    );
    shut_down_leaving_nothing(&fixture, instance)
}

#[test]
fn a_declared_package_source_brings_a_new_version_and_a_package_is_removed() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "upgrade")?;
    converge_from_scratch(&instance)?;
    // A new version and a package to remove, through a package source the
    // role declares; the index is refreshed once for the new version, which
    // the instance's package lists do not know yet.
    {
        let mut repo = fixture.repo.lock().unwrap_or_else(|p| p.into_inner());
        repo.build_package(&test_daemon("2.0"))?;
    }
    let url = fixture.testbed.package_repo_url();
    let source = format!(
        "\n[[repository]]\nname = \"internal\"\nuri = \"{url}\"\nsuite = \"./\"\ntrusted = true\n"
    );
    let mut upgraded = role("2.0", "v1", "absent", &source);
    upgraded = upgraded.replacen(
        "ensure = \"2.0\"",
        "ensure = \"2.0\"\nrequire = [\"repository:internal\"]",
        1,
    );
    write_roles(&instance, &upgraded)?;
    let (code, output) = apply(&instance, &[])?;
    ensure!(code == 2, "upgrade run, got {code}:\n{output}");
    ensure!(
        run(&instance, "dpkg-query -W -f '${Version}' cms-test-daemon")? == "2.0",
        "daemon upgraded:\n{output}"
    );
    ensure!(
        run(
            &instance,
            "dpkg-query -W -f '${Status}' cms-test-tool 2>/dev/null || true"
        )? != "install ok installed",
        "tool removed"
    );
    ensure!(
        run(&instance, "cat /etc/apt/sources.list.d/internal.list")?
            .contains(&format!("deb [trusted=yes] {url} ./")),
        "package source written"
    );
    let (code, output) = apply(&instance, &[])?;
    ensure!(
        code == 0,
        "after the upgrade nothing is left to do, got {code}:\n{output}"
    );
    shut_down_leaving_nothing(&fixture, instance)
}

/// apt-get update only warns, and exits 0, when a source cannot be
/// reached; a package version the index then lacks fails with what the
/// refresh could not fetch, not only with apt's "not found".
#[test]
fn a_package_missing_after_a_refresh_names_the_source_that_could_not_be_fetched() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "unreachable")?;
    // The host's bridge address, on a port nothing listens on.
    let unreachable = format!("http://{}:1/", fixture.testbed.host_address());
    write_roles(
        &instance,
        &format!(
            r#"
[[repository]]
name = "elsewhere"
uri = "{unreachable}"
suite = "./"
trusted = true

[[package]]
name = "cms-test-daemon"
ensure = "9.9"
require = ["repository:elsewhere"]
"#
        ),
    )?;
    let (code, output) = apply(&instance, &[])?;
    ensure!(
        code == 6,
        "the source written, the package failed (exit 6), got {code}:\n{output}"
    );
    ensure!(
        output.contains("failed package:cms-test-daemon")
            && output.contains("which could not be fetched")
            && output.contains(&format!("W: Failed to fetch {unreachable}")),
        "the failure names the source the refresh could not fetch:\n{output}"
    );
    ensure!(
        output.contains("apt-get -y -q install --allow-downgrades cms-test-daemon=9.9"),
        "the failed command is shown without apt's options:\n{output}"
    );
    shut_down_leaving_nothing(&fixture, instance)
}

#[test]
fn a_failing_package_skips_its_dependents_and_the_rest_converges_in_an_instance() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "broken")?;
    write_roles(
        &instance,
        r#"
[[package]]
name = "no-such-package-anywhere"

[[service]]
name = "no-such-package-anywhere"
ensure = "running"
require = ["package:no-such-package-anywhere"]

[[package]]
name = "cms-test-tool"

[[file]]
path = "/etc/independent"
content = "converged\n"
"#,
    )?;
    let (code, output) = apply(&instance, &[])?;
    ensure!(
        code == 6,
        "changes and failures (exit 6), got {code}:\n{output}"
    );
    ensure!(
        output.contains("failed package:no-such-package-anywhere"),
        "{output}"
    );
    ensure!(
        output.contains("skipped service:no-such-package-anywhere"),
        "{output}"
    );
    ensure!(
        run(&instance, "dpkg-query -W -f '${Status}' cms-test-tool")? == "install ok installed",
        "{output}"
    );
    ensure!(
        run(&instance, "cat /etc/independent")? == "converged",
        "{output}"
    );
    shut_down_leaving_nothing(&fixture, instance)
}
