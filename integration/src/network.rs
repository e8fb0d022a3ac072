//! The testbed's private network: one host-side bridge with a private /24
//! that this machine uses for nothing else (the first free one, chosen when
//! the testbed starts), and per instance a network
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

/// The bridge's subnet is a /24 …
pub const NETWORK_PREFIX_LENGTH: u8 = 24;

/// … of `10.213.0.0/16`: the testbed takes the first of `10.213.0.0/24`,
/// `10.213.1.0/24`, … that nothing on this machine uses when it starts
/// (under the machine-wide lock, so no other testbed is choosing at the
/// same time). The host's address on the bridge is `.1` of it.
const SUBNETS: [u8; 2] = [10, 213];

/// Where the tests' servers and the instances meet: the host's address on
/// the bridge, and the port of the internal package repository there.
/// Chosen per testbed, so that two runs never collide, and passed to each
/// instance (its apt source) as a real image is told its company's
/// repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TestbedAddresses {
    pub host: Ipv4Addr,
    pub package_repo_port: u16,
}

impl TestbedAddresses {
    /// The internal package repository as instances see it.
    pub fn package_repo_url(&self) -> String {
        format!("http://{}:{}/", self.host, self.package_repo_port)
    }

    /// The address of the instance in `slot` (0-based).
    pub fn instance_address(&self, slot: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.host.octets();
        Ipv4Addr::new(a, b, c, FIRST_INSTANCE_HOST_PART + slot)
    }

    /// The subnet, as `ip route` shows it.
    pub fn subnet(&self) -> String {
        let [a, b, c, _] = self.host.octets();
        format!("{a}.{b}.{c}.0/{NETWORK_PREFIX_LENGTH}")
    }
}

/// Instances get `.10`, `.11`, … of the subnet in boot order.
const FIRST_INSTANCE_HOST_PART: u8 = 10;

/// How many instances a testbed can hold at once.
pub(crate) const MAXIMUM_INSTANCES: u8 = 200;

/// The name of the network interface inside every instance.
pub(crate) const INSTANCE_INTERFACE_NAME: &str = "eth0";

/// The host's bridge address of the first subnet of [`SUBNETS`] that no
/// interface or route of this machine uses: sharing one could send test
/// traffic to a real network.
pub(crate) fn choose_host_address() -> Result<Ipv4Addr> {
    let in_use = addresses_and_routes()?;
    let [a, b] = SUBNETS;
    (0..=u8::MAX)
        .map(|c| Ipv4Addr::new(a, b, c, 1))
        .find(|host| subnet_users(host, &in_use).is_empty())
        .with_context(|| {
            format!("Failed to find a free subnet for the testbed bridge: every /24 of {a}.{b}.0.0/16 is in use on this machine")
        })
}

/// The host side of the veth pair of the instance in `slot`.
fn host_link_name(slot: u8) -> String {
    format!("{}v{slot}", crate::NAME_PREFIX)
}

/// The bridge's hardware address: locally administered (`02:00:`), then
/// the host's four address bytes, so that testbeds on different subnets
/// differ.
pub(crate) fn bridge_hardware_address(host: Ipv4Addr) -> String {
    let [a, b, c, d] = host.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The bridge's hardware address as the kernel reports it now.
pub fn current_bridge_hardware_address() -> Result<String> {
    let path = format!("/sys/class/net/{BRIDGE_NAME}/address");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("Failed to read {path}"))?
        .trim()
        .to_string())
}

/// The bridge; removed when dropped.
#[derive(Debug)]
pub(crate) struct Bridge {
    removed: bool,
}

impl Bridge {
    /// Creates the bridge with the host's address `host`, after checking
    /// that no interface or route of this machine already uses its subnet:
    /// sharing it could send test traffic to a real network.
    ///
    /// The bridge gets a hardware address of its own
    /// ([`bridge_hardware_address`]): a bridge without one takes the lowest
    /// of its ports' addresses, so it would change whenever an instance
    /// leaves, and the other instances would send to the old one until
    /// their neighbour entry for the host expires, their connections to the
    /// host timing out meanwhile.
    pub fn create(host: Ipv4Addr) -> Result<Bridge> {
        refuse_if_subnet_is_in_use(host)?;
        let hardware_address = bridge_hardware_address(host);
        run_host_tool(
            "ip",
            [
                "link",
                "add",
                BRIDGE_NAME,
                "address",
                &hardware_address,
                "type",
                "bridge",
            ],
        )
        .context("Failed to create the testbed bridge")?;
        let bridge = Bridge { removed: false };
        let address = format!("{host}/{NETWORK_PREFIX_LENGTH}");
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

fn refuse_if_subnet_is_in_use(host: Ipv4Addr) -> Result<()> {
    let in_use = addresses_and_routes()?;
    let users = subnet_users(&host, &in_use);
    if !users.is_empty() {
        let [a, b, c, _] = host.octets();
        bail!(
            "Failed to create the testbed bridge: {a}.{b}.{c}.0/{NETWORK_PREFIX_LENGTH} is already \
             in use on this machine, and the testbed refuses to share a network:\n  {}",
            users.join("\n  ")
        );
    }
    Ok(())
}

/// `ip address` and `ip route` of this machine, one entry per line.
fn addresses_and_routes() -> Result<String> {
    let addresses = run_host_tool("ip", ["-o", "-4", "address", "show"])?.stdout;
    let routes = run_host_tool("ip", ["-4", "route", "show", "table", "all"])?.stdout;
    Ok(format!("{addresses}\n{routes}"))
}

/// The lines of `in_use` that name an address of `host`'s /24.
fn subnet_users<'a>(host: &Ipv4Addr, in_use: &'a str) -> Vec<&'a str> {
    let [a, b, c, _] = host.octets();
    let subnet_start = format!("{a}.{b}.{c}.");
    in_use
        .lines()
        .filter(|line| {
            line.match_indices(&subnet_start).any(|(at, _)| {
                // `110.213.0.5` is not in `10.213.0.0/24`.
                at == 0 || !line.as_bytes()[at - 1].is_ascii_digit()
            })
        })
        .collect()
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
    /// Creates namespace `namespace_name` holding `eth0` with `address`
    /// (the address of `slot`), and attaches the host end of the pair to the
    /// bridge.
    pub fn create(namespace_name: &str, slot: u8, address: Ipv4Addr) -> Result<InstanceNetwork> {
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
        let addresses = TestbedAddresses {
            host: Ipv4Addr::new(10, 213, 4, 1),
            package_repo_port: 40123,
        };
        assert_eq!(addresses.instance_address(0), Ipv4Addr::new(10, 213, 4, 10));
        assert_eq!(
            addresses.instance_address(MAXIMUM_INSTANCES - 1),
            Ipv4Addr::new(10, 213, 4, 209)
        );
        assert_eq!(addresses.package_repo_url(), "http://10.213.4.1:40123/");
        assert_eq!(addresses.subnet(), "10.213.4.0/24");
    }

    #[test]
    fn a_subnet_is_in_use_when_an_address_or_route_of_it_is_listed() {
        let host = Ipv4Addr::new(10, 213, 1, 1);
        let in_use =
            "2: eth0 inet 110.213.1.5/24 scope global\n10.213.10.0/24 dev x\n10.213.1.0/24 dev y\n";
        assert_eq!(subnet_users(&host, in_use), ["10.213.1.0/24 dev y"]);
        assert!(subnet_users(&Ipv4Addr::new(10, 213, 2, 1), in_use).is_empty());
    }

    #[test]
    fn the_bridge_hardware_address_is_locally_administered_and_names_the_host() {
        assert_eq!(
            bridge_hardware_address(Ipv4Addr::new(10, 213, 4, 1)),
            "02:00:0a:d5:04:01"
        );
    }

    #[test]
    fn host_link_names_fit_the_kernel_limit_of_fifteen_bytes() {
        assert!(host_link_name(MAXIMUM_INSTANCES - 1).len() <= 15);
    }
}
