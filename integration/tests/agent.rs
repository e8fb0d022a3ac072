//! `cms-agent apply` inside real instances: packages from the internal apt
//! repository, systemd services, users and groups, package sources, and
//! commands, converged from scratch, unchanged on the second run, repaired
//! after drift, and never touched by `--noop`.

use anyhow::{Context, Result, ensure};
use cms_integration::{
    DebPackageSpec, HOST_ADDRESS, Instance, InstanceConfig, PACKAGE_REPO_PORT, PackageRepo,
    Testbed, bake_agent_image, begin_end_to_end_test, find_leftovers,
};

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
    let repo = instance.root_directory().join("srv/roles");
    for (path, text) in [("cms.toml", SETTINGS), ("roles/app.toml", role_text)] {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Runs `cms-agent apply` in the instance; returns the exit code and output.
fn apply(instance: &Instance, extra: &[&str]) -> Result<(i32, String)> {
    let mut args = vec![
        "cms-agent",
        "apply",
        "--repo",
        "/srv/roles",
        "--tags",
        "role=app",
    ];
    args.extend_from_slice(extra);
    let output = instance.run(&args)?;
    let text = format!("{}{}", output.stdout, output.stderr);
    Ok((output.exit_code.unwrap_or(-1), text))
}

fn run(instance: &Instance, command: &str) -> Result<String> {
    Ok(instance
        .run_successfully(&["sh", "-c", command])?
        .stdout
        .trim()
        .to_string())
}

fn starts(instance: &Instance) -> Result<usize> {
    Ok(run(
        instance,
        "cat /var/lib/cms-test-daemon/starts 2>/dev/null || true",
    )?
    .lines()
    .count())
}

#[test]
fn packages_services_users_and_commands_converge_idempotently_and_repair_drift() -> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let baked = bake_agent_image(&settings)?;
    let testbed = Testbed::start(&settings)?;
    let mut repo = PackageRepo::create(&settings)?;
    repo.build_package(&test_daemon("1.0"))?;
    repo.build_package(&test_tool("cms-test-tool"))?;
    let server = testbed.serve_package_repo(&repo)?;
    let instance = testbed.boot(&baked, InstanceConfig::new("app").with_tag("role", "app"))?;

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

    // Second run: nothing to do.
    let (code, output) = apply(&instance, &[])?;
    ensure!(
        code == 0,
        "second run should change nothing (exit 0), got {code}:\n{output}"
    );
    ensure!(starts(&instance)? == 1, "no restart on an unchanged run");

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

    // Drift, then --noop: every difference shown, nothing changed.
    run(
        &instance,
        "systemctl stop cms-test-daemon && systemctl disable cms-test-daemon 2>/dev/null; apt-get remove -y -q cms-test-tool >/dev/null 2>&1; gpasswd -d appuser appgroup >/dev/null; echo drift > /etc/cms-test-daemon.conf",
    )?;
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

    // A new version and a package to remove, through a package source the
    // role declares; the index is refreshed once for the new version.
    repo.build_package(&test_daemon("2.0"))?;
    let source = format!(
        "\n[[repository]]\nname = \"internal\"\nuri = \"http://{HOST_ADDRESS}:{PACKAGE_REPO_PORT}/\"\nsuite = \"./\"\ntrusted = true\n"
    );
    let mut upgraded = role("2.0", "v2", "absent", &source);
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
        run(&instance, "cat /etc/apt/sources.list.d/internal.list")?.contains(&format!(
            "deb [trusted=yes] http://{HOST_ADDRESS}:{PACKAGE_REPO_PORT}/ ./"
        )),
        "package source written"
    );
    let (code, output) = apply(&instance, &[])?;
    ensure!(
        code == 0,
        "after the upgrade nothing is left to do, got {code}:\n{output}"
    );

    instance.shutdown()?;
    drop(server);
    testbed.shutdown()?;
    drop((repo, baked));
    let leftovers = find_leftovers(&settings)?;
    ensure!(leftovers.is_empty(), "after teardown, {leftovers}");
    Ok(())
}

#[test]
fn a_failing_package_skips_its_dependents_and_the_rest_converges_in_an_instance() -> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let baked = bake_agent_image(&settings)?;
    let testbed = Testbed::start(&settings)?;
    let mut repo = PackageRepo::create(&settings)?;
    repo.build_package(&test_tool("cms-test-tool"))?;
    let server = testbed.serve_package_repo(&repo)?;
    let instance = testbed.boot(
        &baked,
        InstanceConfig::new("broken").with_tag("role", "app"),
    )?;
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
    instance.shutdown()?;
    drop(server);
    testbed.shutdown()?;
    Ok(())
}
