//! The example roles repository served by `cms-server` and converged by the
//! agent of a real instance: what the `cms-demo` binary shows a new user,
//! and what a test keeps true.
//!
//! The server runs in this process on the testbed bridge, serving the
//! example repository (a plain folder: its revision is the hash of its
//! files). The agent's Debian package is installed into the image, and an
//! enrollment token for `role=web, env=*` goes into its
//! `/etc/cms/agent.toml` with the server's address, as a user bakes an AMI. One instance boots with tags
//! `role=web`, `env=prod`: its agent enrolls, pulls its catalog and
//! converges at boot, and reports. Then `cms-agent converge` runs once more
//! on the instance, which finds nothing to change.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cms_proto::v1 as pb;

use crate::filesystem::ScratchDirectory;
use crate::{
    CommandOutput, Image, ImageRecipe, InstanceConfig, PackageRepo, TestServer, Testbed,
    TestbedSettings, bake_agent_for_server,
};

/// The example roles repository.
pub const EXAMPLE_REPOSITORY: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../roles/examples/roles-repo");

/// What the example `base` and `web` roles install.
pub const EXAMPLE_PACKAGES: &[&str] = &["nginx", "curl", "procps"];

/// What happened.
#[derive(Debug)]
pub struct ExampleRun {
    /// The agent's journal up to its first report: enrollment and the
    /// first converge at boot.
    pub boot_journal: String,
    /// How long from the instance's boot to the server holding its report.
    pub boot_to_report: Duration,
    /// `cms-agent converge` run afterwards on the instance.
    pub second_converge: CommandOutput,
    /// The nodes as the server lists them.
    pub nodes: Vec<pb::NodeSummary>,
    /// The node's first report as the server stored it.
    pub first_report: pb::RunReport,
    /// `curl` of nginx inside the instance: `HTTP <code>`.
    pub http_answer: String,
    pub motd: String,
}

/// Runs the whole example and tears everything down. `progress` is told
/// what is happening.
pub fn converge_example_web_role(
    settings: &TestbedSettings,
    mut progress: impl FnMut(&str),
) -> Result<ExampleRun> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    progress(
        "building cms-agent; the instance image is built once with debootstrap (about a minute) and cached",
    );
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), settings)?;
    let testbed = Testbed::start(settings)?;
    progress(&format!(
        "filling the internal package repository with {} and their dependencies",
        EXAMPLE_PACKAGES.join(", ")
    ));
    let mut repo = PackageRepo::create(settings)?;
    repo.download_with_dependencies(&image, EXAMPLE_PACKAGES)?;
    let package_server = testbed.serve_package_repo(&repo)?;

    progress(
        "starting cms-server on the bridge, serving the example roles repository (sled in a fresh data directory)",
    );
    let data = ScratchDirectory::create(&settings.scratch_directory(), "server-data")?;
    let server = TestServer::start_on(
        data.path(),
        Path::new(EXAMPLE_REPOSITORY),
        std::net::SocketAddr::from((testbed.host_address(), 0)),
    )?;
    let token = server.token(&[("role", "web"), ("env", "*")])?;

    progress(
        "baking the agent into the image: its Debian package (dpkg -i), and /etc/cms/agent.toml with the server address and token",
    );
    let baked = bake_agent_for_server(&image, &server.address, &token)?;

    progress(
        "booting instance web-1 with tags role=web, env=prod; its agent enrolls and converges at boot",
    );
    let booted = Instant::now();
    let instance = testbed.boot(
        &baked,
        InstanceConfig::new("web-1")
            .with_tag("role", "web")
            .with_tag("env", "prod"),
    )?;
    let first_report = crate::reports::wait_for_first_report(&server, &instance)?;
    let boot_to_report = booted.elapsed();
    let boot_journal = instance
        .run(&["journalctl", "-u", "cms-agent", "--no-pager", "-o", "cat"])?
        .stdout;
    let second_converge = instance.run(&["cms-agent", "converge"])?;
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
    let nodes = server.runtime.block_on(async {
        let mut admin = server.admin().await?;
        anyhow::Ok(
            admin
                .list_nodes(pb::ListNodesRequest { selector: None })
                .await?
                .into_inner()
                .nodes,
        )
    })?;

    instance.shutdown()?;
    server.stop().context("Failed to stop the server")?;
    drop(package_server);
    testbed.shutdown()?;
    Ok(ExampleRun {
        boot_journal,
        boot_to_report,
        second_converge,
        nodes,
        first_report,
        http_answer,
        motd,
    })
}
