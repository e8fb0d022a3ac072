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
//! app that never becomes healthy, and removal.
//!
//! Installing the JVM takes most of the time, so the tests share one
//! instance (see [`SharedFixture`]) and take turns on it; each test deploys
//! an app of its own (its own name, port, roles folder and artifact URLs),
//! from scratch, so that no test depends on what another one left.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail, ensure};
use cms_integration::{
    HttpFileServer, Image, ImageRecipe, Instance, InstanceConfig, PackageRepo, SharedFixture,
    Testbed, TestbedSettings, bake_agent_image, check_prerequisites,
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
    _testbed: Testbed,
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
            _testbed: testbed,
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
