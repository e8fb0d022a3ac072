//! End-to-end tests of the testbed itself: real Debian instances with
//! systemd as PID 1, booted from an image with the agent baked in, on a
//! private bridge, installing packages from the internal repository.
//!
//! They need root and the tools `check_prerequisites` lists; on a machine
//! without them they fail and say what is missing. They run one at a time:
//! instances share the bridge, and each test ends by checking that the
//! whole machine holds no testbed leftovers.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use anyhow::{Context, Result, ensure};
use cms_integration::{
    AGENT_CONFIG, DebPackageSpec, Image, ImageOrigin, ImageRecipe, Instance, InstanceConfig,
    PackageRepo, RootFilesystemStrategy, SystemState, TAGS_FILE_PATH, Testbed, bake_agent_image,
    begin_end_to_end_test, current_bridge_hardware_address, find_leftovers,
    find_leftovers_of_instance, wait_until_polling_every,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A package the tests build: one script that says where it came from.
fn hello_from_the_internal_repository() -> DebPackageSpec {
    DebPackageSpec::new("cms-testbed-hello", "1.0").with_file(
        "/usr/bin/cms-testbed-hello",
        "#!/bin/sh\necho \"hello from the internal package repository\"\n",
        0o755,
    )
}

#[test]
fn two_tagged_instances_boot_stay_separate_install_from_the_internal_repository_and_leave_nothing_behind()
-> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;

    let recipe = ImageRecipe::debian_bookworm();
    let (image, first_build) = timed(|| Image::build_or_reuse(&recipe, &settings))?;
    match image.origin() {
        ImageOrigin::BuiltNow { .. } => report_time("image build, cold", first_build),
        ImageOrigin::ReusedFromCache => report_time(
            "image build, reused from the cache (built earlier, or by a concurrent process)",
            first_build,
        ),
    }
    let (image_again, warm_build) = timed(|| Image::build_or_reuse(&recipe, &settings))?;
    ensure!(
        image_again.origin() == &ImageOrigin::ReusedFromCache,
        "a second build of the same recipe should reuse the cache, got {:?}",
        image_again.origin()
    );
    report_time("image build, warm (cached)", warm_build);
    let (baked, bake_time) = timed(|| bake_agent_image(&settings))?;
    report_time("cargo build of cms-agent and bake", bake_time);

    let (testbed, testbed_start) = timed(|| Testbed::start(&settings))?;
    report_time("testbed start (leftover clean-up, bridge)", testbed_start);
    let mut repo = PackageRepo::create(&settings)?;
    repo.build_package(&hello_from_the_internal_repository())?;
    repo.download_debian_package("hello")?;
    let repo_server = testbed.serve_package_repo(&repo)?;

    let web_config = InstanceConfig::new("web")
        .with_tag("role", "web")
        .with_tag("env", "test");
    // The second instance takes the full-copy path, so both ways of giving
    // an instance its root file system are exercised.
    let db_config = InstanceConfig::new("db")
        .with_tag("role", "db")
        .with_tag("env", "test")
        .with_root_filesystem(RootFilesystemStrategy::FullCopy);
    let (mut web, web_boot) = timed(|| testbed.boot(&baked, web_config))?;
    report_time("boot of one instance (overlay), until running", web_boot);
    let (mut db, db_boot) = timed(|| testbed.boot(&baked, db_config))?;
    report_time("boot of one instance (full copy), until running", db_boot);

    for instance in [&mut web, &mut db] {
        check_system_is_up(instance)?;
        check_tags_and_identity(instance)?;
        check_agent_is_baked_in(instance)?;
        check_apt_knows_only_the_internal_repository(instance, &testbed)?;
        check_network_reaches_the_host_and_nothing_else(instance, &testbed, &repo_server)?;
    }
    check_instances_are_separate(&web, &db)?;
    let (_, install_time) =
        timed(|| check_packages_install_from_the_internal_repository(&web, &db))?;
    report_time("apt-get update and install of two packages", install_time);

    let teardown_started = Instant::now();
    let (_, web_teardown) = timed(|| web.shutdown())?;
    report_time("teardown of one instance (overlay)", web_teardown);
    let (_, db_teardown) = timed(|| db.shutdown())?;
    report_time("teardown of one instance (full copy)", db_teardown);
    drop(repo_server);
    testbed.shutdown()?;
    drop((repo, baked));
    report_time("teardown of everything", teardown_started.elapsed());

    let leftovers = find_leftovers(&settings)?;
    ensure!(leftovers.is_empty(), "after teardown, {leftovers}");
    Ok(())
}

/// Instances keep reaching the host when others leave: the bridge's
/// hardware address, which every instance's neighbour table holds for the
/// host, is the same before the first instance, while instances run, and
/// after each leaves.
#[test]
fn the_bridge_keeps_its_hardware_address_while_instances_come_and_go() -> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let baked = bake_agent_image(&settings)?;
    let testbed = Testbed::start(&settings)?;
    let before = current_bridge_hardware_address()?;
    let first = testbed.boot(&baked, InstanceConfig::new("first"))?;
    let second = testbed.boot(&baked, InstanceConfig::new("second"))?;
    let mut seen = vec![("both running", current_bridge_hardware_address()?)];
    first.shutdown()?;
    seen.push(("the first gone", current_bridge_hardware_address()?));
    second.shutdown()?;
    seen.push(("both gone", current_bridge_hardware_address()?));
    testbed.shutdown()?;
    for (when, address) in seen {
        ensure!(
            address == before,
            "the bridge's hardware address was {before} before the instances, {address} with {when}"
        );
    }
    Ok(())
}

#[test]
fn an_instance_is_torn_down_when_its_test_panics() -> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let baked = bake_agent_image(&settings)?;
    let testbed = Testbed::start(&settings)?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let instance = testbed
            .boot(&baked, InstanceConfig::new("doomed"))
            .expect("the instance boots");
        instance
            .run_successfully(&["true"])
            .expect("a command runs");
        panic!("a test fails while its instance runs");
    }));
    ensure!(outcome.is_err(), "the test body should have panicked");
    testbed.shutdown()?;
    drop(baked);
    let leftovers = find_leftovers(&settings)?;
    ensure!(leftovers.is_empty(), "after a panic, {leftovers}");
    Ok(())
}

#[test]
fn leftovers_of_a_crashed_run_are_removed_when_the_next_testbed_starts() -> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let baked = bake_agent_image(&settings)?;
    let testbed = Testbed::start(&settings)?;
    testbed
        .boot(&baked, InstanceConfig::new("crashed"))?
        .abandon_as_if_crashed();
    // The check a test makes of its own instance sees all of it too.
    let of_instance = find_leftovers_of_instance(&settings, "crashed")?;
    ensure!(
        !of_instance.processes.is_empty()
            && !of_instance.mounts.is_empty()
            && of_instance.network_namespaces == ["cmstb-crashed"]
            && of_instance.directories.len() == 1,
        "the crashed instance's own leftovers, found {of_instance}"
    );
    testbed.shutdown()?;
    let leftovers = find_leftovers(&settings)?;
    ensure!(
        !leftovers.processes.is_empty()
            && !leftovers.mounts.is_empty()
            && leftovers.network_namespaces == ["cmstb-crashed"]
            && leftovers.links.len() == 1
            && leftovers
                .directories
                .iter()
                .any(|directory| directory.ends_with("instances/cmstb-crashed")),
        "the crashed instance should have left all kinds of leftovers, found {leftovers}"
    );

    let next_testbed = Testbed::start(&settings)?;
    next_testbed.shutdown()?;
    drop(baked);
    let leftovers = find_leftovers(&settings)?;
    ensure!(leftovers.is_empty(), "after the next start, {leftovers}");
    let of_instance = find_leftovers_of_instance(&settings, "crashed")?;
    ensure!(
        of_instance.is_empty(),
        "after the next start, {of_instance}"
    );
    Ok(())
}

fn check_system_is_up(instance: &mut Instance) -> Result<()> {
    let state = instance.wait_until_booted(Duration::from_secs(60))?;
    match &state {
        SystemState::Running => {}
        SystemState::Degraded { failed_units } => {
            eprintln!(
                "{}: degraded, failed units: {failed_units:?}",
                instance.name()
            )
        }
    }
    let answer = instance.run(&["systemctl", "is-system-running"])?;
    let answer = answer.stdout.trim();
    ensure!(
        answer == "running" || answer == "degraded",
        "{}: systemctl is-system-running says {answer}",
        instance.name()
    );
    Ok(())
}

fn check_tags_and_identity(instance: &Instance) -> Result<()> {
    let tags_file = instance.run_successfully(&["cat", TAGS_FILE_PATH])?.stdout;
    let tags: BTreeMap<String, String> =
        toml::from_str(&tags_file).with_context(|| format!("Failed to parse {tags_file:?}"))?;
    ensure!(
        &tags == instance.tags(),
        "{}: tags file says {tags:?}",
        instance.name()
    );
    let hostname = instance.run_successfully(&["hostname"])?.stdout;
    ensure!(
        hostname.trim() == instance.name(),
        "hostname is {hostname:?}"
    );
    Ok(())
}

fn check_agent_is_baked_in(instance: &Instance) -> Result<()> {
    // Installed by its package, as an image build installs it.
    let status = instance
        .run_successfully(&["dpkg-query", "-W", "-f", "${Status}", "cms-agent"])?
        .stdout;
    ensure!(
        status == "install ok installed",
        "cms-agent package: {status:?}"
    );
    instance.run_successfully(&["test", "-x", "/usr/bin/cms-agent"])?;
    let config = instance
        .run_successfully(&["cat", "/etc/cms/agent.toml"])?
        .stdout;
    ensure!(config == AGENT_CONFIG, "agent config is {config:?}");
    let enabled = instance.run(&["systemctl", "is-enabled", "cms-agent.service"])?;
    ensure!(
        enabled.stdout.trim() == "enabled",
        "cms-agent.service: {enabled:?}"
    );
    // systemd started the agent at boot; with no server in its
    // configuration it says what it needs.
    let mut journal = String::new();
    wait_until_polling_every(
        Duration::from_millis(200),
        Duration::from_secs(60),
        "cms-agent.service to run at boot",
        || {
            journal = instance
                .run(&["journalctl", "-u", "cms-agent", "--no-pager", "-o", "cat"])?
                .stdout;
            Ok(journal
                .contains("not enrolled and its configuration has no server and token")
                .then_some(()))
        },
    )
    .with_context(|| format!("{}: its journal:\n{journal}", instance.name()))
}

fn check_apt_knows_only_the_internal_repository(
    instance: &Instance,
    testbed: &Testbed,
) -> Result<()> {
    let sources = instance.run_successfully(&[
        "sh",
        "-c",
        "grep -rh --no-filename -v '^#' /etc/apt/sources.list /etc/apt/sources.list.d/ | grep .",
    ])?;
    let expected = format!("deb [trusted=yes] {} ./\n", testbed.package_repo_url());
    ensure!(
        sources.stdout == expected,
        "{}: apt sources are {:?}",
        instance.name(),
        sources.stdout
    );
    Ok(())
}

fn check_network_reaches_the_host_and_nothing_else(
    instance: &Instance,
    testbed: &Testbed,
    repo_server: &cms_integration::HttpFileServer,
) -> Result<()> {
    let routes = instance
        .run_successfully(&["ip", "-4", "route", "show"])?
        .stdout;
    ensure!(
        routes.trim()
            == format!(
                "{} dev eth0 proto kernel scope link src {}",
                testbed.subnet(),
                instance.address()
            ),
        "{}: routes are {routes:?}",
        instance.name()
    );
    // A route lookup sends nothing; it shows there is no way out.
    let outside = instance.run(&["ip", "route", "get", "1.1.1.1"])?;
    ensure!(
        !outside.succeeded() && outside.stderr.contains("Network is unreachable"),
        "{}: an outside address is routable: {outside:?}",
        instance.name()
    );
    let url = format!("{}Release", repo_server.url());
    instance.run_successfully(&[
        "/usr/lib/apt/apt-helper",
        "download-file",
        &url,
        "/tmp/Release",
    ])?;
    let fetched: Vec<(String, u16)> = repo_server
        .requests_from(instance.address().into())
        .into_iter()
        .map(|entry| (entry.target, entry.status))
        .collect();
    ensure!(
        fetched.contains(&("/Release".to_string(), 200)),
        "{}: the repository saw no request from {}: {fetched:?}",
        instance.name(),
        instance.address()
    );
    Ok(())
}

fn check_instances_are_separate(web: &Instance, db: &Instance) -> Result<()> {
    web.run_successfully(&["sh", "-c", "echo web > /root/written-in-web"])?;
    web.run_successfully(&["test", "-e", "/root/written-in-web"])?;
    let in_db = db.run(&["test", "-e", "/root/written-in-web"])?;
    ensure!(
        in_db.exit_code == Some(1),
        "a file written in web shows in db: {in_db:?}"
    );
    let machine_id = |instance: &Instance| -> Result<String> {
        Ok(instance
            .run_successfully(&["cat", "/etc/machine-id"])?
            .stdout)
    };
    ensure!(
        machine_id(web)? != machine_id(db)?,
        "web and db share a machine id"
    );
    Ok(())
}

fn check_packages_install_from_the_internal_repository(
    web: &Instance,
    db: &Instance,
) -> Result<()> {
    web.run_successfully(&["apt-get", "update"])?;
    web.run_successfully(&["apt-get", "install", "--yes", "cms-testbed-hello", "hello"])?;
    let built = web.run_successfully(&["cms-testbed-hello"])?.stdout;
    ensure!(
        built == "hello from the internal package repository\n",
        "{built:?}"
    );
    let downloaded = web.run_successfully(&["hello"])?.stdout;
    ensure!(downloaded == "Hello, world!\n", "{downloaded:?}");
    let in_db = db.run(&["dpkg-query", "--show", "cms-testbed-hello"])?;
    ensure!(
        !in_db.succeeded(),
        "installed in web, the package shows in db: {in_db:?}"
    );
    Ok(())
}

fn timed<T>(step: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = step()?;
    Ok((value, started.elapsed()))
}

fn report_time(what: &str, duration: Duration) {
    eprintln!("testbed timing: {what}: {:.2} s", duration.as_secs_f64());
}
