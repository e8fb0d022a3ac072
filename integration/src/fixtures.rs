//! What every end-to-end test starts with: one test at a time, the
//! prerequisites checked, and the image with the workspace's `cms-agent`
//! baked in.

use std::sync::{Mutex, MutexGuard};

use anyhow::Result;

use crate::{
    AgentBake, AgentConfigFile, BakedImage, Image, ImageRecipe, TestbedSettings,
    build_agent_package, check_prerequisites,
};

/// The agent's configuration in images baked without a server: its daemon
/// has nothing to enroll with, and tests run `cms-agent apply` themselves.
pub const AGENT_CONFIG: &str =
    "# No server: this image's agent is used masterless (cms-agent apply).\n";

/// Tests that boot instances share the bridge and check for leftovers on
/// the whole machine, so they run one at a time; on a machine that cannot
/// boot instances they fail first thing, saying what is missing.
pub fn begin_end_to_end_test() -> Result<(MutexGuard<'static, ()>, TestbedSettings)> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that failed while holding the lock leaves nothing to protect.
    let alone = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    check_prerequisites()?;
    Ok((alone, TestbedSettings::from_environment()))
}

/// The cached bookworm image with the workspace's `cms-agent` package
/// installed.
pub fn bake_agent_image(settings: &TestbedSettings) -> Result<BakedImage> {
    let agent_package = build_agent_package()?;
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), settings)?;
    image.bake(&AgentBake {
        agent_package,
        config_files: vec![AgentConfigFile {
            relative_path: "agent.toml".into(),
            contents: AGENT_CONFIG.to_string(),
        }],
    })
}

/// The image with the workspace's `cms-agent` package installed and an
/// `/etc/cms/agent.toml` that names the server and an enrollment token:
/// what a user bakes into an AMI so that instances enroll and converge at
/// boot.
pub fn bake_agent_for_server(
    image: &Image,
    server_address: &str,
    token: &str,
) -> Result<BakedImage> {
    image.bake(&AgentBake {
        agent_package: build_agent_package()?,
        config_files: vec![AgentConfigFile {
            relative_path: "agent.toml".into(),
            contents: format!(
                "server = \"{server_address}\"\ntoken = \"{token}\"\ninterval = \"30m\"\nsplay = \"0s\"\n"
            ),
        }],
    })
}
