//! Tags: how an instance says what it is (`role=api`, `env=prod`).
//!
//! On EC2 they come from the instance metadata service (IMDSv2: a session
//! token from `PUT /latest/api/token`, then `/latest/meta-data/tags/instance`
//! and one request per key). Off EC2, or when the instance's tags are not
//! exposed in its metadata, they come from `/etc/cms/tags.toml`. The
//! metadata service is asked only when it is configured or when the machine
//! says it is an EC2 instance (its DMI vendor), so an agent elsewhere never
//! sends a packet to the link-local metadata address and never waits for it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

pub use crate::aws::imds::EC2_METADATA_ENDPOINT;
use crate::aws::imds::MetadataClient;
/// Where tags live off EC2, relative to the root.
pub const TAGS_FILE: &str = "etc/cms/tags.toml";

/// Where the agent looks for its tags.
#[derive(Debug, Clone)]
pub struct TagSources<'a> {
    pub root: &'a Path,
    /// `host:port` of an instance metadata service; `None` means "EC2's,
    /// if this machine is an EC2 instance".
    pub metadata_endpoint: Option<String>,
    /// How long one metadata request may take; boot must not wait on it.
    pub metadata_timeout: Duration,
    /// How long all metadata requests together may take (token, tag list,
    /// one request per tag, instance id, and their retries): a slow service
    /// with many tags must not hold boot either.
    pub metadata_budget: Duration,
}

/// Tags and the instance id, with where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub tags: BTreeMap<String, String>,
    pub instance_id: Option<String>,
    /// The EC2 placement facts (`cms_roles::When::Ec2` in the fact
    /// schema), empty off EC2.
    pub ec2: BTreeMap<String, serde_json::Value>,
    /// `metadata service` or the tags file path.
    pub source: String,
    /// Why the metadata service was not used, when it was tried.
    pub warning: Option<String>,
}

/// Finds the instance's tags: metadata service first when there is one,
/// else the tags file, else none. On EC2 the instance id and the placement
/// facts come from the metadata service even when its tags are switched
/// off and the tags file gives the tags.
pub fn discover(sources: &TagSources<'_>) -> anyhow::Result<Discovered> {
    let endpoint = sources
        .metadata_endpoint
        .clone()
        .or_else(|| looks_like_ec2(sources.root).then(|| EC2_METADATA_ENDPOINT.to_string()));
    let mut warning = None;
    let mut instance_id = None;
    let mut ec2 = BTreeMap::new();
    if let Some(endpoint) = endpoint {
        let client =
            MetadataClient::new(endpoint, sources.metadata_timeout, sources.metadata_budget);
        match client.token() {
            Ok(token) => {
                let tags = instance_tags(&client, &token);
                instance_id = read_instance_id(&client, &token);
                match placement(&client, &token, tags.as_ref().ok()) {
                    Ok(found) => ec2 = found,
                    Err(error) => {
                        warning = Some(format!("no EC2 placement facts: {error:#}"));
                    }
                }
                match tags {
                    Ok(tags) => {
                        return Ok(Discovered {
                            tags,
                            instance_id,
                            ec2,
                            source: "metadata service".into(),
                            warning,
                        });
                    }
                    Err(error) => warning = Some(format!("{error:#}")),
                }
            }
            Err(error) => warning = Some(format!("{error:#}")),
        }
    }
    let path = sources.root.join(TAGS_FILE);
    let tags = match std::fs::read_to_string(&path) {
        Ok(text) => parse_tags_file(&text)
            .with_context(|| format!("Failed to read tags from {}", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("Failed to read tags from {}", path.display()));
        }
    };
    Ok(Discovered {
        tags,
        instance_id,
        ec2,
        source: path.display().to_string(),
        warning,
    })
}

/// The instance identity document and its signature, exactly as the
/// metadata service serves them, for attested enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub document: Vec<u8>,
    /// Base64, as served.
    pub signature: Vec<u8>,
    /// The document's `instanceId`, which the server names the node by.
    pub instance_id: String,
}

/// Reads the instance identity document and its signature from the
/// metadata service (the configured one, else EC2's when this machine is
/// an EC2 instance), with the same budget as tag discovery.
pub fn instance_identity(sources: &TagSources<'_>) -> anyhow::Result<InstanceIdentity> {
    let endpoint = sources
        .metadata_endpoint
        .clone()
        .or_else(|| looks_like_ec2(sources.root).then(|| EC2_METADATA_ENDPOINT.to_string()))
        .context(
            "Failed to enroll by attestation: this machine is not an EC2 instance and no metadata_endpoint is configured\nhint: off AWS, enroll with a token",
        )?;
    let client = MetadataClient::new(endpoint, sources.metadata_timeout, sources.metadata_budget);
    let token = client.token()?;
    let read = |path: &str| -> anyhow::Result<String> {
        let response = client.get(&token, path)?;
        if response.status != 200 || response.body.trim().is_empty() {
            bail!(
                "the instance metadata service at {} answered {} for {path}",
                client.endpoint(),
                response.status
            );
        }
        Ok(response.body)
    };
    let document = read("/latest/dynamic/instance-identity/document")?;
    let signature = read("/latest/dynamic/instance-identity/signature")?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Named {
        instance_id: String,
    }
    let named: Named = serde_json::from_str(&document)
        .context("the instance identity document names no instanceId")?;
    Ok(InstanceIdentity {
        document: document.into_bytes(),
        signature: signature.trim().as_bytes().to_vec(),
        instance_id: named.instance_id,
    })
}

/// `role = "api"` lines; every value must be a string.
pub fn parse_tags_file(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let table: toml::Table = toml::from_str(text)?;
    let mut tags = BTreeMap::new();
    for (name, value) in table {
        match value {
            toml::Value::String(value) => {
                tags.insert(name, value);
            }
            other => bail!(
                "tag `{name}` must be a string, not {}: write {name} = \"{}\"",
                other.type_str(),
                other.to_string().trim_matches('"')
            ),
        }
    }
    Ok(tags)
}

/// EC2 instances say so in their DMI vendor strings (Nitro) or in the Xen
/// hypervisor uuid (older types), as cloud-init's detection reads them.
fn looks_like_ec2(root: &Path) -> bool {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
    read("sys/class/dmi/id/sys_vendor").contains("Amazon")
        || read("sys/class/dmi/id/board_vendor").contains("Amazon")
        || read("sys/hypervisor/uuid")
            .to_ascii_lowercase()
            .starts_with("ec2")
}

/// The instance's tags from the metadata service.
fn instance_tags(client: &MetadataClient, token: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let keys = client.get(token, "/latest/meta-data/tags/instance")?;
    let keys = match keys.status {
        200 => keys.body,
        404 => bail!(
            "the instance metadata service has no tags for this instance\nhint: allow tags in instance metadata (aws ec2 modify-instance-metadata-options --instance-metadata-tags enabled), or write /etc/cms/tags.toml"
        ),
        status => bail!("the instance metadata service answered {status} for the tag list"),
    };
    let mut tags = BTreeMap::new();
    for key in keys.lines().map(str::trim).filter(|k| !k.is_empty()) {
        let value = client.get(token, &format!("/latest/meta-data/tags/instance/{key}"))?;
        if value.status != 200 {
            bail!(
                "the instance metadata service answered {} for tag `{key}`",
                value.status
            );
        }
        tags.insert(key.to_string(), value.body);
    }
    Ok(tags)
}

fn read_instance_id(client: &MetadataClient, token: &str) -> Option<String> {
    let id = client.get(token, "/latest/meta-data/instance-id").ok()?;
    (id.status == 200 && !id.body.trim().is_empty()).then(|| id.body.trim().to_string())
}

/// The tag an Auto Scaling group puts on the instances it launches.
const AUTOSCALING_GROUP_TAG: &str = "aws:autoscaling:groupName";

/// The placement facts: region, zone, type, image and account from the
/// instance identity document (one request), spot or on-demand, and the
/// Auto Scaling group from the instance's tags.
fn placement(
    client: &MetadataClient,
    token: &str,
    tags: Option<&BTreeMap<String, String>>,
) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Document {
        region: String,
        availability_zone: String,
        instance_type: String,
        image_id: String,
        account_id: String,
    }
    let text = client.value(token, "/latest/dynamic/instance-identity/document")?;
    let document: Document = serde_json::from_str(&text)
        .context("the instance identity document lacks region, availabilityZone, instanceType, imageId or accountId")?;
    let lifecycle = client.value(token, "/latest/meta-data/instance-life-cycle")?;
    let mut facts = BTreeMap::new();
    for (name, value) in [
        ("region", document.region),
        ("availability_zone", document.availability_zone),
        ("instance_type", document.instance_type),
        ("image_id", document.image_id),
        ("account_id", document.account_id),
        ("lifecycle", lifecycle),
    ] {
        facts.insert(name.to_string(), serde_json::Value::String(value));
    }
    if let Some(group) = tags.and_then(|tags| tags.get(AUTOSCALING_GROUP_TAG)) {
        facts.insert(
            "autoscaling_group".to_string(),
            serde_json::Value::String(group.clone()),
        );
    }
    Ok(facts)
}
