//! The systemd kinds (`systemd_timer`, `systemd_dropin`, `limits`, `mount`)
//! through `cms-agent apply` inside real instances: each kind converged,
//! unchanged on the second run, its drift shown by `--noop` (which changes
//! nothing) and repaired, and a bad value refused naming its field.
//!
//! One test per kind, each on an instance of its own; the testbed and the
//! baked image are shared by the tests of this binary ([`SharedFixture`]).
//! The mount test uses `tmpfs` (an nspawn instance may mount in its own
//! mount namespace); NFS and EFS need a server this testbed does not have.

use std::sync::Arc;

use anyhow::{Result, ensure};
use cms_integration::{AgentImageTestbed, Instance, SharedFixture};

static FIXTURE: SharedFixture<AgentImageTestbed> = SharedFixture::new();

/// Runs a shell command in the instance, which must succeed; its output,
/// trimmed.
fn run(instance: &Instance, command: &str) -> Result<String> {
    instance.shell(command)
}

fn fixture() -> Result<Arc<AgentImageTestbed>> {
    FIXTURE.get_or_start(AgentImageTestbed::start)
}

fn boot(fixture: &AgentImageTestbed, name: &str) -> Result<Instance> {
    fixture.boot(name, &[("role", "app")])
}

fn shut_down_leaving_nothing(fixture: &AgentImageTestbed, instance: Instance) -> Result<()> {
    fixture.testbed.shut_down_leaving_nothing(instance)
}

const SETTINGS: &str = "[hierarchy]\nlayers = [\"common\"]\n";

/// The repository of the tests: the settings and one role, `app`.
fn repository(role: &str) -> [(&'static str, &str); 2] {
    [("cms.toml", SETTINGS), ("roles/app.toml", role)]
}

fn apply(instance: &Instance, extra: &[&str]) -> Result<(i32, String)> {
    instance.apply_roles_repository("role=app", extra)
}

/// Applies expecting `code` (2: changed, 0: nothing to do).
#[track_caller]
fn apply_expecting(instance: &Instance, extra: &[&str], code: i32, what: &str) -> Result<String> {
    let (got, output) = apply(instance, extra)?;
    ensure!(
        got == code,
        "{what}: expected exit {code}, got {got}:\n{output}"
    );
    Ok(output)
}

/// Writes a role, applies it (a change), and applies again (no change).
fn converge(instance: &Instance, role: &str, what: &str) -> Result<String> {
    instance.write_roles_repository(&repository(role))?;
    let output = apply_expecting(instance, &[], 2, what)?;
    apply_expecting(instance, &[], 0, &format!("{what}, second run"))?;
    Ok(output)
}

/// A bad value is refused before anything is done, naming its field.
fn refused_naming(instance: &Instance, role: &str, field: &str) -> Result<()> {
    instance.write_roles_repository(&repository(role))?;
    let (code, output) = apply(instance, &[])?;
    ensure!(
        code != 0 && code != 2,
        "a bad {field} should fail the run, got {code}:\n{output}"
    );
    ensure!(
        output.contains(field),
        "the error should name {field}:\n{output}"
    );
    Ok(())
}

/// `--noop` after drift: exit 2, the resource named, and `unchanged`
/// still true afterwards.
fn noop_shows(instance: &Instance, reference: &str, unchanged: &str) -> Result<()> {
    let output = apply_expecting(instance, &["--noop"], 2, "noop after drift")?;
    ensure!(
        output.contains(&format!("would change {reference}")),
        "noop output lacks {reference}:\n{output}"
    );
    ensure!(
        run(instance, &format!("{unchanged} && echo unchanged || true"))? == "unchanged",
        "--noop changed something: `{unchanged}` no longer holds\n{output}"
    );
    Ok(())
}

/// A unit as a package ships it, in /usr/lib: what a drop-in overrides.
/// It appends a line to /var/tmp/starts at each start.
fn install_packaged_unit(instance: &Instance, name: &str) -> Result<()> {
    run(
        instance,
        &format!(
            "printf '[Unit]\\nDescription=packaged test unit\\n[Service]\\nExecStartPre=/bin/sh -c \"echo start >> /var/tmp/{name}.starts\"\\nExecStart=/bin/sleep infinity\\n' > /usr/lib/systemd/system/{name}.service && systemctl daemon-reload"
        ),
    )?;
    Ok(())
}

const TIMER: &str = r#"
[[systemd_timer]]
name = "cms-tick"
description = "writes a tick"
command = "date >> /var/tmp/ticks"
on_calendar = "*-*-* 04:00:00"
persistent = true
randomized_delay = "5m"
"#;

#[test]
fn a_systemd_timer_is_written_enabled_started_repaired_and_removed() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "systemd-timer")?;
    converge(&instance, TIMER, "timer first run")?;
    ensure!(run(&instance, "systemctl is-enabled cms-tick.timer")? == "enabled");
    ensure!(run(&instance, "systemctl is-active cms-tick.timer")? == "active");
    let timers = run(&instance, "systemctl list-timers --all --no-pager")?;
    ensure!(timers.contains("cms-tick.timer"), "list-timers:\n{timers}");
    ensure!(
        run(
            &instance,
            "systemctl show -p OnCalendar -p Persistent cms-tick.timer"
        )?
        .contains("Persistent=yes")
    );
    // The service runs the command when started.
    run(&instance, "systemctl start cms-tick.service")?;
    ensure!(
        run(&instance, "wc -l < /var/tmp/ticks")? == "1",
        "the service ran the command once"
    );

    // Drift: stopped, disabled, the timer unit edited.
    run(
        &instance,
        "systemctl stop cms-tick.timer && systemctl disable cms-tick.timer && echo '# drift' >> /etc/systemd/system/cms-tick.timer",
    )?;
    noop_shows(
        &instance,
        "systemd_timer:cms-tick",
        "! systemctl is-active --quiet cms-tick.timer && grep -q drift /etc/systemd/system/cms-tick.timer",
    )?;
    apply_expecting(&instance, &[], 2, "repair")?;
    ensure!(run(&instance, "systemctl is-enabled cms-tick.timer")? == "enabled");
    ensure!(run(&instance, "systemctl is-active cms-tick.timer")? == "active");
    ensure!(
        run(
            &instance,
            "grep -c drift /etc/systemd/system/cms-tick.timer || true"
        )? == "0"
    );
    apply_expecting(&instance, &[], 0, "after repair")?;

    // A new schedule is written and the running timer follows it.
    converge(
        &instance,
        &TIMER.replace("*-*-* 04:00:00", "*-*-* 05:30:00"),
        "new schedule",
    )?;
    ensure!(
        run(&instance, "systemctl show -p TimersCalendar cms-tick.timer")?.contains("05:30:00")
    );

    // Refused when the repository is compiled…
    refused_naming(
        &instance,
        &TIMER.replace("*-*-* 04:00:00", "every day"),
        "on_calendar `every day` has `every` where a weekday",
    )?;
    // …or, where only systemd knows (a time zone), by systemd-analyze on
    // the instance, before anything is written.
    refused_naming(
        &instance,
        &TIMER.replace("*-*-* 04:00:00", "*-*-* 04:00:00 Mars/Olympus"),
        "on_calendar `*-*-* 04:00:00 Mars/Olympus` is refused by `systemd-analyze calendar`",
    )?;
    ensure!(
        run(
            &instance,
            "grep -c Mars /etc/systemd/system/cms-tick.timer || true"
        )? == "0",
        "a refused schedule is not written"
    );

    converge(
        &instance,
        "[[systemd_timer]]\nname = \"cms-tick\"\nensure = \"absent\"\n",
        "removal",
    )?;
    ensure!(
        run(
            &instance,
            "ls /etc/systemd/system/cms-tick.timer /etc/systemd/system/cms-tick.service 2>/dev/null | wc -l"
        )? == "0",
        "both units removed"
    );
    let timers = run(&instance, "systemctl list-timers --all --no-pager")?;
    ensure!(!timers.contains("cms-tick.timer"), "list-timers:\n{timers}");
    shut_down_leaving_nothing(&fixture, instance)
}

fn dropin_role(greeting: &str) -> String {
    format!(
        r#"
[[systemd_dropin]]
unit = "cms-packaged.service"
name = "50-cms"
notify = ["service:cms-packaged"]
[systemd_dropin.settings.Service]
Environment = "GREETING={greeting}"

[[service]]
name = "cms-packaged"
ensure = "running"
"#
    )
}

#[test]
fn a_systemd_dropin_overrides_a_packaged_unit_and_restarts_its_service_when_changed() -> Result<()>
{
    let fixture = fixture()?;
    let instance = boot(&fixture, "systemd-dropin")?;
    install_packaged_unit(&instance, "cms-packaged")?;
    converge(&instance, &dropin_role("hello"), "drop-in first run")?;
    let dropin = "/etc/systemd/system/cms-packaged.service.d/50-cms.conf";
    ensure!(
        run(&instance, "systemctl show -p Environment cms-packaged")?
            == "Environment=GREETING=hello"
    );
    ensure!(run(&instance, "wc -l < /var/tmp/cms-packaged.starts")? == "1");

    // A changed drop-in reloads systemd and restarts the service it notifies.
    let output = converge(&instance, &dropin_role("bonjour"), "drop-in changed")?;
    ensure!(
        run(&instance, "systemctl show -p Environment cms-packaged")?
            == "Environment=GREETING=bonjour",
        "{output}"
    );
    ensure!(
        run(&instance, "wc -l < /var/tmp/cms-packaged.starts")? == "2",
        "restarted once:\n{output}"
    );

    run(&instance, &format!("echo drift > {dropin}"))?;
    noop_shows(
        &instance,
        "systemd_dropin:cms-packaged.service/50-cms",
        &format!("grep -q drift {dropin}"),
    )?;
    apply_expecting(&instance, &[], 2, "repair")?;
    ensure!(run(&instance, &format!("grep -c GREETING=bonjour {dropin}"))? == "1");
    apply_expecting(&instance, &[], 0, "after repair")?;

    refused_naming(
        &instance,
        &dropin_role("x").replace("cms-packaged.service", "cms-packaged"),
        "unit `cms-packaged` has no unit type",
    )?;
    shut_down_leaving_nothing(&fixture, instance)
}

const LIMITS: &str = r#"
[[limits]]
name = "nobody"
user = "nobody"
nofile = { soft = 1024, hard = 4096 }
nproc = 512

[[limits]]
name = "cms-limited"
unit = "cms-limited.service"
nofile = { soft = 4096, hard = 8192 }
nproc = 256
"#;

#[test]
fn limits_are_written_for_a_user_and_in_effect_for_a_unit() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "systemd-limits")?;
    install_packaged_unit(&instance, "cms-limited")?;
    converge(&instance, LIMITS, "limits first run")?;
    ensure!(
        run(&instance, "cat /etc/security/limits.d/nobody.conf")?
            .ends_with("nobody soft nofile 1024\nnobody hard nofile 4096\nnobody soft nproc 512\nnobody hard nproc 512")
    );
    let show = "systemctl show -p LimitNOFILE -p LimitNOFILESoft -p LimitNPROC cms-limited.service";
    ensure!(
        run(&instance, show)? == "LimitNOFILE=8192\nLimitNOFILESoft=4096\nLimitNPROC=256",
        "{}",
        run(&instance, show)?
    );

    let dropin = "/etc/systemd/system/cms-limited.service.d/limits-cms-limited.conf";
    run(
        &instance,
        &format!("rm {dropin} && systemctl daemon-reload"),
    )?;
    noop_shows(
        &instance,
        "limits:cms-limited",
        &format!("test ! -e {dropin}"),
    )?;
    apply_expecting(&instance, &[], 2, "repair")?;
    ensure!(run(&instance, show)?.starts_with("LimitNOFILE=8192\n"));
    apply_expecting(&instance, &[], 0, "after repair")?;

    refused_naming(
        &instance,
        &LIMITS.replace("soft = 4096, hard = 8192", "soft = 9000, hard = 8192"),
        "nofile: the soft limit 9000 is above the hard limit 8192",
    )?;
    shut_down_leaving_nothing(&fixture, instance)
}

fn mount_role(options: &str) -> String {
    format!(
        r#"
[[mount]]
path = "/mnt/cms_scratch"
device = "tmpfs"
fstype = "tmpfs"
options = "{options}"
"#
    )
}

#[test]
fn a_tmpfs_mount_is_mounted_enabled_remounted_repaired_and_removed() -> Result<()> {
    let fixture = fixture()?;
    let instance = boot(&fixture, "systemd-mount")?;
    let unit = "mnt-cms_scratch.mount";
    let options = "findmnt -n -o FSTYPE,OPTIONS /mnt/cms_scratch";
    converge(&instance, &mount_role("size=16m,nosuid"), "mount first run")?;
    let live = run(&instance, options)?;
    ensure!(
        live.starts_with("tmpfs") && live.contains("nosuid"),
        "{live}"
    );
    ensure!(run(&instance, &format!("systemctl is-enabled {unit}"))? == "enabled");

    // Options changed in the role: remounted with them.
    converge(&instance, &mount_role("size=16m,nosuid,noexec"), "options")?;
    ensure!(run(&instance, options)?.contains("noexec"));

    // Drift: remounted by hand without noexec; then unmounted.
    run(&instance, "mount -o remount,exec /mnt/cms_scratch")?;
    noop_shows(
        &instance,
        "mount:/mnt/cms_scratch",
        &format!("! {options} | grep -q noexec"),
    )?;
    apply_expecting(&instance, &[], 2, "options repaired")?;
    ensure!(run(&instance, options)?.contains("noexec"));
    run(&instance, "umount /mnt/cms_scratch")?;
    noop_shows(
        &instance,
        "mount:/mnt/cms_scratch",
        "! findmnt /mnt/cms_scratch >/dev/null",
    )?;
    apply_expecting(&instance, &[], 2, "mount repaired")?;
    ensure!(run(&instance, options)?.starts_with("tmpfs"));
    apply_expecting(&instance, &[], 0, "after repair")?;

    refused_naming(
        &instance,
        &mount_role("size=16m,nosuid").replace("fstype = \"tmpfs\"", "fstype = \"tmp fs\""),
        "fstype `tmp fs`",
    )?;

    converge(
        &instance,
        "[[mount]]\npath = \"/mnt/cms_scratch\"\nensure = \"absent\"\n",
        "removal",
    )?;
    ensure!(
        run(
            &instance,
            "findmnt /mnt/cms_scratch >/dev/null && echo mounted || echo no"
        )? == "no"
    );
    ensure!(
        run(
            &instance,
            &format!("test -e /etc/systemd/system/{unit} && echo yes || echo no")
        )? == "no"
    );
    shut_down_leaving_nothing(&fixture, instance)
}
