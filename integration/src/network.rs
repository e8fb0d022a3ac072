//! The testbed's private network: one host-side bridge with a private /24
//! that this machine uses for nothing else, and per instance a network
//! namespace joined to the bridge by a veth pair.
//!
//! Nothing routes out of it. The host does not forward for it (the testbed
//! never turns forwarding on or adds NAT) and instances get no default
//! route, only the bridge's subnet: an instance can reach the host's bridge
//! address and the other instances, and nothing else.

use crate::host_command::run_host_tool;
use anyhow::{Context, Result, bail};
use std::net::Ipv4Addr;

/// The host-side bridge every instance is attached to.
pub const BRIDGE_NAME: &str = "cmstb-br0";

/// The host's address on the bridge: where the internal package repository
/// (and later the cms server) listens.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

/// The bridge's subnet is `10.213.0.0/24`.
pub const NETWORK_PREFIX_LENGTH: u8 = 24;

/// The port of the internal package repository on [`HOST_ADDRESS`]. Fixed,
/// because the baked image's apt sources name it, as a real image names its
/// company's repository.
pub const PACKAGE_REPO_PORT: u16 = 8080;

/// Instances get `10.213.0.10`, `10.213.0.11`, … in boot order.
const FIRST_INSTANCE_HOST_PART: u8 = 10;

/// How many instances a testbed can hold at once.
pub(crate) const MAXIMUM_INSTANCES: u8 = 200;

/// The name of the network interface inside every instance.
pub(crate) const INSTANCE_INTERFACE_NAME: &str = "eth0";

/// The internal package repository as instances see it.
pub(crate) fn package_repo_url() -> String {
    format!("http://{HOST_ADDRESS}:{PACKAGE_REPO_PORT}/")
}

/// The address of the instance in `slot` (0-based).
pub(crate) fn instance_address(slot: u8) -> Ipv4Addr {
    let [a, b, c, _] = HOST_ADDRESS.octets();
    Ipv4Addr::new(a, b, c, FIRST_INSTANCE_HOST_PART + slot)
}

/// The host side of the veth pair of the instance in `slot`.
fn host_link_name(slot: u8) -> String {
    format!("{}v{slot}", crate::NAME_PREFIX)
}

/// The bridge; removed when dropped.
#[derive(Debug)]
pub(crate) struct Bridge {
    removed: bool,
}

impl Bridge {
    /// Creates the bridge with [`HOST_ADDRESS`], after checking that no
    /// interface or route of this machine already uses the subnet: sharing
    /// it could send test traffic to a real network.
    pub fn create() -> Result<Bridge> {
        refuse_if_subnet_is_in_use()?;
        run_host_tool("ip", ["link", "add", BRIDGE_NAME, "type", "bridge"])
            .context("Failed to create the testbed bridge")?;
        let bridge = Bridge { removed: false };
        let address = format!("{HOST_ADDRESS}/{NETWORK_PREFIX_LENGTH}");
        run_host_tool("ip", ["address", "add", &address, "dev", BRIDGE_NAME])
            .context("Failed to give the testbed bridge its address")?;
        run_host_tool("ip", ["link", "set", BRIDGE_NAME, "up"])
            .context("Failed to bring the testbed bridge up")?;
        Ok(bridge)
    }

    pub fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        delete_link(BRIDGE_NAME)?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Err(error) = self.remove() {
            eprintln!("testbed: {error:#}");
        }
    }
}

fn refuse_if_subnet_is_in_use() -> Result<()> {
    let [a, b, c, _] = HOST_ADDRESS.octets();
    let subnet_start = format!("{a}.{b}.{c}.");
    let addresses = run_host_tool("ip", ["-o", "-4", "address", "show"])?.stdout;
    let routes = run_host_tool("ip", ["-4", "route", "show", "table", "all"])?.stdout;
    let users: Vec<&str> = addresses
        .lines()
        .chain(routes.lines())
        .filter(|line| line.contains(&subnet_start))
        .collect();
    if !users.is_empty() {
        bail!(
            "Failed to create the testbed bridge: {subnet_start}0/{NETWORK_PREFIX_LENGTH} is already \
             in use on this machine, and the testbed refuses to share a network:\n  {}",
            users.join("\n  ")
        );
    }
    Ok(())
}

/// An instance's network namespace and veth pair; removed when dropped.
#[derive(Debug)]
pub(crate) struct InstanceNetwork {
    pub namespace_name: String,
    pub address: Ipv4Addr,
    host_link_name: String,
    removed: bool,
}

impl InstanceNetwork {
    /// Creates namespace `namespace_name` holding `eth0` with the address of
    /// `slot`, and attaches the host end of the pair to the bridge.
    pub fn create(namespace_name: &str, slot: u8) -> Result<InstanceNetwork> {
        let address = instance_address(slot);
        run_host_tool("ip", ["netns", "add", namespace_name])
            .with_context(|| format!("Failed to create network namespace {namespace_name}"))?;
        let network = InstanceNetwork {
            namespace_name: namespace_name.to_string(),
            address,
            host_link_name: host_link_name(slot),
            removed: false,
        };
        network
            .connect()
            .with_context(|| format!("Failed to connect {namespace_name} to the testbed bridge"))?;
        Ok(network)
    }

    fn connect(&self) -> Result<()> {
        let namespace = self.namespace_name.as_str();
        let host_link = self.host_link_name.as_str();
        run_host_tool(
            "ip",
            [
                "link",
                "add",
                host_link,
                "type",
                "veth",
                "peer",
                "name",
                INSTANCE_INTERFACE_NAME,
                "netns",
                namespace,
            ],
        )?;
        run_host_tool(
            "ip",
            ["link", "set", host_link, "master", BRIDGE_NAME, "up"],
        )?;
        let address = format!("{}/{NETWORK_PREFIX_LENGTH}", self.address);
        let inside = |arguments: &[&str]| {
            run_host_tool("ip", ["-n", namespace].iter().chain(arguments.iter()))
        };
        inside(&["address", "add", &address, "dev", INSTANCE_INTERFACE_NAME])?;
        inside(&["link", "set", INSTANCE_INTERFACE_NAME, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        // Deleting the host end deletes the pair; deleting the namespace
        // would too, but only once no process holds the namespace open.
        delete_link(&self.host_link_name)?;
        delete_network_namespace(&self.namespace_name)?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for InstanceNetwork {
    fn drop(&mut self) {
        if let Err(error) = self.remove() {
            eprintln!("testbed: {error:#}");
        }
    }
}

/// Names of links on the host that start with the testbed prefix.
pub(crate) fn testbed_link_names() -> Result<Vec<String>> {
    let output = run_host_tool("ip", ["-o", "link", "show"])?.stdout;
    Ok(output
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        // `cmstb-v0@if2` names the peer after the `@`.
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name.starts_with(crate::NAME_PREFIX))
        .collect())
}

/// Names of network namespaces that start with the testbed prefix.
pub(crate) fn testbed_network_namespace_names() -> Result<Vec<String>> {
    let output = run_host_tool("ip", ["netns", "list"])?.stdout;
    Ok(output
        .lines()
        // `cmstb-web (id: 0)` carries the id after the name.
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(crate::NAME_PREFIX))
        .map(str::to_string)
        .collect())
}

/// Deletes a link; a link that is already gone is fine.
pub(crate) fn delete_link(name: &str) -> Result<()> {
    if !testbed_link_names()?
        .iter()
        .any(|existing| existing == name)
    {
        return Ok(());
    }
    run_host_tool("ip", ["link", "delete", name])
        .with_context(|| format!("Failed to delete network link {name}"))?;
    Ok(())
}

/// Deletes a network namespace; one that is already gone is fine.
pub(crate) fn delete_network_namespace(name: &str) -> Result<()> {
    if !testbed_network_namespace_names()?
        .iter()
        .any(|existing| existing == name)
    {
        return Ok(());
    }
    run_host_tool("ip", ["netns", "delete", name])
        .with_context(|| format!("Failed to delete network namespace {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_get_consecutive_addresses_after_the_host() {
        assert_eq!(instance_address(0), Ipv4Addr::new(10, 213, 0, 10));
        assert_eq!(
            instance_address(MAXIMUM_INSTANCES - 1),
            Ipv4Addr::new(10, 213, 0, 209)
        );
        assert_eq!(package_repo_url(), "http://10.213.0.1:8080/");
    }

    #[test]
    fn host_link_names_fit_the_kernel_limit_of_fifteen_bytes() {
        assert!(host_link_name(MAXIMUM_INSTANCES - 1).len() <= 15);
    }
}
