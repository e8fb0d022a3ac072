//! A roles repository as a team keeps it: a real git repository on disk,
//! committed to with the system `git`, for tests that serve it.

use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A git work tree on branch `main`, with a fixed committer.
pub struct GitRepo {
    dir: PathBuf,
}

impl GitRepo {
    /// Creates `dir` (and its parents) and runs `git init` there.
    pub fn init(dir: &Path) -> Result<GitRepo> {
        std::fs::create_dir_all(dir)?;
        let git = GitRepo {
            dir: dir.to_path_buf(),
        };
        git.run(&["init", "-q", "-b", "main"])?;
        Ok(git)
    }

    /// A repository in `dir` holding a copy of the folder `source`, in
    /// one commit: a plain folder (the example roles) where a server needs
    /// git, as replicas on a shared store do.
    pub fn copy_of(source: &Path, dir: &Path) -> Result<GitRepo> {
        std::fs::create_dir_all(dir)?;
        let copied = Command::new("cp")
            .arg("-R")
            .arg(format!("{}/.", source.display()))
            .arg(dir)
            .output()
            .context("Failed to run cp")?;
        ensure!(
            copied.status.success(),
            "cp {}: {}",
            source.display(),
            String::from_utf8_lossy(&copied.stderr)
        );
        let git = GitRepo::init(dir)?;
        git.commit(&[], "a copy")?;
        Ok(git)
    }

    /// The repository already in `dir` (made by [`GitRepo::init`]).
    pub fn open(dir: &Path) -> GitRepo {
        GitRepo {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Runs `git ARGS` in the work tree; fails with git's stderr.
    pub fn run(&self, args: &[&str]) -> Result<()> {
        let output = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args([
                "-c",
                "user.name=cms test",
                "-c",
                "user.email=test@cms.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .context("Failed to run git")?;
        ensure!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Writes each `(path, text)` and commits everything with `message`.
    /// The commit id `HEAD` points to, in hex.
    pub fn head(&self) -> Result<String> {
        let output = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(["rev-parse", "HEAD"])
            .output()?;
        ensure!(output.status.success(), "git rev-parse: {output:?}");
        Ok(String::from_utf8(output.stdout)?.trim().to_string())
    }

    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> Result<()> {
        for (path, text) in files {
            let path = self.dir.join(path);
            std::fs::create_dir_all(path.parent().context("parent")?)?;
            std::fs::write(path, text)?;
        }
        self.run(&["add", "-A"])?;
        self.run(&["commit", "-q", "-m", message])
    }
}
