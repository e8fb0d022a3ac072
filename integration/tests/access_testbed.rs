//! `sysctl`, `kernel_module`, `authorized_keys` and package holds, applied
//! by `cms-agent apply` inside real instances: each converged from scratch,
//! unchanged on the second run, repaired after drift, reported and left
//! alone by `--noop`, and refused with its field named when a value is bad.
//!
//! `java_truststore` runs the JRE's keytool (`openjdk-17-jre-headless`
//! from the internal repository). One test per kind, each on an instance of its own (booting is what
//! costs). What an instance cannot do is said where it matters: it has its
//! own network namespace, whose `net.*` parameters the test makes writable
//! ([`open_proc_sys_net`]), and the rest of `/proc/sys` is read-only; it
//! has no `CAP_SYS_MODULE`, so only a module the kernel already has can be
//! declared `loaded` (the test reads the host's `/proc/modules`, or
//! `/sys/module` for a built-in one), and loading another fails.

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use cms_integration::{
    BakedImage, DebPackageSpec, HttpFileServer, Image, ImageRecipe, Instance, InstanceConfig,
    PackageRepo, SharedFixture, Testbed, TestbedSettings, bake_agent_image, check_prerequisites,
};

/// The testbed, the internal repository with a package to hold, and the
/// image with the agent baked in, shared by the tests of this binary.
struct Fixture {
    // Declared in teardown order.
    _package_server: HttpFileServer,
    testbed: Testbed,
    _repo: PackageRepo,
    baked: BakedImage,
}

static FIXTURE: SharedFixture<Fixture> = SharedFixture::new();

const HELD_PACKAGE: &str = "cms-access-held";
/// The JRE, for keytool, from the internal repository.
const RUNTIME: &str = "openjdk-17-jre-headless";

fn fixture() -> Result<Arc<Fixture>> {
    FIXTURE.get_or_start(|| {
        check_prerequisites()?;
        let settings = TestbedSettings::from_environment();
        let baked = bake_agent_image(&settings)?;
        let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
        let testbed = Testbed::start(&settings)?;
        let mut repo = PackageRepo::create(&settings)?;
        repo.download_with_dependencies(&image, &[RUNTIME])?;
        repo.build_package(&DebPackageSpec::new(HELD_PACKAGE, "1.0").with_file(
            &format!("/usr/bin/{HELD_PACKAGE}"),
            "#!/bin/sh\necho held\n",
            0o755,
        ))?;
        let package_server = testbed.serve_package_repo(&repo)?;
        Ok(Fixture {
            _package_server: package_server,
            testbed,
            _repo: repo,
            baked,
        })
    })
}

fn boot(fixture: &Fixture, name: &str) -> Result<Instance> {
    fixture.testbed.boot(
        &fixture.baked,
        InstanceConfig::new(name).with_tag("role", "app"),
    )
}

fn shut_down_leaving_nothing(fixture: &Fixture, instance: Instance) -> Result<()> {
    fixture.testbed.shut_down_leaving_nothing(instance)
}

fn write_role(instance: &Instance, role_text: &str) -> Result<()> {
    instance.write_roles_repository(&[
        ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
        ("roles/app.toml", role_text),
    ])
}

/// `cms-agent apply` in the instance: the exit code and all output.
fn apply(instance: &Instance, extra: &[&str]) -> Result<(i32, String)> {
    instance.apply_roles_repository("role=app", extra)
}

fn run(instance: &Instance, command: &str) -> Result<String> {
    instance.shell(command)
}

/// Applies `role` and expects `code` (0: nothing changed, 2: changed).
#[track_caller]
fn apply_expecting(instance: &Instance, extra: &[&str], code: i32, what: &str) -> Result<String> {
    let (actual, output) = apply(instance, extra)?;
    ensure!(
        actual == code,
        "{what}: expected exit {code}, got {actual}:\n{output}"
    );
    Ok(output)
}

/// `--noop` on a drifted instance: exit 2, every `expected` line in the
/// report, and `probe` (a shell command) prints the same before and after.
fn noop_reports_and_changes_nothing(
    instance: &Instance,
    expected: &[&str],
    probe: &str,
) -> Result<()> {
    let before = run(instance, probe)?;
    let output = apply_expecting(instance, &["--noop"], 2, "--noop on drift")?;
    for line in expected {
        ensure!(output.contains(line), "--noop lacks {line:?}:\n{output}");
    }
    ensure!(
        run(instance, probe)? == before,
        "--noop changed what `{probe}` shows:\n{output}"
    );
    Ok(())
}

/// A run that fails (exit neither 0 nor 2) and says each of `expected`.
fn fails(instance: &Instance, expected: &[&str]) -> Result<()> {
    let (code, output) = apply(instance, &[])?;
    ensure!(
        code != 0 && code != 2,
        "the run must fail, got {code}:\n{output}"
    );
    for line in expected {
        ensure!(
            output.contains(line),
            "the failure lacks {line:?}:\n{output}"
        );
    }
    Ok(())
}

/// A role that does not compile: the agent refuses it, naming the file,
/// line and problem.
fn refused(instance: &Instance, role_text: &str, expected: &str) -> Result<()> {
    write_role(instance, role_text)?;
    fails(instance, &[expected])
}

/// Makes the instance's `/proc/sys/net` writable, as `systemd-nspawn
/// --private-network` does: the testbed joins a network namespace made
/// beforehand (`--network-namespace-path`), for which nspawn leaves all of
/// `/proc/sys` read-only. Done from the host, in the instance's mount
/// namespace; the rest of `/proc/sys` stays read-only.
fn open_proc_sys_net(instance: &Instance) -> Result<()> {
    let pid = instance
        .init_pid()
        .context("the instance's init has a pid")?;
    let output = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c"])
        .arg("mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net")
        .output()
        .context("run nsenter")?;
    ensure!(
        output.status.success(),
        "making /proc/sys/net writable in the instance failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

const SYSCTL_ROLE: &str = r#"
[[directory]]
path = "/etc/sysctl.d"

[[sysctl]]
name = "net.core.somaxconn"
value = 3072
require = ["directory:/etc/sysctl.d"]
"#;

#[test]
fn sysctl_sets_a_net_parameter_persists_it_repairs_drift_and_refuses_bad_names() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "access-sysctl")?;
    open_proc_sys_net(&instance)?;
    let persisted = "/etc/sysctl.d/90-cms-net.core.somaxconn.conf";
    write_role(&instance, SYSCTL_ROLE)?;

    apply_expecting(&instance, &[], 2, "first run")?;
    ensure!(run(&instance, "cat /proc/sys/net/core/somaxconn")? == "3072");
    ensure!(
        run(&instance, &format!("cat {persisted}"))?.ends_with("net.core.somaxconn = 3072"),
        "persisted"
    );
    apply_expecting(&instance, &[], 0, "second run")?;

    run(
        &instance,
        &format!("echo 100 > /proc/sys/net/core/somaxconn; echo edited > {persisted}"),
    )?;
    noop_reports_and_changes_nothing(
        &instance,
        &[
            "would change sysctl:net.core.somaxconn",
            "value: 100 -> 3072",
            "persisted: content",
        ],
        &format!("cat /proc/sys/net/core/somaxconn {persisted}"),
    )?;
    apply_expecting(&instance, &[], 2, "repair")?;
    ensure!(run(&instance, "cat /proc/sys/net/core/somaxconn")? == "3072");
    apply_expecting(&instance, &[], 0, "after the repair")?;

    // Outside its network namespace, /proc/sys is read-only here.
    write_role(
        &instance,
        &format!(
            "{SYSCTL_ROLE}\n[[sysctl]]\nname = \"vm.swappiness\"\nvalue = 7\nrequire = [\"directory:/etc/sysctl.d\"]\n"
        ),
    )?;
    fails(
        &instance,
        &["Failed to set sysctl vm.swappiness = 7: /proc/sys/vm/swappiness is read-only here"],
    )?;
    ensure!(
        run(
            &instance,
            "test -e /etc/sysctl.d/90-cms-vm.swappiness.conf && echo yes || echo no"
        )? == "no",
        "a value the kernel did not take is not persisted"
    );

    refused(
        &instance,
        "[[sysctl]]\nname = \"net.core/../somaxconn\"\nvalue = 1\n",
        "roles/app.toml:2:1: invalid sysctl name `net.core/../somaxconn`",
    )?;
    shut_down_leaving_nothing(&fixture, instance)
}

/// A module the host's kernel has, which the instance shares: a loaded one
/// from `/proc/modules`, or, on a kernel without loadable modules (no
/// `/proc/modules`), a built-in one (a folder of `/sys/module` without
/// `initstate`).
fn a_module_the_kernel_has_loaded() -> Result<String> {
    if let Ok(modules) = std::fs::read_to_string("/proc/modules")
        && let Some(name) = modules
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .next()
    {
        return Ok(name.to_string());
    }
    let mut built_in: Vec<String> = std::fs::read_dir("/sys/module")
        .context("read /sys/module")?
        .filter_map(|entry| entry.ok())
        .filter(|entry| !entry.path().join("initstate").exists())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    built_in.sort();
    built_in.into_iter().next().context(
        "the kernel has neither a loaded module (/proc/modules) nor a built-in one (/sys/module), so no kernel_module can be tested in a container, which cannot load one",
    )
}

#[test]
fn kernel_module_persists_a_loaded_module_and_fails_clearly_on_one_it_cannot_load() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "access-kmod")?;
    let module = a_module_the_kernel_has_loaded()?;
    let load_file = format!("/etc/modules-load.d/{module}.conf");
    let role = format!(
        r#"
[[directory]]
path = "/etc/modules-load.d"

[[directory]]
path = "/etc/modprobe.d"

[[kernel_module]]
name = "{module}"
require = ["directory:/etc/modules-load.d", "directory:/etc/modprobe.d"]
"#
    );
    write_role(&instance, &role)?;

    // Loaded already (or built in): the run writes the persistence only.
    let output = apply_expecting(&instance, &[], 2, "first run")?;
    ensure!(
        !output.contains("state:"),
        "no load for a loaded module:\n{output}"
    );
    ensure!(
        run(&instance, &format!("tail -n 1 {load_file}"))? == module,
        "persisted in {load_file}"
    );
    apply_expecting(&instance, &[], 0, "second run")?;

    run(
        &instance,
        &format!(
            "rm {load_file}; echo 'blacklist {module}' > /etc/modprobe.d/cms-blacklist-{module}.conf"
        ),
    )?;
    noop_reports_and_changes_nothing(
        &instance,
        &[
            &format!("would change kernel_module:{module}"),
            "load: ensure: absent -> present",
            "blacklist: ensure: present -> absent",
        ],
        "ls /etc/modules-load.d /etc/modprobe.d",
    )?;
    apply_expecting(&instance, &[], 2, "repair")?;
    ensure!(run(&instance, &format!("tail -n 1 {load_file}"))? == module);
    apply_expecting(&instance, &[], 0, "after the repair")?;

    // One that is not loaded: the container cannot load it, and says so;
    // nothing is persisted for it.
    write_role(
        &instance,
        &format!(
            "{role}\n[[kernel_module]]\nname = \"cms_no_such_module\"\nrequire = [\"directory:/etc/modules-load.d\"]\n"
        ),
    )?;
    fails(
        &instance,
        &[
            "failed kernel_module:cms_no_such_module",
            "Failed to load kernel module cms_no_such_module: ",
        ],
    )?;
    ensure!(
        run(
            &instance,
            "test -e /etc/modules-load.d/cms_no_such_module.conf && echo yes || echo no"
        )? == "no",
        "a module that did not load is not persisted"
    );

    refused(
        &instance,
        "[[kernel_module]]\nname = \"/lib/modules/x.ko\"\n",
        "roles/app.toml:2:1: invalid kernel module name `/lib/modules/x.ko`",
    )?;
    shut_down_leaving_nothing(&fixture, instance)
}

const ALICE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFUh4JBMfA3A/DaZSoJd1GFLVHrwOHl1oRQ3imfXwEWd alice@laptop";
const INTRUDER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZzTVJOI9Fm9Rqr0QXerV99bTueBjnNHKJULJfLETKK intruder";

#[test]
fn authorized_keys_holds_exactly_the_listed_keys_owner_only_and_refuses_a_bad_key() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "access-keys")?;
    let role = format!(
        r#"
[[user]]
name = "deploy"
home = "/home/deploy"
manage_home = true
shell = "/bin/sh"

[[authorized_keys]]
user = "deploy"
keys = ["{ALICE}"]
require = ["user:deploy"]
"#
    );
    let keys = "/home/deploy/.ssh/authorized_keys";
    write_role(&instance, &role)?;

    apply_expecting(&instance, &[], 2, "first run")?;
    ensure!(run(&instance, &format!("cat {keys}"))? == ALICE);
    ensure!(
        run(
            &instance,
            &format!("stat -c '%U:%G %a' /home/deploy/.ssh {keys}")
        )? == "deploy:deploy 700\ndeploy:deploy 600",
        "owner and modes"
    );
    apply_expecting(&instance, &[], 0, "second run")?;

    run(
        &instance,
        &format!("echo '{INTRUDER}' >> {keys}; chmod 0644 {keys}; chmod 0755 /home/deploy/.ssh"),
    )?;
    noop_reports_and_changes_nothing(
        &instance,
        &[
            "would change authorized_keys:deploy",
            "directory: mode: 0755 -> 0700",
            "keys: content",
            &format!("-{INTRUDER}"),
            "keys: mode: 0644 -> 0600",
        ],
        &format!("cat {keys}; stat -c %a /home/deploy/.ssh {keys}"),
    )?;
    apply_expecting(&instance, &[], 2, "repair")?;
    ensure!(
        run(&instance, &format!("cat {keys}"))? == ALICE,
        "the intruder's key is gone"
    );
    ensure!(
        run(&instance, &format!("stat -c %a /home/deploy/.ssh {keys}"))? == "700\n600",
        "modes repaired"
    );
    apply_expecting(&instance, &[], 0, "after the repair")?;

    refused(
        &instance,
        &format!(
            "[[authorized_keys]]\nuser = \"deploy\"\nkeys = [\"{ALICE}\", \"ssh-rsa AAAA\"]\n"
        ),
        "roles/app.toml:3:1: keys[1]: the base64 part does not hold a ssh-rsa key",
    )?;
    shut_down_leaving_nothing(&fixture, instance)
}

fn held_role(hold: &str) -> String {
    format!("[[package]]\nname = \"{HELD_PACKAGE}\"\n{hold}\n")
}

#[test]
fn package_hold_is_set_with_apt_mark_repaired_released_when_removed_and_refused_when_absent()
-> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "access-hold")?;
    write_role(&instance, &held_role("hold = true"))?;

    apply_expecting(&instance, &[], 2, "first run")?;
    ensure!(run(&instance, "apt-mark showhold")? == HELD_PACKAGE, "held");
    apply_expecting(&instance, &[], 0, "second run")?;

    run(&instance, &format!("apt-mark unhold {HELD_PACKAGE}"))?;
    noop_reports_and_changes_nothing(
        &instance,
        &[
            &format!("would change package:{HELD_PACKAGE}"),
            "hold: not held -> held",
        ],
        "apt-mark showhold",
    )?;
    apply_expecting(&instance, &[], 2, "repair")?;
    ensure!(
        run(&instance, "apt-mark showhold")? == HELD_PACKAGE,
        "held again"
    );
    apply_expecting(&instance, &[], 0, "after the repair")?;

    // Removing `hold` releases it.
    write_role(&instance, &held_role(""))?;
    let output = apply_expecting(&instance, &[], 2, "hold removed")?;
    ensure!(output.contains("hold: held -> not held"), "{output}");
    ensure!(run(&instance, "apt-mark showhold")?.is_empty(), "released");
    apply_expecting(&instance, &[], 0, "released, second run")?;

    refused(
        &instance,
        &held_role("ensure = \"absent\"\nhold = true"),
        "roles/app.toml:4:1: a package that is absent cannot be held",
    )?;
    shut_down_leaving_nothing(&fixture, instance)
}

const CA_ONE: &str = include_str!("../../modules/tests/data/ca-one.pem");
const CA_TWO: &str = include_str!("../../modules/tests/data/ca-two.pem");
const STORE_PASSWORD: &str = "cms-store-pass-7";

fn truststore_role(password: &str) -> String {
    format!(
        r#"
[[package]]
name = "{RUNTIME}"

[[directory]]
path = "/srv/app"

[[java_truststore]]
path = "/srv/app/truststore.p12"
password = "{password}"
mode = "0640"
certificates = {{ one = {{ source = "ca-one.pem" }} }}
require = ["package:{RUNTIME}", "directory:/srv/app"]
notify = ["exec:trust-changed"]

[[exec]]
name = "trust-changed"
command = "echo changed >> /var/tmp/trust-changed"
refreshonly = true
"#
    )
}

/// The store's entries as keytool lists them: `alias fingerprint` lines.
fn truststore_entries(instance: &Instance) -> Result<String> {
    run(
        instance,
        &format!(
            "STOREPASS={STORE_PASSWORD} keytool -list -storetype PKCS12 -keystore /srv/app/truststore.p12 -storepass:env STOREPASS | grep -i trustedCertEntry | cut -d, -f1 | sort"
        ),
    )
}

#[test]
fn java_truststore_holds_exactly_its_certificates_notifies_and_never_shows_its_password()
-> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "access-trust")?;
    instance.write_roles_repository(&[("files/ca-one.pem", CA_ONE)])?;
    write_role(&instance, &truststore_role(STORE_PASSWORD))?;
    let notified = "cat /var/tmp/trust-changed 2>/dev/null | wc -l";

    let output = apply_expecting(&instance, &[], 2, "first run")?;
    ensure!(
        !output.contains(STORE_PASSWORD),
        "the password shows:\n{output}"
    );
    ensure!(truststore_entries(&instance)? == "one", "one certificate");
    ensure!(
        run(&instance, "stat -c %a /srv/app/truststore.p12")? == "640",
        "mode"
    );
    ensure!(run(&instance, notified)? == "1", "notified once");
    apply_expecting(&instance, &[], 0, "second run")?;

    // Drift: the certificate removed by hand, another one added.
    std::fs::write(instance.root_directory().join("var/tmp/ca-two.pem"), CA_TWO)?;
    run(
        &instance,
        &format!(
            "export STOREPASS={STORE_PASSWORD}; keytool -delete -alias one -storetype PKCS12 -keystore /srv/app/truststore.p12 -storepass:env STOREPASS && keytool -importcert -noprompt -alias intruder -file /var/tmp/ca-two.pem -storetype PKCS12 -keystore /srv/app/truststore.p12 -storepass:env STOREPASS"
        ),
    )?;
    noop_reports_and_changes_nothing(
        &instance,
        &[
            "would change java_truststore:/srv/app/truststore.p12",
            "certificate intruder: SHA256 ",
            " -> absent",
            "certificate one: absent -> SHA256 ",
        ],
        "sha256sum /srv/app/truststore.p12; cat /var/tmp/trust-changed",
    )?;
    let output = apply_expecting(&instance, &[], 2, "repair")?;
    ensure!(
        !output.contains(STORE_PASSWORD),
        "the password shows:\n{output}"
    );
    ensure!(
        truststore_entries(&instance)? == "one",
        "repaired:\n{output}"
    );
    ensure!(run(&instance, notified)? == "2", "notified by the repair");
    apply_expecting(&instance, &[], 0, "after the repair")?;

    refused(
        &instance,
        &truststore_role("short"),
        "the truststore password must have at least 6 characters",
    )?;
    shut_down_leaving_nothing(&fixture, instance)
}
