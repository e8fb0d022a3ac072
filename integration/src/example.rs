//! The example roles repository converging a real instance: what the
//! `cms-demo` binary shows a new user, and what a test keeps true.
//!
//! One cattle instance boots from the testbed image (the agent baked in,
//! tags `role=web`, `env=prod` in `/etc/cms/tags.toml`); the internal
//! package repository gets what the example roles install (nginx, curl,
//! procps and the dependencies the image lacks); the example repository is
//! copied into the instance and `cms-agent apply` runs there twice.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{
    CommandOutput, InstanceConfig, PackageRepo, Testbed, TestbedSettings, bake_agent_image,
};

/// The example roles repository.
pub const EXAMPLE_REPOSITORY: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../roles/examples/roles-repo");

/// What the example `base` and `web` roles install.
pub const EXAMPLE_PACKAGES: &[&str] = &["nginx", "curl", "procps"];

/// What happened in the instance.
#[derive(Debug)]
pub struct ExampleRun {
    pub first_apply: CommandOutput,
    pub second_apply: CommandOutput,
    /// `curl` of nginx inside the instance: `HTTP <code>`.
    pub http_answer: String,
    pub motd: String,
}

/// Boots an instance, converges the example `web` role in it twice, and
/// tears everything down. `progress` is told what is happening.
pub fn converge_example_web_role(
    settings: &TestbedSettings,
    mut progress: impl FnMut(&str),
) -> Result<ExampleRun> {
    progress(
        "building cms-agent and baking it into the instance image (the first time, debootstrap takes about a minute)",
    );
    let baked = bake_agent_image(settings)?;
    let testbed = Testbed::start(settings)?;
    progress(&format!(
        "filling the internal package repository with {} and their dependencies",
        EXAMPLE_PACKAGES.join(", ")
    ));
    let mut repo = PackageRepo::create(settings)?;
    repo.download_with_dependencies(baked.base(), EXAMPLE_PACKAGES)?;
    let server = testbed.serve_package_repo(&repo)?;

    progress("booting instance web-1 with tags role=web, env=prod");
    let instance = testbed.boot(
        &baked,
        InstanceConfig::new("web-1")
            .with_tag("role", "web")
            .with_tag("env", "prod"),
    )?;
    copy_tree(
        Path::new(EXAMPLE_REPOSITORY),
        &instance.root_directory().join("srv/roles"),
    )?;

    let apply = ["cms-agent", "apply", "--repo", "/srv/roles"];
    let first_apply = instance.run(&apply)?;
    let second_apply = instance.run(&apply)?;
    let http_answer = instance
        .run(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "HTTP %{http_code}",
            "-H",
            "Host: orders.example.com",
            "http://127.0.0.1/",
        ])?
        .stdout;
    let motd = instance.run(&["cat", "/etc/motd"])?.stdout;

    instance.shutdown()?;
    drop(server);
    testbed.shutdown()?;
    Ok(ExampleRun {
        first_apply,
        second_apply,
        http_answer,
        motd,
    })
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("Failed to create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("Failed to read {}", from.display()))?
    {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("Failed to copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}
