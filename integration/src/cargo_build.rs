//! Building a binary of this workspace from a test, the way a release job
//! builds the agent before baking it: `cargo build`, asking cargo itself
//! where the executable landed (so `CARGO_TARGET_DIR` and profiles just
//! work) instead of guessing a path under `target/`.

use crate::host_command::{describe_command, run_command};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A cold debug build of the workspace takes minutes on two cores.
const CARGO_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Builds binary `binary` of workspace package `package` (debug profile)
/// and returns the path of the executable.
pub fn build_workspace_binary(package: &str, binary: &str) -> Result<PathBuf> {
    build_workspace_binary_with_profile(package, binary, "dev")
}

/// [`build_workspace_binary`] with cargo profile `profile` (`release` for a
/// benchmark that runs the shipped binary).
pub fn build_workspace_binary_with_profile(
    package: &str,
    binary: &str,
    profile: &str,
) -> Result<PathBuf> {
    // The cargo running this test, if cargo runs it; else the one on PATH.
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--package", package, "--bin", binary])
        .args(["--profile", profile])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace_root());
    without_test_package_environment(&mut command);
    let command_line = describe_command(&command);
    let output = run_command(command, CARGO_BUILD_TIMEOUT)?;
    if !output.succeeded() {
        // stdout holds cargo's JSON messages; the compiler's diagnostics,
        // rendered for humans, are on stderr.
        bail!(
            "Failed to build {binary}: `{command_line}` failed\n{}",
            output.stderr.trim_end()
        );
    }
    find_executable(&output.stdout, binary).with_context(|| {
        format!("Failed to build {binary}: `{command_line}` reported no executable named {binary}")
    })
}

/// Builds the agent's Debian package with `scripts/package` (dev profile,
/// the build the tests already have) and returns its path. Built once per
/// test process.
pub fn build_agent_package() -> Result<PathBuf> {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let path = run_package_script(
        &[
            "--profile",
            "dev",
            "--format",
            "deb",
            "--package",
            "cms-agent",
        ],
        ".deb",
    )?
    .into_iter()
    .next()
    .context("Failed to build the agent's package: scripts/package named no package")?;
    *built = Some(path.clone());
    Ok(path)
}

/// Builds the server's Debian package (dev profile) and returns its path;
/// built once per test process, like [`build_agent_package`]: tests that
/// run at once must not write the same `.deb.partial` together.
pub fn build_server_package() -> Result<PathBuf> {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let path = run_package_script(
        &[
            "--profile",
            "dev",
            "--format",
            "deb",
            "--package",
            "cms-server",
        ],
        ".deb",
    )?
    .into_iter()
    .next()
    .context("Failed to build the server's package: scripts/package named no package")?;
    *built = Some(path.clone());
    Ok(path)
}

/// The RPM packages of the agent and the server, built by `scripts/package`.
#[derive(Clone, Debug)]
pub struct RpmPackages {
    pub agent: PathBuf,
    pub server: PathBuf,
}

/// Builds the `.rpm` packages of the agent and the server with
/// `scripts/package --profile dev --format rpm` (needs `rpmbuild`, Debian
/// package rpm) and returns their paths. Both in one run, as `.ci/run`
/// builds them: cargo then has nothing to rebuild. Built once per test
/// process.
pub fn build_rpm_packages() -> Result<RpmPackages> {
    static BUILT: std::sync::Mutex<Option<RpmPackages>> = std::sync::Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(packages) = built.as_ref() {
        return Ok(packages.clone());
    }
    let paths = run_package_script(&["--profile", "dev", "--format", "rpm"], ".rpm")?;
    let named = |name: &str| {
        paths
            .iter()
            .find(|path| {
                path.file_name()
                    .is_some_and(|file| file.to_string_lossy().starts_with(&format!("{name}-")))
            })
            .cloned()
            .with_context(|| {
                format!("Failed to build the RPM packages: scripts/package named no {name} package in {paths:?}")
            })
    };
    let packages = RpmPackages {
        agent: named("cms-agent")?,
        server: named("cms-server")?,
    };
    *built = Some(packages.clone());
    Ok(packages)
}

/// Runs `scripts/package` with `arguments`; the paths it printed that end
/// with `extension`.
fn run_package_script(arguments: &[&str], extension: &str) -> Result<Vec<PathBuf>> {
    let mut command = Command::new(workspace_root().join("scripts/package"));
    command.args(arguments).current_dir(workspace_root());
    without_test_package_environment(&mut command);
    // The cargo running this test, so the script builds with the same one.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let directory = Path::new(&cargo).parent().map(Path::to_path_buf);
        if let Some(directory) = directory {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![directory];
            paths.extend(std::env::split_paths(&path));
            command.env("PATH", std::env::join_paths(paths)?);
        }
    }
    let command_line = describe_command(&command);
    let output = run_command(command, CARGO_BUILD_TIMEOUT)?;
    if !output.succeeded() {
        bail!(
            "Failed to build a package: `{command_line}` failed\n{}",
            output.stderr.trim_end()
        );
    }
    Ok(output
        .stdout
        .lines()
        .filter(|line| line.ends_with(extension))
        .map(PathBuf::from)
        .collect())
}

/// Removes from `command`'s environment what cargo sets for the running
/// test about its own package (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …).
/// Build scripts such as ring's rerun when these change, so a `cargo build`
/// started from a test would otherwise recompile them, and again at the
/// next build from a shell.
fn without_test_package_environment(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        let about_the_test_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name_text.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*name_text);
        if about_the_test_package {
            command.env_remove(&name);
        }
    }
}

fn workspace_root() -> &'static Path {
    // This crate lives at `<workspace>/integration`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// The `executable` of the `compiler-artifact` message for binary `binary`
/// in cargo's JSON messages.
fn find_executable(messages: &str, binary: &str) -> Result<PathBuf> {
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_the_binary = message["reason"] == "compiler-artifact"
            && message["target"]["name"] == binary
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"));
        if let (true, Some(executable)) = (is_the_binary, message["executable"].as_str()) {
            return Ok(PathBuf::from(executable));
        }
    }
    bail!("no compiler-artifact message for binary {binary}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_is_read_from_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"cms_roles","kind":["lib"]},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"cms-agent","kind":["bin"]},"executable":"/t/debug/cms-agent"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            find_executable(messages, "cms-agent").unwrap(),
            PathBuf::from("/t/debug/cms-agent")
        );
        assert!(find_executable(messages, "cms-server").is_err());
    }
}
