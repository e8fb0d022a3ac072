//! The server's own AWS credentials, for the EC2 API: from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) when
//! set, else the instance role of the host the server runs on, read from
//! its metadata service with IMDSv2 and kept for a few minutes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use crate::clock::SharedClock;

/// The EC2 instance metadata service.
const METADATA_ENDPOINT: &str = "169.254.169.254:80";
/// Role credentials are read again this often (AWS rotates them hourly and
/// serves the new ones well before the old expire).
const ROLE_CREDENTIALS_KEPT: Duration = Duration::from_secs(300);

/// One set of credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    /// Leaves the secret out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Where credentials come from.
#[derive(Debug)]
pub enum CredentialsSource {
    Static(Credentials),
    InstanceRole {
        endpoint: String,
        kept: Mutex<Option<(Credentials, u64)>>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
}

impl CredentialsSource {
    /// From the process's environment (as read once at start), else the
    /// instance role through `metadata_endpoint` (EC2's by default).
    pub fn from_environment(
        environment: &BTreeMap<String, String>,
        metadata_endpoint: Option<String>,
    ) -> CredentialsSource {
        let var = |name: &str| environment.get(name).filter(|v| !v.is_empty()).cloned();
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => {
                CredentialsSource::Static(Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: var("AWS_SESSION_TOKEN"),
                })
            }
            _ => CredentialsSource::InstanceRole {
                endpoint: metadata_endpoint.unwrap_or_else(|| METADATA_ENDPOINT.to_string()),
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
    let roles = get("/latest/meta-data/iam/security-credentials/")?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .with_context(|| format!("{}: the instance has no role", failed()))?
        .to_string();
    let body = get(&format!(
        "/latest/meta-data/iam/security-credentials/{role}"
    ))?;
    let parsed: RoleCredentials = serde_json::from_str(&body).with_context(failed)?;
    Ok(Credentials {
        access_key_id: parsed.access_key_id,
        secret_access_key: parsed.secret_access_key,
        session_token: parsed.token,
    })
}
