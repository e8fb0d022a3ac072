//! The server's own AWS credentials, for the EC2 API: from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) when
//! set, else the instance role of the host the server runs on, read from
//! its metadata service with IMDSv2 and kept for a few minutes.

use std::collections::BTreeMap;
use std::sync::Mutex;

pub use cms_aws::Credentials;
use cms_aws::credentials::{
    INSTANCE_METADATA_ENDPOINT, ROLE_CREDENTIALS_KEPT, ROLE_CREDENTIALS_PATH,
};

use crate::clock::SharedClock;

/// Where credentials come from.
#[derive(Debug)]
pub enum CredentialsSource {
    Static(Credentials),
    InstanceRole {
        endpoint: String,
        kept: Mutex<Option<(Credentials, u64)>>,
    },
}

impl CredentialsSource {
    /// From the process's environment (as read once at start), else the
    /// instance role through `metadata_endpoint` (EC2's by default).
    pub fn from_environment(
        environment: &BTreeMap<String, String>,
        metadata_endpoint: Option<String>,
    ) -> CredentialsSource {
        match Credentials::from_environment(|name| environment.get(name).cloned()) {
            Some(credentials) => CredentialsSource::Static(credentials),
            None => CredentialsSource::InstanceRole {
                endpoint: metadata_endpoint
                    .unwrap_or_else(|| INSTANCE_METADATA_ENDPOINT.to_string()),
                kept: Mutex::new(None),
            },
        }
    }

    /// Credentials valid now.
    pub fn credentials(
        &self,
        http: &reqwest::blocking::Client,
        clock: &SharedClock,
    ) -> anyhow::Result<Credentials> {
        match self {
            CredentialsSource::Static(credentials) => Ok(credentials.clone()),
            CredentialsSource::InstanceRole { endpoint, kept } => {
                let now = clock.now_unix_ms();
                let mut kept = kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some((credentials, until)) = kept.as_ref()
                    && now < *until
                {
                    return Ok(credentials.clone());
                }
                let credentials = role_credentials(http, endpoint)?;
                *kept = Some((
                    credentials.clone(),
                    now + ROLE_CREDENTIALS_KEPT.as_millis() as u64,
                ));
                Ok(credentials)
            }
        }
    }
}

fn role_credentials(
    http: &reqwest::blocking::Client,
    endpoint: &str,
) -> anyhow::Result<Credentials> {
    use anyhow::Context as _;
    let base = format!("http://{endpoint}");
    let failed = || {
        format!(
            "Failed to read the server's AWS credentials from the instance metadata service at {endpoint} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the server's instance a role)"
        )
    };
    let token = http
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .with_context(failed)?;
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("X-aws-ec2-metadata-token", token.trim())
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .with_context(failed)
    };
    let roles = get(ROLE_CREDENTIALS_PATH)?;
    let role = cms_aws::credentials::first_role(&roles).with_context(failed)?;
    let body = get(&format!("{ROLE_CREDENTIALS_PATH}{role}"))?;
    cms_aws::credentials::parse_role_credentials(&body).with_context(failed)
}
