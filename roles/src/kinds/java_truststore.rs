//! `java_truststore`: a PKCS#12 truststore holding exactly the listed CA
//! certificates, each under its alias, for a Java application
//! (`-Djavax.net.ssl.trustStore=...`). Each certificate is read when the
//! catalog is compiled: one PEM certificate, whose SHA-256 fingerprint the
//! catalog carries, so that the agent compares fingerprints.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Kind, Mode, Resolver, check_path};
use crate::digest::sha256;

/// Where a certificate comes from: exactly one of `source` (a path under
/// `files/`, as a file's `source`) or `content` (the PEM text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    pub source: Option<String>,
    pub content: Option<String>,
}

/// A truststore as a role declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JavaTruststoreSpec {
    pub path: String,
    /// Alias → certificate.
    pub certificates: BTreeMap<String, CertificateSpec>,
    /// The store's password, usually `{{secret "truststore"}}`; never shown.
    pub password: String,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
}

/// One certificate as the catalog carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedCertificate {
    /// sha256 of the PEM text in the catalog's contents.
    pub pem_sha256: String,
    /// The certificate's SHA-256 fingerprint as keytool prints it
    /// (`AB:CD:...`).
    pub fingerprint: String,
}

/// A truststore as a catalog carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JavaTruststore {
    pub path: String,
    pub certificates: BTreeMap<String, TrustedCertificate>,
    pub password: String,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
}

/// keytool refuses a shorter store password.
pub const TRUSTSTORE_PASSWORD_MIN: usize = 6;

impl Kind for JavaTruststore {
    type Spec = JavaTruststoreSpec;
    const PATH_NAMED: bool = true;
    const REFRESHABLE: bool = false;
    /// A PEM is used as written.
    const LITERAL_FIELDS: &'static [&'static str] = &["certificates"];

    fn name(&self) -> &str {
        &self.path
    }

    fn resolve(spec: JavaTruststoreSpec, cx: &mut Resolver<'_>) -> Option<JavaTruststore> {
        check_path(&spec.path, "path", &mut cx.problems);
        // The password may be a secret: its value is never quoted.
        if spec.password.chars().count() < TRUSTSTORE_PASSWORD_MIN
            || spec.password.contains(['\n', '\0'])
        {
            cx.problems.push((
                "password",
                format!(
                    "the truststore password must have at least {TRUSTSTORE_PASSWORD_MIN} characters (keytool refuses fewer) and no newline; e.g. password = \"{{{{secret \\\"truststore\\\"}}}}\""
                ),
            ));
        }
        if spec.certificates.is_empty() {
            cx.problems.push((
                "certificates",
                "a truststore needs at least one certificate: certificates = { my-ca = { source = \"ca.pem\" } }".into(),
            ));
        }
        let mut certificates = BTreeMap::new();
        for (alias, certificate) in spec.certificates {
            if alias.is_empty()
                || !alias
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            {
                cx.problems.push((
                    "certificates",
                    format!(
                        "certificates.{alias}: an alias is lowercase letters, digits, `.`, `_` and `-` (keytool folds case), e.g. internal-ca"
                    ),
                ));
                continue;
            }
            let pem = match (&certificate.source, &certificate.content) {
                (Some(source), None) => cx.source_bytes(source, "certificates"),
                (None, Some(content)) => Some(content.clone().into_bytes()),
                _ => {
                    cx.problems.push((
                        "certificates",
                        format!("certificates.{alias}: write exactly one of source = \"ca.pem\" (under files/) or content = \"-----BEGIN CERTIFICATE-----...\""),
                    ));
                    None
                }
            };
            let Some(pem) = pem else { continue };
            match certificate_der(&pem) {
                Ok(der) => {
                    let fingerprint = sha256(&der)
                        .iter()
                        .map(|byte| format!("{byte:02X}"))
                        .collect::<Vec<_>>()
                        .join(":");
                    let pem_sha256 = cx.add_content(pem);
                    certificates.insert(
                        alias,
                        TrustedCertificate {
                            pem_sha256,
                            fingerprint,
                        },
                    );
                }
                Err(problem) => cx
                    .problems
                    .push(("certificates", format!("certificates.{alias}: {problem}"))),
            }
        }
        Some(JavaTruststore {
            path: spec.path,
            certificates,
            password: spec.password,
            owner: spec.owner,
            group: spec.group,
            mode: spec.mode,
        })
    }

    fn summary(&self) -> String {
        format!(" certificates={}", self.certificates.len())
    }
}

/// The DER bytes of the one certificate a PEM text holds.
fn certificate_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(pem).map_err(|_| {
        "not a PEM certificate (binary; convert DER with `openssl x509 -inform der -out ca.pem`)"
            .to_string()
    })?;
    let count = text.matches(BEGIN).count();
    if count != 1 {
        return Err(format!(
            "holds {count} PEM certificates ({BEGIN}); give each certificate its own alias"
        ));
    }
    let start = text.find(BEGIN).unwrap_or_default() + BEGIN.len();
    let Some(length) = text[start..].find(END) else {
        return Err(format!("the certificate has no {END} line"));
    };
    let body: String = text[start..start + length].split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|_| "the certificate's base64 is not valid".to_string())?;
    // A certificate is a DER SEQUENCE.
    if der.first() != Some(&0x30) {
        return Err("the PEM block does not hold a certificate".into());
    }
    Ok(der)
}
