//! What the testbed tests of resource kinds share: the testbed and the
//! baked image they boot their instances from ([`AgentImageTestbed`]).
//! Their instances converge from a roles repository written into them
//! (`Instance::write_roles_repository`, `Instance::apply_roles_repository`).

use anyhow::Result;

use crate::{
    BakedImage, Instance, InstanceConfig, Testbed, TestbedSettings, bake_agent_image,
    check_prerequisites,
};

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
