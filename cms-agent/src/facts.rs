//! Facts: what the agent knows of its instance, gathered in milliseconds
//! from `/proc`, `/etc/os-release` and the kernel, never by running
//! programs of its own; on EC2, the placement facts read with the tags from
//! the instance metadata (`tags::discover`); and the custom facts of
//! `/etc/cms/facts.d` (`custom_facts`), the one place where programs the
//! operator put there run.
//!
//! The built-in facts are read from files under the host's root or from
//! syscalls, so gathering costs a handful of reads (slow fact gathering is
//! a top complaint about Facter and Ohai). Which facts exist, their types
//! and when a node has them is one schema, `cms_roles::FACTS`, which
//! `cms-server check` compiles with and the tests hold this module to.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

/// Where facts come from; the root is a parameter so tests can point it at a
/// fake `/proc` and `/etc`.
#[derive(Debug, Clone)]
pub struct FactSources<'a> {
    pub root: &'a Path,
    /// The instance id, when the metadata service gave one.
    pub instance_id: Option<String>,
    /// The EC2 placement facts the metadata service gave (`region`,
    /// `availability_zone`, ...), empty off EC2.
    pub ec2: BTreeMap<String, Value>,
}

/// The facts, and what went wrong gathering the custom ones.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    pub facts: BTreeMap<String, Value>,
    pub warnings: Vec<String>,
}

/// Gathers the facts of the running machine.
pub fn gather(sources: &FactSources<'_>) -> Gathered {
    let mut facts = BTreeMap::new();
    let read = |relative: &str| std::fs::read_to_string(sources.root.join(relative)).ok();

    let hostname = read("proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_else(|| "localhost".to_string());
    let domain = read("proc/sys/kernel/domainname")
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty() && d != "(none)");
    facts.insert(
        "fqdn".into(),
        json!(match &domain {
            Some(domain) => format!("{hostname}.{domain}"),
            None => hostname.clone(),
        }),
    );
    facts.insert("hostname".into(), json!(hostname));

    let os_release = read("etc/os-release")
        .or_else(|| read("usr/lib/os-release"))
        .map(|text| parse_os_release(&text))
        .unwrap_or_default();
    let os = os_release
        .get("ID")
        .cloned()
        .unwrap_or_else(|| "linux".into());
    let family = os_release
        .get("ID_LIKE")
        .and_then(|like| like.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| os.clone());
    facts.insert("os".into(), json!(os));
    facts.insert("os_family".into(), json!(family));
    facts.insert(
        "os_version".into(),
        json!(os_release.get("VERSION_ID").cloned().unwrap_or_default()),
    );
    if let Some(codename) = os_release.get("VERSION_CODENAME") {
        facts.insert("os_codename".into(), json!(codename));
    }

    let uname = nix::sys::utsname::uname().ok();
    facts.insert("architecture".into(), json!(std::env::consts::ARCH));
    if let Some(uname) = &uname {
        facts.insert("kernel".into(), json!(uname.release().to_string_lossy()));
    }

    let cpus = read("proc/cpuinfo")
        .map(|text| text.lines().filter(|l| l.starts_with("processor")).count())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    facts.insert("cpus".into(), json!(cpus));

    if let Some(memory_kb) = read("proc/meminfo").and_then(|text| meminfo_total_kb(&text)) {
        facts.insert("memory_mb".into(), json!(memory_kb / 1024));
    }

    let (ipv4, ipv6) = addresses();
    facts.insert("ipv4".into(), json!(ipv4));
    facts.insert("ipv6".into(), json!(ipv6));

    // The instance id comes only from the cloud's metadata: off the cloud a
    // node is known by its hostname (or the name it enrolled with), and the
    // machine id is a fact of its own.
    if let Some(id) = &sources.instance_id {
        facts.insert("instance_id".into(), json!(id));
    }
    if let Some(machine_id) = read("etc/machine-id")
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
    {
        facts.insert("machine_id".into(), json!(machine_id));
    }
    for (name, value) in &sources.ec2 {
        facts.insert(name.clone(), value.clone());
    }
    let custom = crate::custom_facts::read(sources.root, crate::custom_facts::EXECUTABLE_TIMEOUT);
    facts.insert("custom".into(), Value::Object(custom.facts));
    Gathered {
        facts,
        warnings: custom.warnings,
    }
}

fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            (
                key.trim().to_string(),
                value
                    .trim()
                    .trim_matches('"')
                    .trim_matches('\'')
                    .to_string(),
            )
        })
        .collect()
}

fn meminfo_total_kb(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// The instance's addresses, loopback and link-local left out.
fn addresses() -> (Vec<String>, Vec<String>) {
    let mut ipv4 = Vec::new();
    let mut ipv6 = Vec::new();
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return (ipv4, ipv6);
    };
    for interface in interfaces {
        let Some(address) = interface.address else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            let ip = v4.ip();
            if !ip.is_loopback() && !ip.is_link_local() {
                ipv4.push(ip.to_string());
            }
        } else if let Some(v6) = address.as_sockaddr_in6() {
            let ip = v6.ip();
            if !ip.is_loopback() && !ip.is_unicast_link_local() {
                ipv6.push(ip.to_string());
            }
        }
    }
    ipv4.sort();
    ipv4.dedup();
    ipv6.sort();
    ipv6.dedup();
    (ipv4, ipv6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_come_from_the_files_under_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("proc/sys/kernel/hostname", "web-1\n");
        write(
            "etc/os-release",
            "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
        );
        write(
            "proc/cpuinfo",
            "processor\t: 0\nmodel name: x\n\nprocessor\t: 1\nmodel name: x\n",
        );
        write(
            "proc/meminfo",
            "MemTotal:        8039912 kB\nMemFree: 1 kB\n",
        );
        write("etc/machine-id", "abc123\n");
        let facts = gather(&FactSources {
            root: root.path(),
            instance_id: None,
            ec2: BTreeMap::new(),
        })
        .facts;
        assert_eq!(facts["hostname"], "web-1");
        assert_eq!(facts["os"], "debian");
        assert_eq!(facts["os_family"], "debian");
        assert_eq!(facts["os_version"], "12");
        assert_eq!(facts["os_codename"], "bookworm");
        assert_eq!(facts["cpus"], 2);
        assert_eq!(facts["memory_mb"], 7851);
        assert_eq!(facts["machine_id"], "abc123");
        assert!(
            !facts.contains_key("instance_id"),
            "no instance id off the cloud"
        );

        let with_metadata = gather(&FactSources {
            root: root.path(),
            instance_id: Some("i-0abc".into()),
            ec2: BTreeMap::new(),
        })
        .facts;
        assert_eq!(with_metadata["instance_id"], "i-0abc");
    }
}
