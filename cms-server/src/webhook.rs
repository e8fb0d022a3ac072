//! Checking push webhooks from GitHub and GitLab, without an HTTP framework:
//! the server's handler passes the raw body and one header in, and syncs at
//! once when the request is genuine and names the branch it follows.
//!
//! Secrets are compared in constant time, so a caller cannot learn a secret
//! byte by byte from response times. A request is refused when no secret is
//! configured: an empty HMAC key or token would let anyone in.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header GitHub signs a delivery with.
pub const GITHUB_SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The header GitLab sends the shared token in.
pub const GITLAB_TOKEN_HEADER: &str = "X-Gitlab-Token";

/// Why a webhook request is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("Failed to verify the webhook: no webhook secret is configured on the server")]
    NoSecretConfigured,
    #[error("Failed to verify the webhook: the request has no {header} header")]
    MissingHeader { header: &'static str },
    #[error(
        "Failed to verify the webhook: the {GITHUB_SIGNATURE_HEADER} header is not `sha256=` followed by 64 hex digits"
    )]
    MalformedSignature,
    #[error("Failed to verify the webhook: the signature does not match the body and the secret")]
    SignatureMismatch,
    #[error(
        "Failed to verify the webhook: the {GITLAB_TOKEN_HEADER} header does not match the secret"
    )]
    TokenMismatch,
}

/// Checks a GitHub delivery: `signature_header` is the value of
/// `X-Hub-Signature-256`, `sha256=<hex>` of the HMAC-SHA256 of the raw body
/// keyed with the webhook secret.
pub fn verify_github(
    secret: &[u8],
    body: &[u8],
    signature_header: Option<&str>,
) -> Result<(), WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::NoSecretConfigured);
    }
    let header = signature_header.ok_or(WebhookError::MissingHeader {
        header: GITHUB_SIGNATURE_HEADER,
    })?;
    let signature = header
        .trim()
        .strip_prefix("sha256=")
        .and_then(decode_hex)
        .filter(|bytes| bytes.len() == 32)
        .ok_or(WebhookError::MalformedSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| WebhookError::SignatureMismatch)
}

/// Checks a GitLab delivery: `token_header` is the value of
/// `X-Gitlab-Token`, which GitLab sends as the secret itself.
pub fn verify_gitlab(secret: &str, token_header: Option<&str>) -> Result<(), WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::NoSecretConfigured);
    }
    let token = token_header.ok_or(WebhookError::MissingHeader {
        header: GITLAB_TOKEN_HEADER,
    })?;
    // Both sides go through the same keyed hash first, so the comparison
    // takes the same time whatever their lengths and contents, and the final
    // comparison is the constant-time one of the `digest` crate.
    let expected = token_digest(secret.as_bytes()).finalize().into_bytes();
    token_digest(token.as_bytes())
        .verify_slice(&expected)
        .map_err(|_| WebhookError::TokenMismatch)
}

/// The branch a push payload (GitHub or GitLab, both write
/// `"ref": "refs/heads/<branch>"`) went to; `None` for anything else (a tag
/// push, GitHub's `ping`, a body that is not JSON), which the server ignores.
pub fn pushed_branch(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Push {
        #[serde(rename = "ref")]
        reference: String,
    }
    let push: Push = serde_json::from_slice(body).ok()?;
    push.reference
        .strip_prefix("refs/heads/")
        .filter(|branch| !branch.is_empty())
        .map(str::to_string)
}

fn token_digest(bytes: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"cms gitlab webhook token")
        .expect("HMAC takes a key of any length");
    mac.update(bytes);
    mac
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            Some((high * 16 + low) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of GitHub's documentation, "Validating webhook
    /// deliveries".
    const GITHUB_SECRET: &[u8] = b"It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_signature_from_the_documentation_is_accepted() {
        assert_eq!(
            verify_github(GITHUB_SECRET, GITHUB_BODY, Some(GITHUB_SIGNATURE)),
            Ok(())
        );
        let uppercase = GITHUB_SIGNATURE.replace("757107ea", "757107EA");
        assert_eq!(
            verify_github(GITHUB_SECRET, GITHUB_BODY, Some(&uppercase)),
            Ok(())
        );
    }

    #[test]
    fn github_delivery_with_another_body_or_secret_is_refused() {
        assert_eq!(
            verify_github(GITHUB_SECRET, b"Hello, World?", Some(GITHUB_SIGNATURE)),
            Err(WebhookError::SignatureMismatch)
        );
        assert_eq!(
            verify_github(b"another secret", GITHUB_BODY, Some(GITHUB_SIGNATURE)),
            Err(WebhookError::SignatureMismatch)
        );
    }

    #[test]
    fn github_delivery_without_a_usable_signature_is_refused() {
        assert_eq!(
            verify_github(GITHUB_SECRET, GITHUB_BODY, None),
            Err(WebhookError::MissingHeader {
                header: GITHUB_SIGNATURE_HEADER
            })
        );
        let sha1_style = "sha1=0123456789abcdef0123456789abcdef01234567";
        let truncated = &GITHUB_SIGNATURE[..GITHUB_SIGNATURE.len() - 2];
        let not_hex = GITHUB_SIGNATURE.replace('7', "g");
        for header in [sha1_style, truncated, &not_hex, "sha256=", ""] {
            assert_eq!(
                verify_github(GITHUB_SECRET, GITHUB_BODY, Some(header)),
                Err(WebhookError::MalformedSignature),
                "{header}"
            );
        }
    }

    #[test]
    fn webhook_without_a_configured_secret_is_refused() {
        let unkeyed = {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"").unwrap();
            mac.update(GITHUB_BODY);
            let bytes = mac.finalize().into_bytes();
            format!(
                "sha256={}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        assert_eq!(
            verify_github(b"", GITHUB_BODY, Some(&unkeyed)),
            Err(WebhookError::NoSecretConfigured)
        );
        assert_eq!(
            verify_gitlab("", Some("")),
            Err(WebhookError::NoSecretConfigured)
        );
    }

    #[test]
    fn gitlab_token_must_equal_the_secret() {
        assert_eq!(verify_gitlab("s3cret-token", Some("s3cret-token")), Ok(()));
        for wrong in ["s3cret-toke", "s3cret-token ", "S3CRET-TOKEN", ""] {
            assert_eq!(
                verify_gitlab("s3cret-token", Some(wrong)),
                Err(WebhookError::TokenMismatch),
                "{wrong:?}"
            );
        }
        assert_eq!(
            verify_gitlab("s3cret-token", None),
            Err(WebhookError::MissingHeader {
                header: GITLAB_TOKEN_HEADER
            })
        );
    }

    #[test]
    fn pushed_branch_is_read_from_github_and_gitlab_payloads() {
        let github = br#"{"ref":"refs/heads/main","before":"0000","after":"1111","repository":{"full_name":"acme/roles"},"pusher":{"name":"ops"}}"#;
        assert_eq!(pushed_branch(github).as_deref(), Some("main"));
        let gitlab = br#"{"object_kind":"push","event_name":"push","ref":"refs/heads/release/2024","checkout_sha":"1111","project":{"path_with_namespace":"acme/roles"}}"#;
        assert_eq!(pushed_branch(gitlab).as_deref(), Some("release/2024"));
    }

    #[test]
    fn pushes_that_name_no_branch_are_ignored() {
        let tag = br#"{"ref":"refs/tags/v1.0","after":"1111"}"#;
        let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
        for body in [
            &tag[..],
            &ping[..],
            b"not json",
            b"{\"ref\":\"refs/heads/\"}",
        ] {
            assert_eq!(
                pushed_branch(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
