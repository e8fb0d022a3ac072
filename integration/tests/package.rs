//! The Debian packages built by `scripts/package`: what they ship, and what
//! installing them does in a real instance. The agent's package is what
//! every testbed image is baked with (`dpkg -i` chrooted into the image);
//! here an instance booted from such an image enrolls and converges at
//! boot, and the server's package is installed into a running instance.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_integration::{
    Image, ImageRecipe, Instance, InstanceConfig, TestServer, Testbed, bake_agent_for_server,
    bake_agent_image, begin_end_to_end_test, build_agent_package, build_server_package,
    build_workspace_binary, wait_for_first_report, wait_until_polling_every,
};
use cms_proto::v1 as pb;

/// The paths a package ships, from `dpkg-deb --contents`.
fn package_files(package: &Path) -> Result<Vec<String>> {
    let output = std::process::Command::new("dpkg-deb")
        .arg("--contents")
        .arg(package)
        .output()
        .context("Failed to run dpkg-deb")?;
    ensure!(output.status.success(), "dpkg-deb: {output:?}");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(|path| path.trim_start_matches('.').to_string())
        .filter(|path| !path.ends_with('/'))
        .collect())
}

fn package_field(package: &Path, field: &str) -> Result<String> {
    let output = std::process::Command::new("dpkg-deb")
        .args(["--field"])
        .arg(package)
        .arg(field)
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[test]
fn each_package_ships_its_binary_unit_configuration_and_completions_and_nothing_else() -> Result<()>
{
    for (package, name, config) in [
        (build_agent_package()?, "cms-agent", "/etc/cms/agent.toml"),
        (build_server_package()?, "cms-server", "/etc/cms/server.env"),
    ] {
        let mut files = package_files(&package)?;
        files.retain(|path| !path.starts_with("/usr/share/doc/"));
        files.sort();
        let mut expected = vec![
            config.to_string(),
            format!("/usr/bin/{name}"),
            format!("/usr/lib/systemd/system/{name}.service"),
            format!("/usr/share/bash-completion/completions/{name}"),
            format!("/usr/share/fish/vendor_completions.d/{name}.fish"),
            format!("/usr/share/zsh/vendor-completions/_{name}"),
        ];
        if name == "cms-agent" {
            // Reached after the agent's first successful converge since boot.
            expected.push("/usr/lib/systemd/system/cms-converged.target".to_string());
        }
        expected.sort();
        // No test helper (such as store-crash-writer) and no stray file.
        assert_eq!(files, expected, "{}", package.display());
        let depends = package_field(&package, "Depends")?;
        assert!(depends.contains("libc6 (>="), "{name} Depends: {depends}");
        let conffiles = std::process::Command::new("dpkg-deb")
            .arg("--info")
            .arg(&package)
            .arg("conffiles")
            .output()?;
        assert_eq!(
            String::from_utf8_lossy(&conffiles.stdout).trim(),
            config,
            "{name}"
        );
    }
    Ok(())
}

/// Each configuration file a package ships may hold a secret (the agent's
/// enrollment token, the server's webhook secret): installed owner-only,
/// root's, never readable by other local users.
#[test]
fn configuration_files_that_may_hold_secrets_are_installed_owner_only() -> Result<()> {
    for (package, config) in [
        (build_agent_package()?, "./etc/cms/agent.toml"),
        (build_server_package()?, "./etc/cms/server.env"),
    ] {
        let output = std::process::Command::new("dpkg-deb")
            .arg("--contents")
            .arg(&package)
            .output()
            .context("Failed to run dpkg-deb")?;
        ensure!(output.status.success(), "dpkg-deb: {output:?}");
        let listing = String::from_utf8_lossy(&output.stdout);
        let line = listing
            .lines()
            .find(|line| line.split_whitespace().nth(5) == Some(config))
            .with_context(|| format!("{config} is not in {}", package.display()))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (fields[0], fields[1]),
            ("-rw-------", "root/root"),
            "{config} in {}: {line}",
            package.display()
        );
    }
    Ok(())
}

fn run(instance: &Instance, command: &str) -> Result<String> {
    Ok(instance.run_successfully(&["sh", "-c", command])?.stdout)
}

#[test]
fn the_agent_package_baked_into_an_image_starts_at_boot_enrolls_and_converges() -> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let roles = dir.path().join("roles");
    std::fs::create_dir_all(roles.join("roles"))?;
    std::fs::write(
        roles.join("cms.toml"),
        "[hierarchy]\nlayers = [\"common\"]\n",
    )?;
    std::fs::write(
        roles.join("roles/base.toml"),
        "[match]\nrole = \"base\"\n\n[[file]]\npath = \"/etc/motd\"\ncontent = \"converged by cms\\n\"\n",
    )?;
    let testbed = Testbed::start(&settings)?;
    let server = TestServer::start_on(
        &dir.path().join("server"),
        &roles,
        std::net::SocketAddr::from((testbed.host_address(), 0)),
    )?;
    let token = server.token(&[("role", "base")])?;
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
    let baked = bake_agent_for_server(&image, &server.address, &token)?;

    // The image build installed the package but started nothing: no
    // identity was made while baking.
    let baked_state = baked.layer_directory().join("var/lib/cms/agent");
    let baked_entries: Vec<_> = std::fs::read_dir(&baked_state)
        .with_context(|| format!("the package made no {}", baked_state.display()))?
        .collect();
    ensure!(
        baked_entries.is_empty(),
        "the agent ran while the image was baked: {baked_entries:?}"
    );

    let instance = testbed.boot(
        &baked,
        InstanceConfig::new("pkg-1").with_tag("role", "base"),
    )?;
    let report = wait_for_first_report(&server, &instance)?;
    ensure!(
        report
            .resources
            .iter()
            .all(|resource| resource.status != pb::ResourceStatus::Failed as i32),
        "{report:?}"
    );
    ensure!(run(&instance, "cat /etc/motd")? == "converged by cms\n");

    // What dpkg says about the agent, inside the instance.
    ensure!(
        run(
            &instance,
            "dpkg-query -W -f '${Status} ${Version}' cms-agent"
        )? == "install ok installed 0.0.0"
    );
    let listed = run(&instance, "dpkg -L cms-agent")?;
    for path in [
        "/usr/bin/cms-agent",
        "/usr/lib/systemd/system/cms-agent.service",
        "/usr/share/bash-completion/completions/cms-agent",
    ] {
        ensure!(listed.lines().any(|line| line == path), "{path}: {listed}");
    }
    ensure!(
        run(&instance, "dpkg-query -W -f '${Conffiles}' cms-agent")?
            .contains("/etc/cms/agent.toml")
    );
    ensure!(run(&instance, "stat -c '%a %U' /var/lib/cms/agent")?.trim() == "700 root");
    ensure!(run(&instance, "systemctl is-enabled cms-agent")?.trim() == "enabled");
    ensure!(run(&instance, "systemctl is-active cms-agent")?.trim() == "active");
    // Its journal: no colour codes.
    let journal = run(&instance, "journalctl -u cms-agent --no-pager -o cat")?;
    ensure!(!journal.contains('\u{1b}'), "{journal:?}");
    // The admin commands' JSON, as a script would read it.
    let admin = |arguments: &[&str]| -> Result<serde_json::Value> {
        let output =
            std::process::Command::new(build_workspace_binary("cms-server", "cms-server")?)
                .args(arguments)
                .args(["--server", &server.address, "--format", "json"])
                .arg("--data")
                .arg(&server.data)
                .output()?;
        ensure!(output.status.success(), "{output:?}");
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let nodes = admin(&["nodes"])?;
    let node = nodes
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["id"] == "pkg-1"))
        .with_context(|| format!("pkg-1 is not listed: {nodes}"))?;
    ensure!(node["tags"]["role"] == "base", "{node}");
    ensure!(node["failed"] == 0, "{node}");
    let reports = admin(&["reports", "pkg-1"])?;
    ensure!(
        reports[0]["resources"]
            .as_array()
            .is_some_and(|resources| resources
                .iter()
                .any(|resource| resource["reference"] == "file:/etc/motd"
                    && resource["status"] == "changed")),
        "{reports}"
    );
    let synced = admin(&["sync"])?;
    ensure!(
        synced["accepted"] == true && synced["errors"] == serde_json::json!([]),
        "{synced}"
    );
    let token = admin(&["token", "create", "--tags", "role=base"])?;
    ensure!(
        token["token"]
            .as_str()
            .is_some_and(|token| token.contains('.')),
        "{token}"
    );
    // `facts --format json` on the instance parses and names the tags.
    let facts: serde_json::Value =
        serde_json::from_str(&run(&instance, "cms-agent facts --format json")?)?;
    ensure!(facts["tags"]["role"] == "base", "{facts}");

    instance.shutdown()?;
    server.stop()?;
    testbed.shutdown()?;
    Ok(())
}

#[test]
fn the_server_package_makes_its_user_and_data_directory_serves_once_configured_and_keeps_its_data()
-> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let server_package = build_server_package()?;
    let baked = bake_agent_image(&settings)?;
    let testbed = Testbed::start(&settings)?;
    let instance = testbed.boot(&baked, InstanceConfig::new("cms-1"))?;
    std::fs::copy(
        &server_package,
        instance.root_directory().join("var/tmp/cms-server.deb"),
    )?;
    run(&instance, "dpkg -i /var/tmp/cms-server.deb")?;

    let user = run(&instance, "getent passwd cms-server")?;
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields[2].parse()?;
    ensure!(uid < 1000, "not a system user: {user}");
    ensure!(
        fields[5] == "/var/lib/cms-server" && fields[6] == "/usr/sbin/nologin",
        "{user}"
    );
    ensure!(
        run(&instance, "stat -c '%a %U %G' /var/lib/cms-server")?.trim()
            == "750 cms-server cms-server"
    );
    ensure!(run(&instance, "systemctl is-enabled cms-server")?.trim() == "enabled");
    // Installed on a running system, but not started: it has no roles yet.
    let active = instance.run(&["systemctl", "is-active", "cms-server"])?;
    ensure!(active.stdout.trim() == "inactive", "{active:?}");

    // Configured with a roles folder, started: it serves, as its user, and
    // root's admin commands find its credential in /var/lib/cms-server.
    run(
        &instance,
        "mkdir -p /srv/roles/roles && printf '[hierarchy]\\nlayers = [\"common\"]\\n' > /srv/roles/cms.toml && \
         chmod -R a+rX /srv/roles && echo CMS_SERVER_REPO=/srv/roles >> /etc/cms/server.env && \
         systemctl start cms-server",
    )?;
    let nodes = wait_until_polling_every(
        Duration::from_millis(200),
        Duration::from_secs(60),
        "cms-server to answer",
        || {
            let output = instance.run(&["cms-server", "nodes", "--format", "json"])?;
            Ok(output.succeeded().then_some(output.stdout))
        },
    )
    .or_else(|error| {
        let journal = instance.run(&["journalctl", "-u", "cms-server", "--no-pager"])?;
        Err(error.context(journal.stdout))
    })?;
    let nodes: serde_json::Value = serde_json::from_str(&nodes)?;
    ensure!(nodes == serde_json::json!([]), "{nodes}");
    ensure!(
        run(
            &instance,
            "stat -c %U /proc/$(systemctl show --value -p MainPID cms-server)"
        )?
        .trim()
            == "cms-server"
    );
    // The journal gets the priority prefix turned into levels: no raw `<6>`.
    let journal = run(
        &instance,
        "journalctl -u cms-server --no-pager -o cat -p info",
    )?;
    ensure!(journal.contains("serving"), "{journal}");
    ensure!(
        !journal.contains("<6>") && !journal.contains('\u{1b}'),
        "{journal}"
    );

    // An upgrade (here the same version again) restarts the running server
    // and keeps the configuration the admin edited.
    let main_pid =
        |instance: &Instance| run(instance, "systemctl show --value -p MainPID cms-server");
    let before = main_pid(&instance)?;
    run(&instance, "dpkg -i /var/tmp/cms-server.deb")?;
    ensure!(run(&instance, "systemctl is-active cms-server")?.trim() == "active");
    ensure!(main_pid(&instance)? != before, "not restarted");
    ensure!(run(&instance, "cat /etc/cms/server.env")?.contains("CMS_SERVER_REPO=/srv/roles"));

    // Purging stops it and keeps the CA and database, and the user.
    run(&instance, "dpkg --purge cms-server")?;
    let active = instance.run(&["systemctl", "is-active", "cms-server"])?;
    ensure!(active.stdout.trim() == "inactive", "{active:?}");
    ensure!(run(&instance, "ls /var/lib/cms-server")?.contains("admin"));
    run(&instance, "getent passwd cms-server")?;
    ensure!(
        !instance
            .run(&["test", "-e", "/usr/bin/cms-server"])?
            .succeeded()
    );

    instance.shutdown()?;
    testbed.shutdown()?;
    Ok(())
}
