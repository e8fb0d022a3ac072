//! The two AWS calls that fetch secret values: SSM `GetParameter` (with
//! `WithDecryption`) and Secrets Manager `GetSecretValue`, the AWS JSON 1.1
//! protocol (a POST with `X-Amz-Target`) over HTTPS, signed with SigV4
//! with the server's credentials (`credentials`, `signing`). Errors name
//! the reference and what AWS answered, never a value.

use std::sync::OnceLock;

use base64::Engine as _;

use cms_aws::retry::{ATTEMPTS, REQUEST_TIMEOUT};

use super::credentials::CredentialsSource;
use crate::clock::SharedClock;

/// Where the secrets client sends its calls.
#[derive(Debug, Clone, Default)]
pub struct SecretsEndpoints {
    /// The region of both services (and of the signature).
    pub region: Option<String>,
    /// Base URL of SSM [default: `https://ssm.REGION.amazonaws.com`].
    pub ssm: Option<String>,
    /// Base URL of Secrets Manager [default:
    /// `https://secretsmanager.REGION.amazonaws.com`].
    pub secretsmanager: Option<String>,
}

/// A reference to an AWS secret, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsReference {
    /// `ssm:NAME` (NAME usually `/a/b`).
    Ssm { name: String },
    /// `secretsmanager:NAME` or `secretsmanager:NAME#field` (a field of
    /// the secret's JSON object).
    SecretsManager { name: String, field: Option<String> },
}

impl AwsReference {
    pub fn parse(reference: &str) -> Result<AwsReference, String> {
        if let Some(name) = reference.strip_prefix("ssm:") {
            if name.is_empty() {
                return Err(format!("`{reference}`: no parameter name after ssm:"));
            }
            return Ok(AwsReference::Ssm {
                name: name.to_string(),
            });
        }
        if let Some(rest) = reference.strip_prefix("secretsmanager:") {
            let (name, field) = match rest.split_once('#') {
                Some((name, field)) => (name, Some(field.to_string())),
                None => (rest, None),
            };
            if name.is_empty() || field.as_deref() == Some("") {
                return Err(format!(
                    "`{reference}`: expected secretsmanager:NAME or secretsmanager:NAME#field"
                ));
            }
            return Ok(AwsReference::SecretsManager {
                name: name.to_string(),
                field,
            });
        }
        Err(format!(
            "`{reference}`: an AWS reference starts with ssm: or secretsmanager:"
        ))
    }
}

/// A client of SSM and Secrets Manager.
#[derive(Debug)]
pub struct SecretsClient {
    endpoints: SecretsEndpoints,
    credentials: CredentialsSource,
    /// Made on first use, on a blocking thread.
    http: OnceLock<reqwest::blocking::Client>,
    clock: SharedClock,
}

impl SecretsClient {
    pub fn new(
        endpoints: SecretsEndpoints,
        credentials: CredentialsSource,
        clock: SharedClock,
    ) -> SecretsClient {
        SecretsClient {
            endpoints,
            credentials,
            http: OnceLock::new(),
            clock,
        }
    }

    fn http(&self) -> Result<&reqwest::blocking::Client, String> {
        if let Some(http) = self.http.get() {
            return Ok(http);
        }
        // reqwest is built without a default crypto provider: the server's
        // (ring) is installed here too, for callers outside `serve`.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("Failed to make an HTTP client: {e}"))?;
        let _ = self.http.set(http);
        Ok(self.http.get().expect("set just now"))
    }

    /// The value `reference` names, as AWS holds it now. Blocks.
    pub fn fetch(&self, reference: &str) -> Result<Vec<u8>, String> {
        let parsed = AwsReference::parse(reference)?;
        let region = self.endpoints.region.as_deref();
        let (service, target, endpoint, body) = match &parsed {
            AwsReference::Ssm { name } => (
                "ssm",
                "AmazonSSM.GetParameter",
                &self.endpoints.ssm,
                serde_json::json!({ "Name": name, "WithDecryption": true }),
            ),
            AwsReference::SecretsManager { name, .. } => (
                "secretsmanager",
                "secretsmanager.GetSecretValue",
                &self.endpoints.secretsmanager,
                serde_json::json!({ "SecretId": name }),
            ),
        };
        let url = match (endpoint, region) {
            (Some(endpoint), _) => format!("{}/", endpoint.trim_end_matches('/')),
            (None, Some(region)) => format!("https://{service}.{region}.amazonaws.com/"),
            (None, None) => {
                return Err(format!(
                    "`{reference}`: the server has no AWS region: start it with --aws-region (or AWS_REGION)"
                ));
            }
        };
        let region = region.unwrap_or("us-east-1");
        let answer = self
            .call(&url, region, service, target, &body.to_string())
            .map_err(|why| format!("`{reference}`: {why}"))?;
        value_of(&parsed, &answer).map_err(|why| format!("`{reference}`: {why}"))
    }

    /// One signed POST, retried on throttling, server errors and failed
    /// connections; the JSON of a 200 answer.
    fn call(
        &self,
        url: &str,
        region: &str,
        service: &str,
        target: &str,
        body: &str,
    ) -> Result<serde_json::Value, String> {
        let content_type = "application/x-amz-json-1.1";
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            std::thread::sleep(cms_aws::retry::backoff(attempt));
            let http = self.http()?;
            let credentials = self
                .credentials
                .credentials(http, &self.clock)
                .map_err(|e| format!("{e:#}"))?;
            let headers = [("content-type", content_type), ("x-amz-target", target)];
            let signature = cms_aws::signing::signature_headers(
                &credentials,
                cms_aws::signing::Scope {
                    region,
                    service,
                    time_unix_ms: self.clock.now_unix_ms(),
                },
                cms_aws::signing::Request {
                    method: "POST",
                    url,
                    headers: &headers,
                    body: body.as_bytes(),
                },
            )
            .map_err(|e| format!("Failed to sign the request: {e}"))?;
            let mut request = http
                .post(url)
                .header("content-type", content_type)
                .header("x-amz-target", target)
                .body(body.to_string());
            for (name, value) in signature {
                request = request.header(name, value);
            }
            match request.send() {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().unwrap_or_default();
                    if status == 200 {
                        return serde_json::from_str(&text)
                            .map_err(|e| format!("{url} answered something not JSON: {e}"));
                    }
                    let (code, message) = error_of(&text);
                    if !cms_aws::retry::is_retryable(status, &code) {
                        return Err(format!("{url} answered {status}: {code}: {message}"));
                    }
                    last_error = format!("{status}: {code}: {message}");
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        Err(format!(
            "Failed to reach {url} after {ATTEMPTS} attempts: {last_error}"
        ))
    }
}

/// The value in an answer of `GetParameter` or `GetSecretValue`.
fn value_of(reference: &AwsReference, answer: &serde_json::Value) -> Result<Vec<u8>, String> {
    match reference {
        AwsReference::Ssm { .. } => answer
            .pointer("/Parameter/Value")
            .and_then(|v| v.as_str())
            .map(|v| v.as_bytes().to_vec())
            .ok_or_else(|| "the answer has no Parameter.Value".to_string()),
        AwsReference::SecretsManager { field: None, .. } => {
            if let Some(text) = answer.get("SecretString").and_then(|v| v.as_str()) {
                return Ok(text.as_bytes().to_vec());
            }
            let binary = answer
                .get("SecretBinary")
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    "the answer has neither SecretString nor SecretBinary".to_string()
                })?;
            base64::engine::general_purpose::STANDARD
                .decode(binary)
                .map_err(|_| "SecretBinary is not base64".to_string())
        }
        AwsReference::SecretsManager {
            field: Some(field), ..
        } => {
            let text = answer
                .get("SecretString")
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    format!("the secret has no SecretString to read field `{field}` from")
                })?;
            let object: serde_json::Value = serde_json::from_str(text).map_err(|_| {
                format!("the secret is not a JSON object: cannot read field `{field}`")
            })?;
            match object.get(field) {
                Some(serde_json::Value::String(value)) => Ok(value.as_bytes().to_vec()),
                Some(serde_json::Value::Null) | None => {
                    Err(format!("the secret's JSON has no field `{field}`"))
                }
                Some(other) => Ok(other.to_string().into_bytes()),
            }
        }
    }
}

/// `__type` (without its namespace) and `message` of an AWS JSON error.
fn error_of(text: &str) -> (String, String) {
    let json: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let code = json
        .get("__type")
        .and_then(|v| v.as_str())
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .unwrap_or_else(|| "unknown error".to_string());
    let message = json
        .get("message")
        .or_else(|| json.get("Message"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_say_why() {
        assert_eq!(
            AwsReference::parse("ssm:/prod/db").unwrap(),
            AwsReference::Ssm {
                name: "/prod/db".into()
            }
        );
        assert_eq!(
            AwsReference::parse("secretsmanager:prod/db#password").unwrap(),
            AwsReference::SecretsManager {
                name: "prod/db".into(),
                field: Some("password".into())
            }
        );
        assert!(AwsReference::parse("vault:x").is_err());
        assert!(AwsReference::parse("ssm:").is_err());
        assert!(AwsReference::parse("secretsmanager:x#").is_err());
    }

    #[test]
    fn a_field_is_read_from_the_secrets_json_and_binary_secrets_are_decoded() {
        let field = AwsReference::parse("secretsmanager:db#password").unwrap();
        let answer = serde_json::json!({"SecretString": "{\"password\":\"s3cret\",\"port\":5432}"});
        assert_eq!(value_of(&field, &answer).unwrap(), b"s3cret");
        let port = AwsReference::parse("secretsmanager:db#port").unwrap();
        assert_eq!(value_of(&port, &answer).unwrap(), b"5432");
        let missing = AwsReference::parse("secretsmanager:db#user").unwrap();
        let error = value_of(&missing, &answer).unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        let whole = AwsReference::parse("secretsmanager:key").unwrap();
        let binary = serde_json::json!({"SecretBinary": "AAEC/w=="});
        assert_eq!(value_of(&whole, &binary).unwrap(), vec![0, 1, 2, 255]);
    }
}
