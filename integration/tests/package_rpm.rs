//! The RPM packages built by `scripts/package --format rpm`: what they
//! ship, what they require, and what their scriptlets do. Each package is
//! installed, upgraded and erased in an `rpm --root` tree (as an image build
//! installs into a chroot: no systemd running), where the scriptlets run
//! with the host's real `sh`, `systemctl`, `useradd` and `groupadd`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use cms_integration::{RpmRoot, build_rpm_packages};

/// The workspace's version: the packages' Version.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace_file(path: &str) -> Result<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(workspace.join(path)).with_context(|| format!("reading {path}"))
}

/// `rpm -qp` of `package` with `arguments`, its stdout.
fn query(package: &Path, arguments: &[&str]) -> Result<String> {
    let output = std::process::Command::new("rpm")
        .arg("-qp")
        .args(arguments)
        .arg(package)
        .output()
        .context("Failed to run rpm (Debian package rpm)")?;
    ensure!(output.status.success(), "rpm -qp {arguments:?}: {output:?}");
    Ok(String::from_utf8(output.stdout)?)
}

/// Each file of `package` as `MODE OWNER:GROUP FLAGS PATH`, sorted; FLAGS
/// are rpm's file flags (`c` configuration, `n` noreplace, `d`
/// documentation, `l` licence, which is also documentation) or `-`.
#[track_caller]
fn shipped_files(package: &Path) -> Vec<String> {
    let listing = query(
        package,
        &[
            "--qf",
            "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\\n]",
        ],
    )
    .unwrap();
    let mut files: Vec<String> = listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let flags = if fields[2].is_empty() { "-" } else { fields[2] };
            format!("{} {} {flags} {}", fields[0], fields[1], fields[3])
        })
        .collect();
    files.sort();
    files
}

fn sorted<const N: usize>(lines: [String; N]) -> Vec<String> {
    let mut lines = lines.to_vec();
    lines.sort();
    lines
}

#[test]
fn each_rpm_ships_the_files_of_its_deb_with_its_configuration_owner_only_and_noreplace() {
    let packages = build_rpm_packages().unwrap();
    let root = "root:root";
    assert_eq!(
        shipped_files(&packages.agent),
        sorted([
            format!("-rw------- {root} cn /etc/cms/agent.toml"),
            format!("-rw-r--r-- {root} - /usr/lib/systemd/system/cms-agent.service"),
            format!("-rw-r--r-- {root} - /usr/lib/systemd/system/cms-converged.target"),
            format!("-rw-r--r-- {root} - /usr/share/bash-completion/completions/cms-agent"),
            format!("-rw-r--r-- {root} - /usr/share/fish/vendor_completions.d/cms-agent.fish"),
            format!("-rw-r--r-- {root} - /usr/share/zsh/site-functions/_cms-agent"),
            format!("-rw-r--r-- {root} d /usr/share/doc/cms-agent/agent.md"),
            format!("-rw-r--r-- {root} d /usr/share/doc/cms-agent/operations.md"),
            format!("-rw-r--r-- {root} dl /usr/share/doc/cms-agent/copyright"),
            format!("-rwxr-xr-x {root} - /usr/bin/cms-agent"),
            format!("drwx------ {root} - /var/lib/cms/agent"),
            format!("drwxr-xr-x {root} - /etc/cms"),
            format!("drwxr-xr-x {root} - /usr/share/doc/cms-agent"),
            format!("drwxr-xr-x {root} - /var/lib/cms"),
        ])
    );
    // No test helper (such as store-crash-writer); no data directory: the
    // package never owns the fleet's CA and database.
    assert_eq!(
        shipped_files(&packages.server),
        sorted([
            format!("-rw------- {root} cn /etc/cms/server.env"),
            format!("-rw-r--r-- {root} - /usr/lib/systemd/system/cms-server.service"),
            format!("-rw-r--r-- {root} - /usr/share/bash-completion/completions/cms-server"),
            format!("-rw-r--r-- {root} - /usr/share/fish/vendor_completions.d/cms-server.fish"),
            format!("-rw-r--r-- {root} - /usr/share/zsh/site-functions/_cms-server"),
            format!("-rw-r--r-- {root} d /usr/share/doc/cms-server/operations.md"),
            format!("-rw-r--r-- {root} d /usr/share/doc/cms-server/server.md"),
            format!("-rw-r--r-- {root} dl /usr/share/doc/cms-server/copyright"),
            format!("-rwxr-xr-x {root} - /usr/bin/cms-server"),
            format!("drwxr-xr-x {root} - /etc/cms"),
            format!("drwxr-xr-x {root} - /usr/share/doc/cms-server"),
        ])
    );
}

#[test]
fn each_rpm_is_named_after_the_workspace_version_release_1_and_the_host_architecture() {
    let packages = build_rpm_packages().unwrap();
    let dpkg_architecture = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    let architecture = match String::from_utf8_lossy(&dpkg_architecture.stdout).trim() {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => panic!("no RPM architecture for {other}"),
    };
    for (package, name) in [
        (&packages.agent, "cms-agent"),
        (&packages.server, "cms-server"),
    ] {
        assert_eq!(
            query(package, &["--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}"]).unwrap(),
            format!("{name} {VERSION} 1 {architecture}")
        );
        assert_eq!(
            package.file_name().unwrap().to_string_lossy(),
            format!("{name}-{VERSION}-1.{architecture}.rpm")
        );
        // The dev profile's payload: fast gzip, as the dev .deb.
        assert_eq!(
            query(package, &["--qf", "%{PAYLOADCOMPRESSOR}"]).unwrap(),
            "gzip"
        );
    }
}

#[test]
fn each_rpm_requires_glibc_and_the_libraries_its_binary_links_and_provides_only_itself() {
    let packages = build_rpm_packages().unwrap();
    for (package, name) in [
        (&packages.agent, "cms-agent"),
        (&packages.server, "cms-server"),
    ] {
        let requires = query(package, &["--requires"]).unwrap();
        let requires: Vec<&str> = requires.lines().collect();
        for required in [
            "glibc",
            "libc.so.6()(64bit)",
            "libgcc_s.so.1()(64bit)",
            "/bin/sh",
        ] {
            assert!(
                requires.contains(&required),
                "{name} lacks {required}: {requires:?}"
            );
        }
        // Nothing Debian's: no package name of the build host.
        for line in &requires {
            assert!(
                !line.contains("libc6") && !line.contains("debian"),
                "{name}: {line}"
            );
        }
        let provides = query(package, &["--provides"]).unwrap();
        for line in provides.lines() {
            let provided = line.split(' ').next().unwrap();
            assert!(
                provided == name
                    || provided.starts_with(&format!("{name}("))
                    || provided == format!("config({name})"),
                "{name} provides {line}"
            );
        }
    }
    // Its %pre makes a user with groupadd and useradd.
    let requires = query(&packages.server, &["--requires"]).unwrap();
    assert!(
        requires.lines().any(|line| line == "shadow-utils"),
        "{requires}"
    );
}

/// Each scriptlet of `package`: (name, body).
fn scriptlets(package: &Path) -> Vec<(String, String)> {
    let text = query(package, &["--scripts"]).unwrap();
    let mut scriptlets: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(" scriptlet (using /bin/sh):") {
            scriptlets.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = scriptlets.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    scriptlets
}

/// Whether line `index` of `lines` lies inside an `if` whose condition
/// contains `condition`, by indentation.
fn inside_if(lines: &[&str], index: usize, condition: &str) -> bool {
    let indentation = |line: &str| line.len() - line.trim_start().len();
    let mut level = indentation(lines[index]);
    for line in lines[..index].iter().rev() {
        if indentation(line) < level && !line.trim().is_empty() {
            level = indentation(line);
            if line.trim_start().starts_with("if ") && line.contains(condition) {
                return true;
            }
        }
    }
    false
}

#[test]
fn no_rpm_scriptlet_starts_a_service_and_a_running_systemd_is_only_told_behind_its_check() {
    let packages = build_rpm_packages().unwrap();
    for package in [&packages.agent, &packages.server] {
        let scriptlets = scriptlets(package);
        let names: Vec<&str> = scriptlets.iter().map(|(name, _)| name.as_str()).collect();
        if package == &packages.server {
            assert_eq!(
                names,
                ["preinstall", "postinstall", "preuninstall", "postuninstall"]
            );
        } else {
            assert_eq!(names, ["postinstall", "preuninstall", "postuninstall"]);
        }
        for (name, body) in &scriptlets {
            let lines: Vec<&str> = body.lines().collect();
            for (index, line) in lines.iter().enumerate() {
                let command = line.trim_start();
                assert!(
                    !command.starts_with("systemctl start")
                        && !command.starts_with("systemctl restart")
                        && !command.contains("--now"),
                    "{name} of {}: {line}",
                    package.display()
                );
                // What needs a running manager waits for it; enabling and
                // disabling work offline (they only edit symlinks).
                if ["daemon-reload", "try-restart", "systemctl stop"]
                    .iter()
                    .any(|needs_manager| command.contains(needs_manager))
                {
                    assert!(
                        inside_if(&lines, index, "[ -d /run/systemd/system ]"),
                        "{name} of {}: `{command}` without the check\n{body}",
                        package.display()
                    );
                }
                // Stopped and disabled only when the package is erased, not
                // when an upgrade replaces it.
                if command.starts_with("systemctl stop") || command.contains(" disable ") {
                    assert_eq!(name, "preuninstall", "{line}");
                    assert!(inside_if(&lines, index, "[ \"$1\" -eq 0 ]"), "{body}");
                }
            }
        }
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn enabled(root: &RpmRoot, unit: &str) -> bool {
    root.join(&format!(
        "etc/systemd/system/multi-user.target.wants/{unit}"
    ))
    .symlink_metadata()
    .is_ok()
}

#[test]
fn the_agent_rpm_installed_into_a_root_enables_its_unit_keeps_an_edited_configuration_and_its_state_when_erased()
-> Result<()> {
    let packages = build_rpm_packages()?;
    let root = RpmRoot::create()?;
    root.install(&packages.agent)?;

    // The files, as in the repository.
    for (installed, source) in [
        (
            "/usr/lib/systemd/system/cms-agent.service",
            "cms-agent/cms-agent.service",
        ),
        (
            "/usr/lib/systemd/system/cms-converged.target",
            "cms-agent/cms-converged.target",
        ),
        ("/etc/cms/agent.toml", "packaging/cms-agent/agent.toml"),
    ] {
        ensure!(
            std::fs::read_to_string(root.join(installed))? == workspace_file(source)?,
            "{installed} differs from {source}"
        );
    }
    let target =
        std::fs::read_to_string(root.join("/usr/lib/systemd/system/cms-converged.target"))?;
    ensure!(
        target.starts_with("[Unit]\n") && !target.contains("[Install]"),
        "{target}"
    );
    // Stripped of debug information, as for the .deb.
    let sections = std::process::Command::new("readelf")
        .args(["-S", "--wide"])
        .arg(root.join("/usr/bin/cms-agent"))
        .output()?;
    ensure!(sections.status.success(), "{sections:?}");
    ensure!(!String::from_utf8_lossy(&sections.stdout).contains(".debug_info"));
    ensure!(mode_of(&root.join("/etc/cms/agent.toml")) == 0o600);
    ensure!(mode_of(&root.join("/var/lib/cms/agent")) == 0o700);
    // %post enabled the unit with the real systemctl, offline.
    ensure!(
        enabled(&root, "cms-agent.service"),
        "cms-agent.service is not enabled"
    );
    let listed = root.rpm(["-ql", "cms-agent"])?.into_success()?.stdout;
    ensure!(
        listed
            .lines()
            .any(|line| line == "/usr/lib/systemd/system/cms-converged.target")
    );
    let verified = root.rpm(["-V", "--nodeps", "cms-agent"])?;
    ensure!(
        verified.succeeded() && verified.stdout.is_empty(),
        "{verified:?}"
    );

    // The admin edits the configuration and disables the unit; an upgrade
    // keeps both.
    std::fs::write(
        root.join("/etc/cms/agent.toml"),
        "server = \"cms.internal:7470\"\n",
    )?;
    let disable = std::process::Command::new("systemctl")
        .arg("--root")
        .arg(root.path())
        .args(["disable", "cms-agent.service"])
        .output()?;
    ensure!(disable.status.success(), "{disable:?}");
    ensure!(!enabled(&root, "cms-agent.service"));
    root.reinstall(&packages.agent)?;
    ensure!(
        std::fs::read_to_string(root.join("/etc/cms/agent.toml"))?
            == "server = \"cms.internal:7470\"\n"
    );
    ensure!(
        !enabled(&root, "cms-agent.service"),
        "the upgrade enabled the unit again"
    );
    let verified = root.rpm(["-V", "--nodeps", "cms-agent"])?;
    ensure!(
        verified
            .stdout
            .trim_end()
            .ends_with(" c /etc/cms/agent.toml")
            && verified.stdout.lines().count() == 1,
        "{verified:?}"
    );

    // Erased: the unit disabled, its files gone, the edited configuration
    // saved aside, the node's identity kept.
    let enable = std::process::Command::new("systemctl")
        .arg("--root")
        .arg(root.path())
        .args(["enable", "cms-agent.service"])
        .output()?;
    ensure!(enable.status.success(), "{enable:?}");
    std::fs::write(root.join("/var/lib/cms/agent/key.pem"), "identity")?;
    root.erase("cms-agent")?;
    ensure!(
        !enabled(&root, "cms-agent.service"),
        "still enabled after erasing"
    );
    for gone in [
        "/usr/bin/cms-agent",
        "/usr/lib/systemd/system/cms-agent.service",
        "/usr/lib/systemd/system/cms-converged.target",
        "/etc/cms/agent.toml",
    ] {
        ensure!(!root.join(gone).exists(), "{gone} is left");
    }
    ensure!(root.join("/etc/cms/agent.toml.rpmsave").exists());
    ensure!(root.join("/var/lib/cms/agent/key.pem").exists());
    Ok(())
}

#[test]
fn the_server_rpm_installed_into_a_root_makes_its_system_user_and_data_directory_and_erasing_keeps_them()
-> Result<()> {
    let packages = build_rpm_packages()?;
    let root = RpmRoot::create()?;
    root.install(&packages.server)?;

    // %pre made the user with the real groupadd and useradd.
    let passwd = std::fs::read_to_string(root.join("/etc/passwd"))?;
    let user = passwd
        .lines()
        .find(|line| line.starts_with("cms-server:"))
        .with_context(|| format!("no cms-server user: {passwd}"))?;
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields[2].parse()?;
    let gid: u32 = fields[3].parse()?;
    ensure!(uid < 1000, "not a system user: {user}");
    ensure!(
        fields[5] == "/var/lib/cms-server" && fields[6] == "/usr/sbin/nologin",
        "{user}"
    );
    let group = std::fs::read_to_string(root.join("/etc/group"))?;
    ensure!(group.contains(&format!("cms-server:x:{gid}:")), "{group}");

    // %post made the data directory, the service's own.
    let data = root.join("/var/lib/cms-server");
    let metadata = std::fs::metadata(&data)?;
    ensure!(
        (metadata.uid(), metadata.gid()) == (uid, gid),
        "{metadata:?}"
    );
    ensure!(mode_of(&data) == 0o750);
    ensure!(mode_of(&root.join("/etc/cms/server.env")) == 0o600);
    ensure!(
        std::fs::read_to_string(root.join("/usr/lib/systemd/system/cms-server.service"))?
            == workspace_file("cms-server/cms-server.service")?
    );
    ensure!(
        enabled(&root, "cms-server.service"),
        "cms-server.service is not enabled"
    );
    let verified = root.rpm(["-V", "--nodeps", "cms-server"])?;
    ensure!(
        verified.succeeded() && verified.stdout.is_empty(),
        "{verified:?}"
    );

    // Erased: the CA and the database stay, and so does the user, which a
    // new install finds again.
    std::fs::write(data.join("store.db"), "the fleet")?;
    let erased = root.erase("cms-server")?;
    ensure!(
        erased.stderr.contains("kept /var/lib/cms-server"),
        "{erased:?}"
    );
    ensure!(!root.join("/usr/bin/cms-server").exists());
    ensure!(
        !enabled(&root, "cms-server.service"),
        "still enabled after erasing"
    );
    ensure!(data.join("store.db").exists());
    root.install(&packages.server)?;
    let passwd_again = std::fs::read_to_string(root.join("/etc/passwd"))?;
    ensure!(
        passwd_again
            .lines()
            .filter(|line| line.starts_with("cms-server:"))
            .collect::<Vec<_>>()
            == [user],
        "{passwd_again}"
    );
    Ok(())
}
