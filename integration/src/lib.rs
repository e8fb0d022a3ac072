//! The testbed: real Debian instances with systemd as PID 1, booted on this
//! machine, on which the end-to-end tests of cms run.
//!
//! The story it mimics is the one cms is for. An operations team bakes
//! `cms-agent` into a machine image, boots cattle instances from it with tags,
//! and lets them install packages from an internal package repository. Here:
//!
//! - [`Image`] is a Debian root file system built once with `debootstrap` and
//!   cached outside git; [`Image::bake`] adds the agent, its systemd unit and
//!   its configuration, giving a [`BakedImage`] (our AMI).
//! - [`Testbed`] owns the host side: a machine-wide lock, a private bridge
//!   (`cmstb-br0`, on the first free /24 of `10.213.0.0/16`, the host at
//!   `.1`) that routes nowhere, and the clean-up of
//!   whatever an earlier crashed run left behind.
//! - [`Instance`] is one booted copy of a baked image (an overlayfs mount or a
//!   full copy), in its own network namespace on the bridge, with its own
//!   address and tags. Commands run inside it with `nsenter`.
//! - [`PackageRepo`] is the internal apt repository, built from `.deb` files
//!   and served over HTTP on the bridge address (on a port chosen when the
//!   testbed starts) by [`HttpFileServer`]; it is the only apt source an
//!   instance knows.
//!
//! Everything the testbed creates on the host is named with the `cmstb-`
//! prefix and removed by a drop guard, even when a test panics. Where the
//! machine cannot run the testbed (not root, a tool missing), every entry
//! point fails with a message naming what is missing: the tests never skip.
#![forbid(unsafe_code)]
// The harness waits on real instances and processes with real deadlines;
// the clock modules are for the product crates.
#![allow(clippy::disallowed_methods)]

mod admin_cli;
pub mod aws_api_double;
pub mod aws_secrets_double;
mod cargo_build;
mod example;
mod filesystem;
mod fixtures;
mod git_repo;
mod host_agent;
mod host_command;
mod http_double;
mod http_file_server;
mod image;
mod instance;
mod leftovers;
mod local_roles;
mod machine_lock;
mod network;
mod package_repo;
mod ports;
mod postgres;
mod prerequisites;
mod process_table;
mod reports;
mod rpm_root;
mod server_process;
mod settings;
mod shared_fixture;
mod slots;
mod tcp_proxy;
mod test_server;
mod testbed;
mod wait;

pub use admin_cli::AdminCli;
pub use aws_api_double::{AwsApiDouble, TargetEventKind};
pub use aws_secrets_double::AwsSecretsDouble;
pub use cargo_build::{
    RpmPackages, build_agent_package, build_rpm_packages, build_server_package,
    build_workspace_binary, build_workspace_binary_with_profile,
};
pub use example::{EXAMPLE_PACKAGES, EXAMPLE_REPOSITORY, ExampleRun, converge_example_web_role};
pub use fixtures::{AGENT_CONFIG, bake_agent_for_server, bake_agent_image, begin_end_to_end_test};
pub use git_repo::GitRepo;
pub use host_agent::{AgentDaemon, HostAgent};
pub use host_command::CommandOutput;
pub use http_file_server::{AccessLogEntry, HttpFileServer};
pub use image::{AgentBake, AgentConfigFile, BakedImage, Image, ImageOrigin, ImageRecipe};
pub use instance::{
    Instance, InstanceConfig, PACKAGE_SOURCE_PATH, RootFilesystemStrategy, SystemState,
    TAGS_FILE_PATH,
};
pub use leftovers::{Leftovers, find_leftovers, find_leftovers_of_instance};
pub use local_roles::AgentImageTestbed;
pub use network::{BRIDGE_NAME, NETWORK_PREFIX_LENGTH, current_bridge_hardware_address};
pub use package_repo::{DebPackageFile, DebPackageSpec, PackageRepo};
pub use postgres::{CertifiedKey, PostgresServer, SqlSession, TestCa};
pub use prerequisites::check_prerequisites;
pub use reports::{FIRST_REPORT_TIMEOUT, node_reports, wait_for_first_report};
pub use rpm_root::RpmRoot;
pub use server_process::{ServerProcess, free_loopback_port, http_request, https_request};
pub use settings::{CACHE_DIRECTORY_VARIABLE, DEBIAN_MIRROR_VARIABLE, TestbedSettings};
pub use shared_fixture::SharedFixture;
pub use tcp_proxy::TcpProxy;
pub use test_server::{TEST_STORE_VARIABLE, TestServer};
pub use testbed::Testbed;
pub use wait::{wait_until, wait_until_polling_every};

/// The prefix of every name the testbed gives to something on the host:
/// network namespaces, links, machines, instance and scratch directories.
/// Leftovers of a crashed run are recognised by it.
pub const NAME_PREFIX: &str = "cmstb-";
