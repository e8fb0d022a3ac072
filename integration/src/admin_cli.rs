//! The `cms-server` admin commands as an operator runs them on the server
//! host: the real binary, pointed at a test server's address and data
//! directory, its exit code and output returned for the test to read.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::test_server::TestServer;

/// Runs `cms-server` admin commands against one server.
#[derive(Debug, Clone)]
pub struct AdminCli {
    binary: PathBuf,
    server: String,
    data: PathBuf,
}

impl AdminCli {
    /// The commands of the `cms-server` at `binary`, for `server`.
    pub fn for_server(binary: PathBuf, server: &TestServer) -> AdminCli {
        AdminCli {
            binary,
            server: server.address.clone(),
            data: server.data.clone(),
        }
    }

    /// The commands of the `cms-server` at `binary`, for the server at
    /// `address` whose data directory is `data` (a server process).
    pub fn new(binary: PathBuf, address: &str, data: &Path) -> AdminCli {
        AdminCli {
            binary,
            server: address.to_string(),
            data: data.to_path_buf(),
        }
    }

    /// `cms-server ARGS --server … --data …`: exit code, stdout, stderr.
    pub fn run(&self, args: &[&str]) -> Result<(Option<i32>, String, String)> {
        let output = Command::new(&self.binary)
            .args(args)
            .arg("--server")
            .arg(&self.server)
            .arg("--data")
            .arg(&self.data)
            .env("NO_COLOR", "1")
            .output()?;
        Ok((
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// `run` with `--format json`, which must exit 0: its JSON.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let (code, json) = self.json_and_code(args)?;
        ensure!(
            code == Some(0),
            "cms-server {args:?} exited {code:?}: {json:#}"
        );
        Ok(json)
    }

    /// `run` with `--format json`: exit code and JSON.
    pub fn json_and_code(&self, args: &[&str]) -> Result<(Option<i32>, serde_json::Value)> {
        let mut with_format = args.to_vec();
        with_format.extend(["--format", "json"]);
        let (code, stdout, stderr) = self.run(&with_format)?;
        let json = serde_json::from_str(&stdout)
            .with_context(|| format!("cms-server {args:?} exited {code:?}: {stdout}{stderr}"))?;
        Ok((code, json))
    }
}
