//! Converging an instance from a roles repository written into it: the
//! repository goes to `/srv/roles` of the instance, and `cms-agent apply
//! --repo /srv/roles` compiles and applies it there, no server involved.
//! What the testbed tests of resource kinds share.

use anyhow::{Context, Result};

use crate::Instance;

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
