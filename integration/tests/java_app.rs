//! `java_app` end to end: a real JVM (`openjdk-17-jre-headless` from the
//! internal package repository) in a real instance, running a tiny Java
//! HTTP application (`integration/fixtures/java-app/Greeter.java`) that the
//! test compiles with the host's javac, fetched as a jar from an artifact
//! server on the bridge. One instance goes through the whole life of an
//! app: first deployment (with the heap as a share of memory), an
//! unchanged run, a property change (under --noop, then for real, with a
//! notifying file), a notification alone, a new version, a broken
//! configuration rolled back, a jar whose sha256 is wrong, a third version
//! that prunes the oldest release, a first deployment of another app that
//! never becomes healthy, and removal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use cms_integration::{
    HOST_ADDRESS, HttpFileServer, Image, ImageRecipe, Instance, InstanceConfig, PackageRepo,
    Testbed, bake_agent_image, begin_end_to_end_test, find_leftovers,
};
use sha2::{Digest, Sha256};

const RUNTIME: &str = "openjdk-17-jre-headless";
const SETTINGS: &str = "[hierarchy]\nlayers = [\"common\"]\n";
const HEAP_PERCENT: u64 = 25;

/// Compiles the fixture once and packs one jar per version, each with its
/// `version.txt`.
fn build_jars(work: &Path, versions: &[&str]) -> Result<Vec<PathBuf>> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/java-app/Greeter.java");
    let classes = work.join("classes");
    run_host(
        Command::new("javac")
            .args(["--release", "17", "-d"])
            .arg(&classes)
            .arg(&source),
        "javac",
    )?;
    let mut jars = Vec::new();
    for version in versions {
        std::fs::write(classes.join("version.txt"), format!("{version}\n"))?;
        let jar = work.join(format!("greeter-{version}.jar"));
        run_host(
            Command::new("jar")
                .args(["--create", "--file"])
                .arg(&jar)
                .args(["--main-class", "Greeter", "-C"])
                .arg(&classes)
                .arg("."),
            "jar",
        )?;
        jars.push(jar);
    }
    Ok(jars)
}

fn run_host(command: &mut Command, tool: &str) -> Result<()> {
    let output = command.output().with_context(|| {
        format!("Failed to run {tool}\nhint: install openjdk-17-jdk-headless (scripts/test does)")
    })?;
    if !output.status.success() {
        bail!("{tool} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The role: the greeter from `url` with `sha256`, saying `greeting`, plus
/// whatever `extra` declares.
fn role(url: &str, sha256: &str, greeting: &str, extra: &str) -> String {
    format!(
        r#"
[[java_app]]
name = "greeter"
runtime_package = "{RUNTIME}"
artifact = {{ url = "{url}", sha256 = "{sha256}" }}
heap = "{HEAP_PERCENT}%"
jvm_options = ["-XX:+UseSerialGC", "-Xss512k"]
health = {{ http = "http://127.0.0.1:8080/health", timeout = "120s" }}
keep_releases = 1
environment = {{ GREETER_ENV = "test" }}
limits = {{ nofile = 4096 }}

[java_app.properties]
"server.port" = 8080
greeting = "{greeting}"
"starts.file" = "/var/lib/greeter/starts"
{extra}
"#
    )
}

/// A file that notifies the app.
fn notifying_file(content: &str) -> String {
    format!(
        "\n[[file]]\npath = \"/etc/greeter-feature\"\ncontent = \"{content}\"\nnotify = [\"java_app:greeter\"]\n"
    )
}

fn write_roles(instance: &Instance, role_text: &str) -> Result<()> {
    let repo = instance.root_directory().join("srv/roles");
    for (path, text) in [("cms.toml", SETTINGS), ("roles/api.toml", role_text)] {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// `cms-agent apply` in the instance: exit code and output.
fn apply(instance: &Instance) -> Result<(i32, String)> {
    apply_with(instance, &[])
}

fn apply_with(instance: &Instance, extra: &[&str]) -> Result<(i32, String)> {
    let mut args = vec![
        "cms-agent",
        "apply",
        "--repo",
        "/srv/roles",
        "--tags",
        "role=api",
    ];
    args.extend_from_slice(extra);
    let output = instance.run(&args)?;
    Ok((
        output.exit_code.unwrap_or(-1),
        format!("{}{}", output.stdout, output.stderr),
    ))
}

fn run(instance: &Instance, command: &str) -> Result<String> {
    Ok(instance
        .run_successfully(&["sh", "-c", command])?
        .stdout
        .trim()
        .to_string())
}

/// GET a path of an app inside the instance (bash's /dev/tcp: the image
/// has no HTTP client); the body, or an empty string when nothing answers.
fn get(instance: &Instance, port: u16, path: &str) -> Result<String> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} || exit 0; printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3; cat <&3"
    );
    let response = instance.run(&["bash", "-c", &script])?.stdout;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

fn starts(instance: &Instance) -> Result<Vec<String>> {
    Ok(
        run(instance, "cat /var/lib/greeter/starts 2>/dev/null || true")?
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

#[test]
fn a_java_app_deploys_restarts_once_per_change_upgrades_and_rolls_back_a_broken_config()
-> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let work = tempfile::tempdir()?;
    let jars = build_jars(work.path(), &["1", "2", "3"])?;
    let sha: Vec<String> = jars
        .iter()
        .map(|jar| sha256_file(jar))
        .collect::<Result<_>>()?;

    let baked = bake_agent_image(&settings)?;
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
    let testbed = Testbed::start(&settings)?;
    let mut repo = PackageRepo::create(&settings)?;
    repo.download_with_dependencies(&image, &[RUNTIME])?;
    let package_server = testbed.serve_package_repo(&repo)?;
    let artifacts = HttpFileServer::start(SocketAddr::from((HOST_ADDRESS, 0)), work.path())?;
    let url = |version: &str| format!("{}greeter-{version}.jar", artifacts.url());
    let instance = testbed.boot(&baked, InstanceConfig::new("java").with_tag("role", "api"))?;
    let downloads = || {
        artifacts
            .requests_from(instance.address().into())
            .into_iter()
            .filter(|entry| entry.target.ends_with(".jar"))
            .count()
    };

    // First deployment from scratch: runtime installed, account, folders,
    // release, unit; the app answers with its configured greeting.
    write_roles(&instance, &role(&url("1"), &sha[0], "hello", ""))?;
    let (code, output) = apply(&instance)?;
    ensure!(
        code == 2,
        "first deployment changes (exit 2), got {code}:\n{output}"
    );
    ensure!(
        run(
            &instance,
            &format!("dpkg-query -W -f '${{Status}}' {RUNTIME}")
        )? == "install ok installed",
        "runtime installed:\n{output}"
    );
    ensure!(run(&instance, "id -nu greeter && id -ng greeter")? == "greeter\ngreeter");
    ensure!(run(&instance, "systemctl is-active greeter")? == "active");
    ensure!(run(&instance, "systemctl is-enabled greeter")? == "enabled");
    ensure!(
        get(&instance, 8080, "/greeting")? == "hello",
        "greeting:\n{output}"
    );
    ensure!(get(&instance, 8080, "/version")? == "1");
    ensure!(run(&instance, "readlink /opt/greeter/current")? == format!("releases/{}.jar", sha[0]));
    ensure!(
        run(
            &instance,
            "stat -c '%U:%G %a' /opt/greeter/config/application.properties /var/lib/greeter /var/log/greeter"
        )? == "root:greeter 640\ngreeter:greeter 750\ngreeter:greeter 750"
    );
    ensure!(
        run(&instance, "systemctl show -p Environment --value greeter")?
            .contains("GREETER_ENV=test")
    );
    ensure!(starts(&instance)? == ["start 1"], "started once");
    ensure!(downloads() == 1, "one download");

    // The heap given as a share of memory is that share of this instance's
    // MemTotal, in whole MiB, on the running JVM's command line.
    let memory_kb: u64 = run(&instance, "awk '/^MemTotal:/ {print $2}' /proc/meminfo")?.parse()?;
    let expected_heap = format!("-Xmx{}m", memory_kb / 1024 * HEAP_PERCENT / 100);
    let command_line = run(
        &instance,
        "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value greeter)/cmdline",
    )?;
    ensure!(
        command_line.contains(&format!(
            "{expected_heap} -XX:+UseSerialGC -Xss512k -jar /opt/greeter/current"
        )),
        "expected {expected_heap} in {command_line:?}"
    );

    // An unchanged run: no change, no restart, no download.
    let (code, output) = apply(&instance)?;
    ensure!(
        code == 0,
        "second run changes nothing (exit 0), got {code}:\n{output}"
    );
    ensure!(starts(&instance)?.len() == 1, "no restart");
    ensure!(downloads() == 1, "no download on an unchanged run");
    eprintln!("unchanged run:\n{output}");

    // A property change under --noop: shown with its diff, nothing done.
    write_roles(
        &instance,
        &role(&url("1"), &sha[0], "bonjour", &notifying_file("on")),
    )?;
    let (code, output) = apply_with(&instance, &["--noop"])?;
    ensure!(
        code == 2,
        "noop with a change (exit 2), got {code}:\n{output}"
    );
    ensure!(output.contains("would change java_app:greeter"), "{output}");
    ensure!(output.contains("+greeting=bonjour"), "{output}");
    ensure!(starts(&instance)?.len() == 1, "noop restarted nothing");
    ensure!(
        get(&instance, 8080, "/greeting")? == "hello",
        "noop changed nothing"
    );

    // A property change, and a file that notifies the app: one restart,
    // the new value served.
    let (code, output) = apply(&instance)?;
    ensure!(code == 2, "property change (exit 2), got {code}:\n{output}");
    ensure!(
        output.contains("+greeting=bonjour"),
        "the diff is shown:\n{output}"
    );
    ensure!(
        starts(&instance)? == ["start 1", "start 1"],
        "restarted once for its own change and the notification:\n{output}"
    );
    ensure!(get(&instance, 8080, "/greeting")? == "bonjour");

    // Only the notifying file changes: the app restarts once, health-checked.
    write_roles(
        &instance,
        &role(&url("1"), &sha[0], "bonjour", &notifying_file("off")),
    )?;
    let (code, output) = apply(&instance)?;
    ensure!(code == 2, "notification (exit 2), got {code}:\n{output}");
    ensure!(
        output.contains("refresh: restarted greeter.service; it is healthy"),
        "{output}"
    );
    ensure!(starts(&instance)?.len() == 3, "restarted once:\n{output}");

    // A new version: downloaded, made current, one restart; the previous
    // release is kept for rollback.
    write_roles(&instance, &role(&url("2"), &sha[1], "bonjour", ""))?;
    let (code, output) = apply(&instance)?;
    ensure!(code == 2, "new version (exit 2), got {code}:\n{output}");
    ensure!(get(&instance, 8080, "/version")? == "2", "{output}");
    ensure!(starts(&instance)?.len() == 4, "restarted once");
    ensure!(
        run(&instance, "ls /opt/greeter/releases")? == {
            let mut kept = [format!("{}.jar", sha[0]), format!("{}.jar", sha[1])];
            kept.sort();
            kept.join("\n")
        },
        "both releases kept"
    );

    // A broken configuration: the app exits, the release and configuration
    // are rolled back, the old value is served again, and the failure
    // carries the app's own log lines.
    write_roles(&instance, &role(&url("2"), &sha[1], "", ""))?;
    let (code, output) = apply(&instance)?;
    ensure!(
        code == 4,
        "a broken config fails (exit 4), got {code}:\n{output}"
    );
    for expected in [
        "failed java_app:greeter",
        "is not healthy after its restart",
        "rolled back to release",
        "it is healthy again",
        "invalid configuration: greeting is empty",
    ] {
        ensure!(
            output.contains(expected),
            "output lacks {expected:?}:\n{output}"
        );
    }
    ensure!(
        get(&instance, 8080, "/greeting")? == "bonjour",
        "old value served again"
    );
    ensure!(run(&instance, "systemctl is-active greeter")? == "active");
    ensure!(
        run(
            &instance,
            "grep greeting /opt/greeter/config/application.properties"
        )? == "greeting=bonjour"
    );

    // The good configuration again: converges back with nothing to change.
    write_roles(&instance, &role(&url("2"), &sha[1], "bonjour", ""))?;
    let (code, output) = apply(&instance)?;
    ensure!(
        code == 0,
        "after the rollback the good catalog is in place, got {code}:\n{output}"
    );

    // A jar whose sha256 is not the catalog's: a failure that changes
    // nothing: no release, no temporary file, no restart.
    let before = starts(&instance)?.len();
    let wrong = "0".repeat(64);
    write_roles(&instance, &role(&url("3"), &wrong, "bonjour", ""))?;
    let (code, output) = apply(&instance)?;
    ensure!(
        code == 4,
        "a wrong sha256 fails (exit 4), got {code}:\n{output}"
    );
    ensure!(
        output.contains(&format!("its sha256 is {}, not the {wrong}", sha[2])),
        "{output}"
    );
    ensure!(
        run(&instance, "ls -A /opt/greeter/releases | wc -l")? == "2",
        "nothing added to the releases"
    );
    ensure!(run(&instance, "readlink /opt/greeter/current")? == format!("releases/{}.jar", sha[1]));
    ensure!(starts(&instance)?.len() == before, "no restart");
    ensure!(get(&instance, 8080, "/version")? == "2");

    // The right jar for version 3: deployed, and with keep_releases = 1 the
    // oldest release is pruned, the one before kept.
    write_roles(&instance, &role(&url("3"), &sha[2], "bonjour", ""))?;
    let (code, output) = apply(&instance)?;
    ensure!(code == 2, "version 3 (exit 2), got {code}:\n{output}");
    ensure!(get(&instance, 8080, "/version")? == "3", "{output}");
    ensure!(
        run(&instance, "ls -A /opt/greeter/releases")? == {
            let mut kept = [format!("{}.jar", sha[1]), format!("{}.jar", sha[2])];
            kept.sort();
            kept.join("\n")
        },
        "release 1 pruned, release 2 kept"
    );

    // A first deployment that never becomes healthy is a failure, and the
    // app is stopped rather than left crash-looping.
    let never = r#"
[[java_app]]
name = "never"
runtime_package = "openjdk-17-jre-headless"
artifact = { url = "URL", sha256 = "SHA" }
health = { tcp = 8081, timeout = "60s" }
properties = { "server.port" = 8081, greeting = "" }
"#
    .replace("URL", &url("2"))
    .replace("SHA", &sha[1]);
    write_roles(&instance, &role(&url("3"), &sha[2], "bonjour", &never))?;
    let (code, output) = apply(&instance)?;
    ensure!(
        code == 4,
        "a first deployment that never becomes healthy fails, got {code}:\n{output}"
    );
    ensure!(output.contains("failed java_app:never"), "{output}");
    ensure!(
        output.contains("a first deployment has nothing to roll back to"),
        "{output}"
    );
    ensure!(
        run(&instance, "systemctl is-active never || true")? != "active",
        "the failed first deployment is stopped"
    );
    ensure!(
        get(&instance, 8080, "/greeting")? == "bonjour",
        "the other app is untouched"
    );

    // Absent: stopped, disabled, unit and home removed; data and logs kept.
    write_roles(
        &instance,
        &role(&url("3"), &sha[2], "bonjour", "").replace(
            "name = \"greeter\"\n",
            "name = \"greeter\"\nensure = \"absent\"\n",
        ),
    )?;
    let (code, output) = apply(&instance)?;
    ensure!(code == 2, "removal (exit 2), got {code}:\n{output}");
    ensure!(
        run(&instance, "systemctl is-active greeter || true")? != "active",
        "{output}"
    );
    ensure!(
        run(
            &instance,
            "test -e /etc/systemd/system/greeter.service -o -e /opt/greeter && echo left || echo gone"
        )? == "gone"
    );
    ensure!(run(&instance, "test -d /var/lib/greeter && echo kept")? == "kept");
    let (code, output) = apply(&instance)?;
    ensure!(code == 0, "removed stays removed, got {code}:\n{output}");

    instance.shutdown()?;
    drop((package_server, artifacts));
    testbed.shutdown()?;
    drop((repo, baked));
    let leftovers = find_leftovers(&settings)?;
    ensure!(leftovers.is_empty(), "after teardown, {leftovers}");
    Ok(())
}
