//! `java_app` end to end: a real JVM (`openjdk-17-jre-headless` from the
//! internal package repository) in a real instance, running a tiny Java
//! HTTP application (`integration/fixtures/java-app/Greeter.java`) that the
//! test compiles with the host's javac, fetched as a jar from an artifact
//! server on the bridge.
//!
//! One behaviour per test: first deployment (with the heap as a share of
//! memory), an unchanged run, a property change (under --noop, then for
//! real, with a notifying file), a notification alone (under --noop, then
//! for real), a new version, a
//! broken configuration rolled back, a jar whose sha256 is wrong, a third
//! version that prunes the oldest release, a first deployment of another
//! app that never becomes healthy, and removal; and an app whose
//! configuration holds secrets, served by a real `cms-server` process
//! (one value encrypted in the repository, one from the SSM double),
//! searched for everywhere they must not show, and rotated.
//!
//! Installing the JVM takes most of the time, so the tests share one
//! instance (see [`SharedFixture`]) and take turns on it; each test deploys
//! an app of its own (its own name, port, roles folder and artifact URLs),
//! from scratch, so that no test depends on what another one left.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cms_integration::{
    AdminCli, AwsApiDouble, AwsSecretsDouble, GitRepo, HttpFileServer, Image, ImageRecipe,
    Instance, InstanceConfig, PackageRepo, ServerProcess, SharedFixture, TargetEventKind, Testbed,
    TestbedSettings, bake_agent_image, build_workspace_binary, check_prerequisites,
    wait_until_polling_every,
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

/// What the tests share: the jars of versions 1 to 3 (and their sha256),
/// the artifact server, and the instance, which the tests take turns on.
struct Fixture {
    // Declared in teardown order.
    instance: Mutex<Instance>,
    artifacts: HttpFileServer,
    _package_server: HttpFileServer,
    testbed: Testbed,
    _repo: PackageRepo,
    work: tempfile::TempDir,
    jars: Vec<PathBuf>,
    sha: Vec<String>,
}

static FIXTURE: SharedFixture<Fixture> = SharedFixture::new();

fn fixture() -> Result<Arc<Fixture>> {
    FIXTURE.get_or_start(|| {
        check_prerequisites()?;
        let settings = TestbedSettings::from_environment();
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
        let artifacts =
            HttpFileServer::start(SocketAddr::from((testbed.host_address(), 0)), work.path())?;
        let instance = testbed.boot(&baked, InstanceConfig::new("java").with_tag("role", "api"))?;
        Ok(Fixture {
            instance: Mutex::new(instance),
            artifacts,
            _package_server: package_server,
            testbed,
            _repo: repo,
            work,
            jars,
            sha,
        })
    })
}

/// One test's app on the shared instance: its name (also its user, unit and
/// folders), the port it serves on, and its own copies of the jars, so that
/// the artifact server's log tells its downloads from the others'.
struct App<'a> {
    name: &'static str,
    port: u16,
    fixture: &'a Fixture,
    instance: MutexGuard<'a, Instance>,
}

impl App<'_> {
    /// Waits for the instance, then gives `name` its jars.
    fn new<'a>(fixture: &'a Fixture, name: &'static str, port: u16) -> Result<App<'a>> {
        let instance = fixture
            .instance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let folder = fixture.work.path().join(name);
        std::fs::create_dir_all(&folder)?;
        for jar in &fixture.jars {
            std::fs::copy(jar, folder.join(jar.file_name().context("a jar's name")?))?;
        }
        Ok(App {
            name,
            port,
            fixture,
            instance,
        })
    }

    fn sha(&self, version: usize) -> &str {
        &self.fixture.sha[version - 1]
    }

    fn url(&self, version: usize) -> String {
        format!(
            "{}{}/greeter-{version}.jar",
            self.fixture.artifacts.url(),
            self.name
        )
    }

    /// The role: this app at `version` (its jar's sha256 unless `sha256`
    /// says otherwise), saying `greeting`, plus whatever `extra` declares.
    fn role(&self, version: usize, greeting: &str, extra: &str) -> String {
        self.role_with_sha(version, self.sha(version), greeting, extra)
    }

    fn role_with_sha(&self, version: usize, sha256: &str, greeting: &str, extra: &str) -> String {
        let (name, port, url) = (self.name, self.port, self.url(version));
        format!(
            r#"
[[java_app]]
name = "{name}"
runtime_package = "{RUNTIME}"
artifact = {{ url = "{url}", sha256 = "{sha256}" }}
heap = "{HEAP_PERCENT}%"
jvm_options = ["-XX:+UseSerialGC", "-Xss512k"]
health = {{ http = "http://127.0.0.1:{port}/health", timeout = "120s" }}
keep_releases = 1
environment = {{ GREETER_ENV = "test" }}
limits = {{ nofile = 4096 }}

[java_app.properties]
"server.port" = {port}
greeting = "{greeting}"
"starts.file" = "/var/lib/{name}/starts"
{extra}
"#
        )
    }

    /// A file that notifies the app.
    fn notifying_file(&self, content: &str) -> String {
        format!(
            "\n[[file]]\npath = \"/etc/{name}-feature\"\ncontent = \"{content}\"\nnotify = [\"java_app:{name}\"]\n",
            name = self.name
        )
    }

    fn write_roles(&self, role_text: &str) -> Result<()> {
        let repo = self
            .instance
            .root_directory()
            .join(format!("srv/roles-{}", self.name));
        for (path, text) in [("cms.toml", SETTINGS), ("roles/api.toml", role_text)] {
            let path = repo.join(path);
            std::fs::create_dir_all(path.parent().context("parent")?)?;
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }

    /// `cms-agent apply` of this app's roles in the instance: exit code and
    /// output.
    fn apply(&self) -> Result<(i32, String)> {
        self.apply_with(&[])
    }

    fn apply_with(&self, extra: &[&str]) -> Result<(i32, String)> {
        let repo = format!("/srv/roles-{}", self.name);
        let mut args = vec!["cms-agent", "apply", "--repo", &repo, "--tags", "role=api"];
        args.extend_from_slice(extra);
        let output = self.instance.run(&args)?;
        Ok((
            output.exit_code.unwrap_or(-1),
            format!("{}{}", output.stdout, output.stderr),
        ))
    }

    /// Writes the role and applies it, expecting changes (exit 2).
    fn deploy(&self, role_text: &str) -> Result<String> {
        self.write_roles(role_text)?;
        let (code, output) = self.apply()?;
        ensure!(
            code == 2,
            "deploying {} changes things (exit 2), got {code}:\n{output}",
            self.name
        );
        Ok(output)
    }

    fn run(&self, command: &str) -> Result<String> {
        Ok(self
            .instance
            .run_successfully(&["sh", "-c", command])?
            .stdout
            .trim()
            .to_string())
    }

    /// GET a path of the app inside the instance (bash's /dev/tcp: the
    /// image has no HTTP client); the body, or an empty string when nothing
    /// answers.
    fn get(&self, path: &str) -> Result<String> {
        get(&self.instance, self.port, path)
    }

    fn starts(&self) -> Result<Vec<String>> {
        Ok(self
            .run(&format!(
                "cat /var/lib/{}/starts 2>/dev/null || true",
                self.name
            ))?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// How many of this app's jars the instance downloaded.
    fn downloads(&self) -> usize {
        let prefix = format!("/{}/", self.name);
        self.fixture
            .artifacts
            .requests_from(self.instance.address().into())
            .into_iter()
            .filter(|entry| entry.target.starts_with(&prefix) && entry.target.ends_with(".jar"))
            .count()
    }

    /// The releases kept, as `ls` lists them: the named versions' jars.
    fn releases(&self, versions: &[usize]) -> String {
        let mut kept: Vec<String> = versions
            .iter()
            .map(|version| format!("{}.jar", self.sha(*version)))
            .collect();
        kept.sort();
        kept.join("\n")
    }

    /// Stops the app, so that the apps of earlier tests do not pile up in
    /// the instance's memory.
    fn stop(self) -> Result<()> {
        self.run(&format!("systemctl stop {} || true", self.name))?;
        Ok(())
    }
}

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

#[test]
fn a_first_deployment_installs_the_runtime_creates_the_app_and_serves_its_configuration()
-> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "first", 8101)?;
    // First deployment from scratch: runtime installed, account, folders,
    // release, unit; the app answers with its configured greeting.
    let output = app.deploy(&app.role(1, "hello", ""))?;
    ensure!(
        app.run(&format!("dpkg-query -W -f '${{Status}}' {RUNTIME}"))? == "install ok installed",
        "runtime installed:\n{output}"
    );
    ensure!(app.run("id -nu first && id -ng first")? == "first\nfirst");
    ensure!(app.run("systemctl is-active first")? == "active");
    ensure!(app.run("systemctl is-enabled first")? == "enabled");
    ensure!(app.get("/greeting")? == "hello", "greeting:\n{output}");
    ensure!(app.get("/version")? == "1");
    ensure!(app.run("readlink /opt/first/current")? == format!("releases/{}.jar", app.sha(1)));
    ensure!(
        app.run(
            "stat -c '%U:%G %a' /opt/first/config/application.properties /var/lib/first /var/log/first"
        )? == "root:first 640\nfirst:first 750\nfirst:first 750"
    );
    ensure!(
        app.run("systemctl show -p Environment --value first")?
            .contains("GREETER_ENV=test")
    );
    ensure!(app.starts()? == ["start 1"], "started once");
    ensure!(app.downloads() == 1, "one download");
    app.stop()
}

#[test]
fn the_heap_given_as_a_share_of_memory_is_that_share_of_the_instances_memory() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "heap", 8102)?;
    app.deploy(&app.role(1, "hello", ""))?;
    // The heap given as a share of memory is that share of this instance's
    // MemTotal, in whole MiB, on the running JVM's command line.
    let memory_kb: u64 = app
        .run("awk '/^MemTotal:/ {print $2}' /proc/meminfo")?
        .parse()?;
    let expected_heap = format!("-Xmx{}m", memory_kb / 1024 * HEAP_PERCENT / 100);
    let command_line =
        app.run("tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value heap)/cmdline")?;
    ensure!(
        command_line.contains(&format!(
            "{expected_heap} -XX:+UseSerialGC -Xss512k -jar /opt/heap/current"
        )),
        "expected {expected_heap} in {command_line:?}"
    );
    app.stop()
}

#[test]
fn an_unchanged_run_changes_restarts_and_downloads_nothing() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "unchanged", 8103)?;
    app.deploy(&app.role(1, "hello", ""))?;
    let (code, output) = app.apply()?;
    ensure!(
        code == 0,
        "second run changes nothing (exit 0), got {code}:\n{output}"
    );
    ensure!(app.starts()?.len() == 1, "no restart");
    ensure!(app.downloads() == 1, "no download on an unchanged run");
    app.stop()
}

#[test]
fn noop_shows_a_property_change_with_its_diff_and_changes_nothing() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "noop", 8104)?;
    app.deploy(&app.role(1, "hello", ""))?;
    // A property change under --noop: shown with its diff, nothing done.
    app.write_roles(&app.role(1, "bonjour", &app.notifying_file("on")))?;
    let (code, output) = app.apply_with(&["--noop"])?;
    ensure!(
        code == 2,
        "noop with a change (exit 2), got {code}:\n{output}"
    );
    ensure!(output.contains("would change java_app:noop"), "{output}");
    ensure!(output.contains("+greeting=bonjour"), "{output}");
    ensure!(app.starts()?.len() == 1, "noop restarted nothing");
    ensure!(app.get("/greeting")? == "hello", "noop changed nothing");
    app.stop()
}

#[test]
fn noop_prints_the_restart_a_notification_would_cause_and_restarts_nothing() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "noopnotify", 8113)?;
    app.deploy(&app.role(1, "hello", &app.notifying_file("on")))?;
    // Only the notifying file changes, under --noop: the restart it would
    // cause is announced, health check included, and nothing is done.
    app.write_roles(&app.role(1, "hello", &app.notifying_file("off")))?;
    let (code, output) = app.apply_with(&["--noop"])?;
    ensure!(
        code == 2,
        "noop with a change (exit 2), got {code}:\n{output}"
    );
    ensure!(
        output.contains("would change file:/etc/noopnotify-feature"),
        "{output}"
    );
    ensure!(
        output.contains("refresh: would restart noopnotify.service and wait until it is healthy"),
        "{output}"
    );
    ensure!(app.starts()?.len() == 1, "noop restarted nothing");
    ensure!(
        app.run("cat /etc/noopnotify-feature")? == "on",
        "noop wrote nothing"
    );
    app.stop()
}

#[test]
fn a_property_change_and_a_notifying_file_restart_the_app_once() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "change", 8105)?;
    app.deploy(&app.role(1, "hello", ""))?;
    // A property change, and a file that notifies the app: one restart,
    // the new value served.
    app.write_roles(&app.role(1, "bonjour", &app.notifying_file("on")))?;
    let (code, output) = app.apply()?;
    ensure!(code == 2, "property change (exit 2), got {code}:\n{output}");
    ensure!(
        output.contains("+greeting=bonjour"),
        "the diff is shown:\n{output}"
    );
    ensure!(
        app.starts()? == ["start 1", "start 1"],
        "restarted once for its own change and the notification:\n{output}"
    );
    ensure!(app.get("/greeting")? == "bonjour");
    app.stop()
}

/// The target group of the drain test, as the AWS double knows it.
const TARGET_GROUP: &str =
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/drained/0123456789abcdef";

#[test]
fn a_restart_deregisters_the_instance_waits_for_the_drain_restarts_passes_its_health_check_and_registers_again_in_that_order()
-> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "drained", 8115)?;
    // The AWS APIs, doubled on the bridge: the instance is i-0java, a
    // target of the group once its first deployment is done, as its
    // autoscaling group would register it.
    let double = AwsApiDouble::start(SocketAddr::from((fixture.testbed.host_address(), 0)))?;
    double.add_instance(app.instance.address().into(), "i-0java");
    double.add_target_group(TARGET_GROUP, Duration::from_secs(3), Duration::from_secs(2));
    let config = app.instance.root_directory().join("srv/drained-agent.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nendpoint = \"{}\"\nmetadata_endpoint = \"{}\"\n",
            double.endpoint_for_instances(),
            double.metadata_endpoint_for_instances()
        ),
    )?;
    let role = |greeting: &str| {
        app.role(
            1,
            greeting,
            "\"serving.file\" = \"/var/lib/drained/serving\"\n",
        )
        .replace(
            "limits = { nofile = 4096 }",
            &format!(
                "limits = {{ nofile = 4096 }}\ndrain = {{ target_groups = [\"{TARGET_GROUP}\"], port = 8115, timeout = \"60s\" }}"
            ),
        )
    };
    let apply = || app.apply_with(&["--config", "/srv/drained-agent.toml"]);
    // A first deployment starts an app that serves no one: nothing to drain.
    app.write_roles(&role("hello"))?;
    let (code, output) = apply()?;
    ensure!(
        code == 2,
        "first deployment (exit 2), got {code}:\n{output}"
    );
    ensure!(
        double.target_events(TARGET_GROUP).is_empty(),
        "a first deployment leaves the load balancer alone: {:#?}",
        double.calls()
    );
    double.add_healthy_target(TARGET_GROUP, "i-0java", Some(8115));

    app.write_roles(&role("bonjour"))?;
    let (code, output) = apply()?;
    ensure!(
        code == 2,
        "a property change (exit 2), got {code}:\n{output}"
    );
    ensure!(app.get("/greeting")? == "bonjour");
    let events = double.target_events(TARGET_GROUP);
    let kinds: Vec<TargetEventKind> = events.iter().map(|e| e.kind).collect();
    ensure!(
        kinds == [TargetEventKind::Deregistered, TargetEventKind::Registered]
            && events
                .iter()
                .all(|e| e.instance_id == "i-0java" && e.port == Some(8115)),
        "deregistered, then registered again, once each: {:#?}",
        double.calls()
    );
    // The app's own record of when it served after the restart falls
    // between the end of the drain and the registration.
    let serving: Vec<u64> = app
        .run("cat /var/lib/drained/serving")?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(serving.len() == 2, "started twice in all: {serving:?}");
    let (deregistered, registered, restarted) =
        (events[0].time_unix_ms, events[1].time_unix_ms, serving[1]);
    ensure!(
        restarted >= deregistered + 3_000,
        "the app restarted ({restarted}) only after the 3 s drain that began at {deregistered}"
    );
    ensure!(
        registered >= restarted,
        "registered again ({registered}) once the restarted app served and passed its health check ({restarted})"
    );
    ensure!(
        app.starts()? == ["start 1", "start 1"],
        "one restart:\n{output}"
    );
    app.stop()
}

#[test]
fn a_notification_alone_restarts_the_app_once_and_checks_its_health() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "notified", 8106)?;
    app.deploy(&app.role(1, "bonjour", &app.notifying_file("on")))?;
    // Only the notifying file changes: the app restarts once, health-checked.
    app.write_roles(&app.role(1, "bonjour", &app.notifying_file("off")))?;
    let (code, output) = app.apply()?;
    ensure!(code == 2, "notification (exit 2), got {code}:\n{output}");
    ensure!(
        output.contains("refresh: restarted notified.service; it is healthy"),
        "{output}"
    );
    ensure!(app.starts()?.len() == 2, "restarted once:\n{output}");
    app.stop()
}

#[test]
fn a_new_version_is_downloaded_made_current_and_the_previous_release_kept() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "upgrade", 8107)?;
    app.deploy(&app.role(1, "bonjour", ""))?;
    // A new version: downloaded, made current, one restart; the previous
    // release is kept for rollback.
    let output = app.deploy(&app.role(2, "bonjour", ""))?;
    ensure!(app.get("/version")? == "2", "{output}");
    ensure!(app.starts()?.len() == 2, "restarted once");
    ensure!(
        app.run("ls /opt/upgrade/releases")? == app.releases(&[1, 2]),
        "both releases kept"
    );
    app.stop()
}

#[test]
fn a_broken_configuration_is_rolled_back_with_the_apps_own_log_lines() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "rollback", 8108)?;
    app.deploy(&app.role(1, "bonjour", ""))?;
    app.deploy(&app.role(2, "bonjour", ""))?;
    // A broken configuration: the app exits, the release and configuration
    // are rolled back, the old value is served again, and the failure
    // carries the app's own log lines.
    app.write_roles(&app.role(2, "", ""))?;
    let (code, output) = app.apply()?;
    ensure!(
        code == 4,
        "a broken config fails (exit 4), got {code}:\n{output}"
    );
    for expected in [
        "failed java_app:rollback",
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
    ensure!(app.get("/greeting")? == "bonjour", "old value served again");
    ensure!(app.run("systemctl is-active rollback")? == "active");
    ensure!(
        app.run("grep greeting /opt/rollback/config/application.properties")? == "greeting=bonjour"
    );

    // The good configuration again: converges back with nothing to change.
    app.write_roles(&app.role(2, "bonjour", ""))?;
    let (code, output) = app.apply()?;
    ensure!(
        code == 0,
        "after the rollback the good catalog is in place, got {code}:\n{output}"
    );
    app.stop()
}

#[test]
fn a_jar_whose_sha256_is_not_the_catalogs_fails_and_changes_nothing() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "wrongsha", 8109)?;
    app.deploy(&app.role(1, "bonjour", ""))?;
    app.deploy(&app.role(2, "bonjour", ""))?;
    // A jar whose sha256 is not the catalog's: a failure that changes
    // nothing: no release, no temporary file, no restart.
    let before = app.starts()?.len();
    let wrong = "0".repeat(64);
    app.write_roles(&app.role_with_sha(3, &wrong, "bonjour", ""))?;
    let (code, output) = app.apply()?;
    ensure!(
        code == 4,
        "a wrong sha256 fails (exit 4), got {code}:\n{output}"
    );
    ensure!(
        output.contains(&format!("its sha256 is {}, not the {wrong}", app.sha(3))),
        "{output}"
    );
    ensure!(
        app.run("ls -A /opt/wrongsha/releases | wc -l")? == "2",
        "nothing added to the releases"
    );
    ensure!(app.run("readlink /opt/wrongsha/current")? == format!("releases/{}.jar", app.sha(2)));
    ensure!(app.starts()?.len() == before, "no restart");
    ensure!(app.get("/version")? == "2");
    app.stop()
}

#[test]
fn a_third_version_prunes_the_oldest_release_and_keeps_the_one_before() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "prune", 8110)?;
    app.deploy(&app.role(1, "bonjour", ""))?;
    app.deploy(&app.role(2, "bonjour", ""))?;
    // The jar for version 3: deployed, and with keep_releases = 1 the
    // oldest release is pruned, the one before kept.
    let output = app.deploy(&app.role(3, "bonjour", ""))?;
    ensure!(app.get("/version")? == "3", "{output}");
    ensure!(
        app.run("ls -A /opt/prune/releases")? == app.releases(&[2, 3]),
        "release 1 pruned, release 2 kept"
    );
    app.stop()
}

#[test]
fn a_first_deployment_that_never_becomes_healthy_fails_and_is_stopped() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "steady", 8111)?;
    app.deploy(&app.role(1, "bonjour", ""))?;
    // A first deployment that never becomes healthy is a failure, and the
    // app is stopped rather than left crash-looping.
    let never = r#"
[[java_app]]
name = "never"
runtime_package = "openjdk-17-jre-headless"
artifact = { url = "URL", sha256 = "SHA" }
health = { tcp = 8199, timeout = "60s" }
properties = { "server.port" = 8199, greeting = "" }
"#
    .replace("URL", &app.url(2))
    .replace("SHA", app.sha(2));
    app.write_roles(&app.role(1, "bonjour", &never))?;
    let (code, output) = app.apply()?;
    // It fails after making its user, folders, release and unit: exit 6
    // (changes and failures), and the output says what it did and did not.
    ensure!(
        code == 6,
        "a first deployment that never becomes healthy fails after changing things, got {code}:\n{output}"
    );
    ensure!(output.contains("failed java_app:never"), "{output}");
    for expected in [
        "    done: user",
        "    done: release",
        "    not done: service: state",
        "1 failed (1 after changing something)",
    ] {
        ensure!(
            output.contains(expected),
            "output lacks {expected:?}:\n{output}"
        );
    }
    ensure!(
        output.contains("a first deployment has nothing to roll back to"),
        "{output}"
    );
    ensure!(
        app.run("systemctl is-active never || true")? != "active",
        "the failed first deployment is stopped"
    );
    ensure!(
        app.get("/greeting")? == "bonjour",
        "the other app is untouched"
    );
    app.stop()
}

#[test]
fn an_absent_app_is_stopped_and_removed_and_its_data_and_logs_are_kept() -> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "removed", 8112)?;
    app.deploy(&app.role(1, "bonjour", ""))?;
    // Absent: stopped, disabled, unit and home removed; data and logs kept.
    let output = app.deploy(&app.role(1, "bonjour", "").replace(
        "name = \"removed\"\n",
        "name = \"removed\"\nensure = \"absent\"\n",
    ))?;
    ensure!(
        app.run("systemctl is-active removed || true")? != "active",
        "{output}"
    );
    ensure!(
        app.run(
            "test -e /etc/systemd/system/removed.service -o -e /opt/removed && echo left || echo gone"
        )? == "gone"
    );
    ensure!(app.run("test -d /var/lib/removed && echo kept")? == "kept");
    let (code, output) = app.apply()?;
    ensure!(code == 0, "removed stays removed, got {code}:\n{output}");
    app.stop()
}

/// The node's agent against a real `cms-server` process: enrolled with a
/// token into a state folder of its own, so that it leaves the instance's
/// other tests alone.
struct ServedNode<'a> {
    instance: &'a Instance,
    server: &'a ServerProcess,
    state: String,
}

impl ServedNode<'_> {
    fn enroll<'a>(
        instance: &'a Instance,
        server: &'a ServerProcess,
        admin: &AdminCli,
        name: &str,
        tags: &str,
    ) -> Result<ServedNode<'a>> {
        let token = admin.json(&["token", "create", "--tags", tags])?["token"]
            .as_str()
            .context("a token")?
            .to_string();
        let state = format!("/var/lib/cms-{name}");
        let grpc = server.grpc.to_string();
        instance.run_successfully(&[
            "cms-agent",
            "enroll",
            "--server",
            &grpc,
            "--token",
            &token,
            "--node",
            name,
            "--tags",
            tags,
            "--state-dir",
            &state,
        ])?;
        Ok(ServedNode {
            instance,
            server,
            state,
        })
    }

    /// `cms-agent converge` with `extra` flags: exit code and output.
    fn converge(&self, extra: &[&str]) -> Result<(i32, String)> {
        let grpc = self.server.grpc.to_string();
        let mut args = vec![
            "cms-agent",
            "converge",
            "--server",
            &grpc,
            "--state-dir",
            &self.state,
        ];
        args.extend_from_slice(extra);
        let output = self.instance.run(&args)?;
        Ok((
            output.exit_code.unwrap_or(-1),
            format!("{}{}", output.stdout, output.stderr),
        ))
    }

    /// A converge run as a transient systemd unit, its output in the
    /// journal as the daemon's is: the exit code and what journald holds.
    fn converge_into_journal(&self, unit: &str) -> Result<(i32, String)> {
        let grpc = self.server.grpc.to_string();
        let run = self.instance.run(&[
            "systemd-run",
            "--wait",
            "--collect",
            "--quiet",
            "--unit",
            unit,
            "cms-agent",
            "converge",
            "--server",
            &grpc,
            "--state-dir",
            &self.state,
        ])?;
        let journal = self.instance.run_successfully(&[
            "journalctl",
            "-u",
            unit,
            "--no-pager",
            "-o",
            "cat",
        ])?;
        Ok((
            run.exit_code.unwrap_or(-1),
            format!("{}{}{}", run.stdout, run.stderr, journal.stdout),
        ))
    }

    /// A file of the agent's state folder.
    fn state_file(&self, name: &str) -> Result<String> {
        Ok(self
            .instance
            .run_successfully(&["cat", &format!("{}/{name}", self.state)])?
            .stdout)
    }
}

/// Every place a value could show, by name, and which of `values` shows in
/// which: empty when none does.
fn leaks(places: &[(String, Vec<u8>)], values: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (place, bytes) in places {
        for value in values {
            if bytes
                .windows(value.len())
                .any(|window| window == value.as_bytes())
            {
                found.push(format!("`{value}` in {place}"));
            }
        }
    }
    found
}

/// Every file under `dir`, by path, with its bytes.
fn files_under(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                folders.push(path);
            } else if entry.file_type()?.is_file() {
                files.push((path.display().to_string(), std::fs::read(&path)?));
            }
        }
    }
    Ok(files)
}

/// The dashboard's fleet page and a node's page, as an operator logged in
/// with a dashboard token sees them.
fn dashboard_pages(server: &ServerProcess, work: &Path, node: &str) -> Result<String> {
    let token = server.dashboard_token()?;
    let jar = work.join("dashboard-cookies");
    let base = format!("https://{}", server.http);
    let curl = |args: &[&str]| -> Result<String> {
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--insecure", "--fail"])
            .arg("--cookie-jar")
            .arg(&jar)
            .arg("--cookie")
            .arg(&jar)
            .args(args)
            .output()
            .context("Failed to run curl")?;
        ensure!(
            output.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    curl(&[
        "--data",
        &format!("token={token}"),
        &format!("{base}/dashboard/login"),
    ])?;
    let fleet = curl(&[&format!("{base}/dashboard")])?;
    let node_page = curl(&[&format!("{base}/dashboard/nodes/{node}")])?;
    ensure!(
        node_page.contains(node),
        "the node's dashboard page shows it:\n{node_page}"
    );
    Ok(format!("{fleet}\n{node_page}"))
}

#[test]
fn secrets_reach_only_the_apps_configuration_nothing_shows_them_and_a_rotation_restarts_the_app_once()
-> Result<()> {
    let fixture = fixture()?;
    let app = App::new(&fixture, "vault", 8114)?;
    let work = tempfile::tempdir()?;
    let server_binary = build_workspace_binary("cms-server", "cms-server")?;

    // The values: one encrypted in the repository, one in the SSM double
    // (rotated twice), one for another role.
    let db_password = "db-pass-5b1e0c9a";
    let api_keys = ["ssm-key-one-7d41", "ssm-key-two-c93e", "ssm-key-three-0af2"];
    let web_token = "web-token-e2f86b";
    let ssm = AwsSecretsDouble::start()?;
    ssm.set_parameter("/prod/vault/api_key", api_keys[0]);

    let git = GitRepo::init(&work.path().join("roles"))?;
    let settings = "[hierarchy]\nlayers = [\"env/{{tag.env}}\", \"common\"]\n";
    git.commit(&[("cms.toml", settings)], "no roles yet")?;
    let data = work.path().join("server");
    let server = ServerProcess::start_with(
        &server_binary,
        &data,
        git.path(),
        fixture.testbed.host_address(),
        &[
            "--http-tls",
            "--ssm-endpoint",
            &ssm.url(),
            "--aws-region",
            "us-east-1",
            "--secrets-refresh",
            "1s",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret-of-the-double"),
        ],
    )?;
    let admin = AdminCli::new(server_binary.clone(), &server.grpc.to_string(), &data);

    // The team configures the server's key as the recipient and encrypts
    // the values with the server's public key only.
    let recipient = Command::new(&server_binary)
        .args(["secrets", "recipient", "--data"])
        .arg(&data)
        .output()?;
    ensure!(
        recipient.status.success(),
        "secrets recipient: {}",
        String::from_utf8_lossy(&recipient.stderr)
    );
    let recipient = String::from_utf8(recipient.stdout)?;
    let recipient = recipient.trim();
    std::fs::write(
        git.path().join("cms.toml"),
        format!("{settings}\n[secrets]\nrecipients = [\"{recipient}\"]\n"),
    )?;
    for (layer, key, value, scope) in [
        ("env/prod", "db_password", db_password, "env=prod"),
        ("common", "web_token", web_token, "role=web"),
    ] {
        let repo = git.path().display().to_string();
        let mut encrypt = Command::new(&server_binary)
            .args(["secrets", "encrypt", "--repo", &repo, "--layer", layer])
            .args(["--scope", scope, key])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            &mut encrypt.stdin.take().context("stdin")?,
            value.as_bytes(),
        )?;
        let output = encrypt.wait_with_output()?;
        ensure!(
            output.status.success(),
            "secrets encrypt {key}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let api_role = app
        .role(
        1,
        "hello",
        "\"db.password\" = \"{{secret \\\"db_password\\\"}}\"\n\"api.key\" = \"{{secret \\\"ssm:/prod/vault/api_key\\\"}}\"\n\n[match]\nrole = \"api\"\nenv = \"prod\"\n",
    )
        .replace(
            "environment = { GREETER_ENV = \"test\" }",
            "environment = { GREETER_ENV = \"test\", VAULT_DB_PASSWORD = \"{{secret \\\"db_password\\\"}}\" }",
        );
    git.commit(
        &[
            ("roles/api.toml", &api_role),
            (
                "roles/web.toml",
                "[match]\nrole = \"web\"\n\n[[file]]\npath = \"/etc/vault-web-token\"\ntemplate = \"web-token\"\nmode = \"0600\"\n",
            ),
            ("templates/web-token", "{{secret \"web_token\"}}\n"),
        ],
        "the vault app and its secrets",
    )?;
    let (code, stdout, stderr) = admin.run(&["sync"])?;
    ensure!(code == Some(0), "sync: {stdout}{stderr}");
    ensure!(
        !stdout.contains("error"),
        "the commit is accepted:\n{stdout}{stderr}"
    );

    // First run, as the daemon's would be, into the journal: the app is
    // deployed with both values in its configuration, owner-only.
    let api = ServedNode::enroll(
        &app.instance,
        &server,
        &admin,
        "vault-1",
        "role=api,env=prod",
    )?;
    let (code, journal) = api.converge_into_journal("vault-converge-1")?;
    ensure!(
        code == 2,
        "the first run deploys (exit 2), got {code}:\n{journal}"
    );
    let properties = app.run("cat /opt/vault/config/application.properties")?;
    ensure!(
        properties.contains(&format!("db.password={db_password}"))
            && properties.contains(&format!("api.key={}", api_keys[0])),
        "both values are in the configuration:\n{properties}"
    );
    let mode = app.run("stat -c '%a' /opt/vault/config/application.properties")?;
    ensure!(
        mode.ends_with('0'),
        "the configuration is not world-readable: mode {mode}"
    );
    ensure!(app.starts()? == ["start 1"], "started once");
    // The environment that holds a value reaches the JVM from an
    // owner-only file, never from the world-readable unit.
    ensure!(
        app.run("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value vault)/environ")?
            .lines()
            .any(|line| line == format!("VAULT_DB_PASSWORD={db_password}")),
        "the JVM has the value in its environment"
    );
    let unit = app.run("systemctl cat vault")?;
    ensure!(
        !unit.contains(db_password) && unit.contains("EnvironmentFile="),
        "the unit names an environment file and holds no value:\n{unit}"
    );
    let environment_file = unit
        .lines()
        .find_map(|line| line.strip_prefix("EnvironmentFile="))
        .context("an EnvironmentFile line")?
        .trim_start_matches('-')
        .to_string();
    ensure!(
        app.run(&format!("stat -c '%U %a' {environment_file}"))? == "root 600",
        "the environment file is root's alone"
    );

    // A rotation in SSM: the next pull changes the catalog, and the app
    // restarts once, through its health check.
    ssm.set_parameter("/prod/vault/api_key", api_keys[1]);
    let mut outputs = vec![("the first run's journal".to_string(), journal)];
    let rotated = wait_until_polling_every(
        Duration::from_secs(1),
        Duration::from_secs(60),
        "the rotated value to reach the app",
        || {
            let (code, output) = api.converge(&["--format", "json"])?;
            outputs.push(("a converge run's JSON".to_string(), output.clone()));
            Ok((code == 2).then_some(output))
        },
    )?;
    ensure!(
        rotated.contains("sensitive"),
        "the change shows as sensitive:\n{rotated}"
    );
    ensure!(
        app.run("cat /opt/vault/config/application.properties")?
            .contains(&format!("api.key={}", api_keys[1])),
        "the rotated value is in the configuration"
    );
    ensure!(
        app.starts()? == ["start 1", "start 1"],
        "the rotation restarted the app once:\n{rotated}"
    );
    ensure!(app.get("/greeting")? == "hello", "and it serves again");

    // Another rotation, shown under --noop as people read it.
    ssm.set_parameter("/prod/vault/api_key", api_keys[2]);
    let noop = wait_until_polling_every(
        Duration::from_secs(1),
        Duration::from_secs(60),
        "the second rotation to show under --noop",
        || {
            let (code, output) = api.converge(&["--noop"])?;
            Ok((code == 2).then_some(output))
        },
    )?;
    ensure!(
        noop.contains("sensitive"),
        "the pending change shows as sensitive:\n{noop}"
    );
    outputs.push(("the --noop run's output".to_string(), noop));

    // A web node never receives the api's secret, and gets its own.
    let web = ServedNode::enroll(
        &app.instance,
        &server,
        &admin,
        "vault-web",
        "role=web,env=prod",
    )?;
    let (code, output) = web.converge(&[])?;
    ensure!(
        code == 2,
        "the web node converges (exit 2), got {code}:\n{output}"
    );
    outputs.push(("the web node's run".to_string(), output));
    ensure!(app.run("cat /etc/vault-web-token")? == web_token);
    let web_catalog = web.state_file("catalog.json")?;
    ensure!(
        leaks(
            &[("the web node's catalog".into(), web_catalog.into_bytes())],
            &[db_password, api_keys[0], api_keys[1], api_keys[2]]
        )
        .is_empty(),
        "the web node's catalog holds none of the api's values"
    );

    // Nowhere else: not the agent's output, journal or state, not the
    // reports, the dashboard, the server's log or its data directory.
    let mut places: Vec<(String, Vec<u8>)> = outputs
        .into_iter()
        .map(|(place, text)| (place, text.into_bytes()))
        .collect();
    places.push((
        "last_run.json".into(),
        api.state_file("last_run.json")?.into_bytes(),
    ));
    let reports = admin.run(&["reports", "vault-1", "--limit", "20", "--format", "json"])?;
    ensure!(reports.0 == Some(0), "reports: {}", reports.2);
    ensure!(
        reports.1.contains("java_app:vault"),
        "the reports hold the runs:\n{}",
        reports.1
    );
    places.push(("the stored reports".into(), reports.1.into_bytes()));
    places.push((
        "the dashboard".into(),
        dashboard_pages(&server, work.path(), "vault-1")?.into_bytes(),
    ));
    places.push(("the server's log".into(), std::fs::read(&server.log)?));
    places.extend(files_under(&server.data)?);
    let secret_values = [
        db_password,
        api_keys[0],
        api_keys[1],
        api_keys[2],
        web_token,
    ];
    let found = leaks(&places, &secret_values);
    ensure!(
        found.is_empty(),
        "values shown where they must not be: {found:?}"
    );
    app.stop()
}
