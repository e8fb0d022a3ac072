//! The server with its data directory on a full disk: a small tmpfs (the
//! test mounts it, as root; it skips with a message otherwise) under an
//! in-process server with its HTTP port, and the real `cms-agent` binary.
//! While the disk is full, `token create` and report deliveries fail with
//! the disk's cause and `/healthz` says unhealthy; once space is freed,
//! everything works again without a restart.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cms_integration::{GitRepo, HostAgent, TestServer, build_workspace_binary};

/// A tmpfs of `size` mounted on `mount`, unmounted on drop.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    fn mount(mount: &Path, size: &str) -> Result<Option<SmallDisk>> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return Ok(None);
        }
        std::fs::create_dir_all(mount)?;
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0750"),
                "tmpfs",
            ])
            .arg(mount)
            .status()?;
        ensure!(status.success(), "mount a tmpfs on {}", mount.display());
        Ok(Some(SmallDisk {
            mount: mount.to_path_buf(),
        }))
    }

    /// Fills the disk with one file; returns its path.
    fn fill(&self) -> Result<PathBuf> {
        let path = self.mount.join("filler");
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0xa5u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&[0]).is_ok() {}
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

fn http_get(address: &str, path: &str) -> Result<(u16, String)> {
    cms_integration::http_request(address.parse()?, "GET", path, &[], b"")
}

#[test]
fn on_a_full_disk_callers_get_the_cause_healthz_fails_and_the_server_recovers_once_space_returns()
-> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("server");
    let Some(disk) = SmallDisk::mount(&data, "48m")? else {
        return Ok(());
    };
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out)?;
    let repo = GitRepo::init(&dir.path().join("roles"))?;
    repo.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            (
                "roles/app.toml",
                &format!(
                    "[[file]]\npath = \"{}/app.conf\"\ncontent = \"served\\n\"\n",
                    out.display()
                ),
            ),
        ],
        "roles",
    )?;
    let server = TestServer::start_with_http(&data, repo.path(), |_| {})?;
    let http = server.http_address.clone().context("an HTTP port")?;
    let binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let agent = HostAgent::in_directory(&binary, dir.path(), "app")?;
    let token = server.token(&[("role", "*")])?;
    let enrolled = agent.enroll(&server.address, &token, "app-1", "role=app")?;
    ensure!(
        enrolled.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    assert_eq!(http_get(&http, "/healthz")?, (200, "ok\n".to_string()));

    let filler = disk.fill()?;
    // An admin write: the operator sees the disk's cause, not "Internal".
    let mut refused = None;
    for _ in 0..200 {
        if let Err(error) = server.token(&[("role", "*")]) {
            refused = Some(format!("{error:#}"));
            break;
        }
    }
    let refused = refused.context("token create kept working on a full disk")?;
    assert!(
        refused.contains("No space left on device")
            && refused.contains("the server's store cannot write"),
        "{refused}"
    );
    let (code, body) = http_get(&http, "/healthz")?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    // An agent's run converges, and its report is refused with the cause
    // (it stays queued).
    let (_, output) = agent.converge()?;
    assert!(
        output.contains("No space left on device") && output.contains("stay queued"),
        "{output}"
    );

    std::fs::remove_file(&filler)?;
    // No restart: the health check recovers the store by itself.
    assert_eq!(http_get(&http, "/healthz")?, (200, "ok\n".to_string()));
    server.token(&[("role", "*")])?;
    let (code, output) = agent.converge()?;
    assert!(code == 0 || code == 2, "exit {code}: {output}");
    assert!(!output.contains("stay queued"), "{output}");
    drop(server);
    drop(disk);
    Ok(())
}
