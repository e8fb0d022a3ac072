//! Converging an instance from a roles repository written into it: the
//! repository goes to `/srv/roles` of the instance, and `cms-agent apply
//! --repo /srv/roles` compiles and applies it there, no server involved.
//! What the testbed tests of resource kinds share, with the testbed and
//! baked image they boot their instances from ([`AgentImageTestbed`]).

use anyhow::{Context, Result};

use crate::{
    BakedImage, Instance, InstanceConfig, Testbed, TestbedSettings, bake_agent_image,
    check_prerequisites, find_leftovers_of_instance,
};

/// Where [`write_local_roles`] puts the repository in the instance.
pub const LOCAL_ROLES_PATH: &str = "/srv/roles";

/// Writes `(path, text)` files of a roles repository (`cms.toml`,
/// `roles/app.toml`) to [`LOCAL_ROLES_PATH`] in the instance.
pub fn write_local_roles(instance: &Instance, files: &[(&str, &str)]) -> Result<()> {
    let repo = instance
        .root_directory()
        .join(LOCAL_ROLES_PATH.trim_start_matches('/'));
    for (path, text) in files {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Runs `cms-agent apply` on that repository in the instance with these
/// tags (`role=app`) and extra arguments; returns the exit code and all it
/// printed.
pub fn apply_local_roles(instance: &Instance, tags: &str, extra: &[&str]) -> Result<(i32, String)> {
    let mut args = vec![
        "cms-agent",
        "apply",
        "--repo",
        LOCAL_ROLES_PATH,
        "--tags",
        tags,
    ];
    args.extend_from_slice(extra);
    let output = instance.run(&args)?;
    let text = format!("{}{}", output.stdout, output.stderr);
    Ok((output.exit_code.unwrap_or(-1), text))
}

/// Runs a shell command in the instance, which must succeed; returns its
/// output, trimmed.
pub fn shell_output(instance: &Instance, command: &str) -> Result<String> {
    Ok(instance
        .run_successfully(&["sh", "-c", command])?
        .stdout
        .trim()
        .to_string())
}

/// The testbed and an image with the agent baked in: all a test of
/// resource kinds needs to boot instances (share it with
/// [`SharedFixture`](crate::SharedFixture)).
pub struct AgentImageTestbed {
    pub testbed: Testbed,
    pub baked: BakedImage,
}

impl AgentImageTestbed {
    /// Checks the machine, bakes the agent into the image, starts the
    /// testbed.
    pub fn start() -> Result<AgentImageTestbed> {
        check_prerequisites()?;
        let settings = TestbedSettings::from_environment();
        let baked = bake_agent_image(&settings)?;
        let testbed = Testbed::start(&settings)?;
        Ok(AgentImageTestbed { testbed, baked })
    }

    /// An instance of its own for one test, with these tags.
    pub fn boot(&self, name: &str, tags: &[(&str, &str)]) -> Result<Instance> {
        let config = tags
            .iter()
            .fold(InstanceConfig::new(name), |config, (key, value)| {
                config.with_tag(key, value)
            });
        self.testbed.boot(&self.baked, config)
    }
}

/// Shuts a test's instance down and checks that nothing of it is left on
/// the host (the testbed itself lives on for the other tests).
pub fn shut_down_leaving_nothing(testbed: &Testbed, instance: Instance) -> Result<()> {
    let name = instance.name().to_string();
    instance.shutdown()?;
    let leftovers = find_leftovers_of_instance(testbed.settings(), &name)?;
    anyhow::ensure!(leftovers.is_empty(), "after {name}'s teardown, {leftovers}");
    Ok(())
}
