//! Attested enrollment on AWS: an EC2 instance proves what it is with its
//! instance identity document, signed by AWS, instead of a shared token.
//!
//! The agent sends the document and its signature as it read them from the
//! instance metadata service (IMDSv2). [`Attestor::attest`] verifies the
//! signature (RSA-SHA256) with the AWS certificate configured for the
//! document's region (`document`), checks the account against the allowed
//! ones, reads the instance's tags itself from the EC2 API (`DescribeTags`,
//! signed with SigV4 with the server's own credentials, `ec2` and
//! `credentials`), checks the instance is running and, when configured,
//! that its autoscaling group is allowed. Tags are never taken from the
//! node: the node is named by its instance id and bound to the tags EC2
//! gave.
//!
//! The settings come from the `[aws]` table of the server's enrollment
//! file (`cms-server serve --enrollment-config FILE`, see
//! [`EnrollmentConfig`]). Everything here blocks (HTTP with timeouts and
//! retries): enrollment runs on the server's blocking threads.
//!
//! The same credentials serve the secrets client (`secrets`: SSM and
//! Secrets Manager values for `secrets::ServerSecrets`). What the agent
//! shares with the server (SigV4 signing, the `Credentials` type and the
//! reading of the role's JSON, Query bodies, XML answers, the retry
//! policy) is in the `cms-aws` crate; here are the server's transport
//! (reqwest) and its calls.

mod credentials;
mod document;
mod ec2;
mod secrets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use self::credentials::{Credentials, CredentialsSource};
pub use self::document::{IdentityDocument, verify_signature};
pub use self::ec2::{Ec2Client, Ec2Error};
pub use self::secrets::{AwsReference, SecretsClient, SecretsEndpoints};

use crate::clock::SharedClock;

/// The `kind` of an EC2 instance identity document in an `EnrollRequest`.
pub const IDENTITY_KIND: &str = cms_proto::AWS_INSTANCE_IDENTITY;

/// The tag EC2 Auto Scaling puts on the instances of a group.
pub const AUTOSCALING_GROUP_TAG: &str = "aws:autoscaling:groupName";

/// The server's enrollment file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    pub aws: Option<RawAwsConfig>,
}

/// `[aws]`: which instances may enroll by attestation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAwsConfig {
    /// AWS account ids whose instances may enroll.
    pub accounts: Vec<String>,
    /// When set, only instances of these autoscaling groups may enroll.
    #[serde(default)]
    pub autoscaling_groups: Option<Vec<String>>,
    /// Region → PEM file of the AWS certificate that verifies that
    /// region's documents (relative paths are from the file's folder).
    pub certificates: BTreeMap<String, PathBuf>,
    /// The EC2 API's base URL for every region instead of
    /// `https://ec2.REGION.amazonaws.com` (a test double, a VPC endpoint).
    #[serde(default)]
    pub ec2_endpoint: Option<String>,
    /// `host:port` of the instance metadata service the server reads its
    /// own role credentials from, when no `AWS_ACCESS_KEY_ID` is set.
    #[serde(default)]
    pub metadata_endpoint: Option<String>,
    /// Whether the instance must be running (`DescribeInstances`); on by
    /// default.
    #[serde(default)]
    pub require_running: Option<bool>,
}

/// Reads the enrollment file: `None` when it has no `[aws]` table. Every
/// error names the file (and the certificate file) at fault.
pub fn load_config(
    path: &Path,
    environment: &BTreeMap<String, String>,
    clock: SharedClock,
) -> anyhow::Result<Option<Attestor>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read the enrollment file {}", path.display()))?;
    let config: EnrollmentConfig = toml::from_str(&text)
        .with_context(|| format!("Failed to read the enrollment file {}", path.display()))?;
    let Some(aws) = config.aws else {
        return Ok(None);
    };
    if aws.accounts.is_empty() {
        anyhow::bail!(
            "Failed to read the enrollment file {}: [aws] accounts is empty, so no instance could enroll; list the AWS account ids allowed",
            path.display()
        );
    }
    if aws.certificates.is_empty() {
        anyhow::bail!(
            "Failed to read the enrollment file {}: [aws.certificates] is empty; give each region's AWS certificate, e.g. us-east-1 = \"/etc/cms/aws/us-east-1.pem\"",
            path.display()
        );
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut certificates = BTreeMap::new();
    for (region, file) in &aws.certificates {
        let file = base.join(file);
        let pem = std::fs::read(&file).with_context(|| {
            format!(
                "Failed to read the AWS certificate of region {region} ({}), named in {}",
                file.display(),
                path.display()
            )
        })?;
        let key = document::public_key_of(&pem).with_context(|| {
            format!(
                "Failed to read the AWS certificate of region {region} ({}), named in {}",
                file.display(),
                path.display()
            )
        })?;
        certificates.insert(region.clone(), key);
    }
    let credentials = CredentialsSource::from_environment(environment, aws.metadata_endpoint);
    Ok(Some(Attestor {
        accounts: aws.accounts,
        autoscaling_groups: aws.autoscaling_groups,
        public_keys: certificates,
        ec2: Arc::new(Ec2Client::new(aws.ec2_endpoint, credentials, clock)),
        require_running: aws.require_running.unwrap_or(true),
    }))
}

/// Verifies identity documents and reads what EC2 says of the instance.
#[derive(Debug, Clone)]
pub struct Attestor {
    pub accounts: Vec<String>,
    pub autoscaling_groups: Option<Vec<String>>,
    /// Region → the RSA public key (PKCS#1 DER) of its AWS certificate.
    pub public_keys: BTreeMap<String, Vec<u8>>,
    pub ec2: Arc<Ec2Client>,
    pub require_running: bool,
}

/// What attestation established about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The node's name: the instance id.
    pub instance_id: String,
    /// The tags EC2 holds for the instance, as cms tags.
    pub tags: BTreeMap<String, String>,
    /// `instance_id`, `account_id`, `region`, `availability_zone`,
    /// `instance_type`, `image_id` (and `autoscaling_group` when it has
    /// one): the node's attested values.
    pub values: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("the identity document is of kind {kind:?}; this server verifies {IDENTITY_KIND:?}")]
    UnknownKind { kind: String },
    #[error("the identity document is not valid JSON of an EC2 instance identity: {0}")]
    Unreadable(String),
    #[error(
        "the identity document is of region {region}, for which no AWS certificate is configured (configured: {configured})"
    )]
    NoCertificate { region: String, configured: String },
    #[error(
        "the identity document's signature does not verify with the AWS certificate of region {region}"
    )]
    BadSignature { region: String },
    #[error("account {account} is not allowed to enroll (allowed: {allowed})")]
    AccountNotAllowed { account: String, allowed: String },
    #[error(
        "instance {instance_id} is in autoscaling group {group:?}, which is not allowed to enroll (allowed: {allowed})"
    )]
    GroupNotAllowed {
        instance_id: String,
        group: String,
        allowed: String,
    },
    #[error("instance {instance_id} is {state}, not running, according to EC2")]
    NotRunning { instance_id: String, state: String },
    #[error("Failed to read instance {instance_id} from the EC2 API: {source}")]
    Ec2 {
        instance_id: String,
        #[source]
        source: Ec2Error,
    },
}

impl Attestor {
    /// Verifies `document` (the bytes as the metadata service served them)
    /// and `signature` (base64, as served), then asks EC2 about the
    /// instance.
    pub fn attest(
        &self,
        kind: &str,
        document: &[u8],
        signature: &[u8],
    ) -> Result<Attested, AttestationError> {
        if kind != IDENTITY_KIND {
            return Err(AttestationError::UnknownKind {
                kind: kind.to_string(),
            });
        }
        // The region is read before the signature is checked only to pick
        // the key; nothing else of the document is trusted before that.
        let unverified = IdentityDocument::parse(document)
            .map_err(|e| AttestationError::Unreadable(e.to_string()))?;
        let key = self.public_keys.get(&unverified.region).ok_or_else(|| {
            AttestationError::NoCertificate {
                region: unverified.region.clone(),
                configured: self
                    .public_keys
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?;
        if !verify_signature(key, document, signature) {
            return Err(AttestationError::BadSignature {
                region: unverified.region,
            });
        }
        let identity = unverified;
        if !self.accounts.contains(&identity.account_id) {
            return Err(AttestationError::AccountNotAllowed {
                account: identity.account_id,
                allowed: self.accounts.join(", "),
            });
        }
        let ec2_error = |source| AttestationError::Ec2 {
            instance_id: identity.instance_id.clone(),
            source,
        };
        if self.require_running {
            let state = self
                .ec2
                .instance_state(&identity.region, &identity.instance_id)
                .map_err(ec2_error)?;
            if state != "running" {
                return Err(AttestationError::NotRunning {
                    instance_id: identity.instance_id,
                    state,
                });
            }
        }
        let ec2_tags = self
            .ec2
            .instance_tags(&identity.region, &identity.instance_id)
            .map_err(ec2_error)?;
        let group = ec2_tags.get(AUTOSCALING_GROUP_TAG).cloned();
        if let Some(allowed) = &self.autoscaling_groups
            && !group.as_ref().is_some_and(|g| allowed.contains(g))
        {
            return Err(AttestationError::GroupNotAllowed {
                instance_id: identity.instance_id,
                group: group.unwrap_or_default(),
                allowed: allowed.join(", "),
            });
        }
        let mut values = identity.values();
        if let Some(group) = group {
            values.insert("autoscaling_group".into(), group);
        }
        Ok(Attested {
            instance_id: identity.instance_id,
            tags: cms_tags(ec2_tags),
            values,
        })
    }
}

/// EC2's tags as cms tags: every tag as it is, key and value, as the
/// agent's discovery takes them from the metadata service, except AWS's
/// own (`aws:…`, which no user sets); the autoscaling group is an attested
/// value instead.
pub fn cms_tags(ec2_tags: BTreeMap<String, String>) -> BTreeMap<String, String> {
    ec2_tags
        .into_iter()
        .filter(|(key, _)| !key.starts_with("aws:"))
        .collect()
}
