//! One set of AWS credentials, and the two places they come from that
//! need no AWS call: the process environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) and the instance role's
//! JSON, as the instance metadata service serves it under
//! `/latest/meta-data/iam/security-credentials/ROLE`. Fetching that JSON
//! (IMDSv2) is the caller's: it owns the transport.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// The EC2 instance metadata service, `host:port`.
pub const INSTANCE_METADATA_ENDPOINT: &str = "169.254.169.254:80";

/// Where the instance's role is named, under the metadata service; the
/// role's credentials are at this path followed by the role's name.
pub const ROLE_CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// Role credentials are read again this often (AWS rotates them hourly and
/// serves the new ones well before the old expire).
pub const ROLE_CREDENTIALS_KEPT: Duration = Duration::from_secs(300);

/// One set of credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    /// Leaves the secret and the token out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Why the role's credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("the instance has no role (the metadata service lists none)")]
    NoRole,
    #[error("the role's credentials are not the JSON the metadata service serves: {0}")]
    Unreadable(String),
    #[error("the metadata service says the role's credentials are not available: {code}")]
    NotAvailable { code: String },
}

impl Credentials {
    /// From environment variables, read through `var` (empty counts as
    /// unset): `None` unless both the key id and the secret are set.
    pub fn from_environment(var: impl Fn(&str) -> Option<String>) -> Option<Credentials> {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        Some(Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }
}

/// The role named first in the metadata service's listing of
/// [`ROLE_CREDENTIALS_PATH`] (an instance has at most one).
pub fn first_role(listing: &str) -> Result<&str, CredentialsError> {
    listing
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or(CredentialsError::NoRole)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    #[serde(default)]
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
}

/// The credentials in the role's JSON
/// (`{"Code":"Success","AccessKeyId":…,"SecretAccessKey":…,"Token":…}`).
pub fn parse_role_credentials(json: &str) -> Result<Credentials, CredentialsError> {
    let parsed: RoleCredentials =
        serde_json::from_str(json).map_err(|e| CredentialsError::Unreadable(e.to_string()))?;
    if let Some(code) = parsed.code.filter(|code| code != "Success") {
        return Err(CredentialsError::NotAvailable { code });
    }
    Ok(Credentials {
        access_key_id: parsed.access_key_id,
        secret_access_key: parsed.secret_access_key,
        session_token: parsed.token.filter(|token| !token.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_credentials_are_read_from_the_metadata_services_json() {
        let json = r#"{"Code":"Success","LastUpdated":"2026-12-02T18:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"secret","Token":"token","Expiration":"2026-12-02T23:00:00Z"}"#;
        let credentials = parse_role_credentials(json).expect("parses");
        assert_eq!(
            credentials,
            Credentials {
                access_key_id: "ASIAEXAMPLE".into(),
                secret_access_key: "secret".into(),
                session_token: Some("token".into()),
            }
        );
        assert!(!format!("{credentials:?}").contains("secret\""));
        let failed =
            r#"{"Code":"AssumeRoleUnauthorizedAccess","AccessKeyId":"","SecretAccessKey":""}"#;
        assert!(matches!(
            parse_role_credentials(failed),
            Err(CredentialsError::NotAvailable { code }) if code == "AssumeRoleUnauthorizedAccess"
        ));
        assert!(parse_role_credentials("<html>").is_err());
    }

    #[test]
    fn the_role_is_the_first_line_of_the_listing() {
        assert_eq!(first_role("\nweb-role\n").expect("a role"), "web-role");
        assert!(matches!(first_role(" \n"), Err(CredentialsError::NoRole)));
    }

    #[test]
    fn environment_credentials_need_both_the_key_id_and_the_secret() {
        let environment = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        assert_eq!(
            Credentials::from_environment(environment(&[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_SESSION_TOKEN", "")
            ])),
            Some(Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "s".into(),
                session_token: None
            })
        );
        assert_eq!(
            Credentials::from_environment(environment(&[("AWS_ACCESS_KEY_ID", "AKID")])),
            None
        );
    }
}
