//! The EC2 instance identity document: its fields, and the check of its
//! signature (RSA PKCS#1 v1.5 with SHA-256 over the document's bytes
//! exactly as the metadata service served them, base64-encoded) against
//! the public key of a region's AWS certificate.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

/// The fields of a document the server uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityDocument {
    pub account_id: String,
    pub instance_id: String,
    pub region: String,
    #[serde(default)]
    pub availability_zone: String,
    #[serde(default)]
    pub instance_type: String,
    #[serde(default)]
    pub image_id: String,
}

impl IdentityDocument {
    /// Parses a document; its signature is not checked here.
    pub fn parse(document: &[u8]) -> Result<IdentityDocument, serde_json::Error> {
        serde_json::from_slice(document)
    }

    /// The node's attested values.
    pub fn values(&self) -> BTreeMap<String, String> {
        [
            ("instance_id", &self.instance_id),
            ("account_id", &self.account_id),
            ("region", &self.region),
            ("availability_zone", &self.availability_zone),
            ("instance_type", &self.instance_type),
            ("image_id", &self.image_id),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect()
    }
}

/// Whether `signature` (base64, whitespace allowed, as the metadata
/// service serves it) is the RSA-SHA256 signature of `document` by the
/// holder of `public_key` (PKCS#1 `RSAPublicKey`, DER).
pub fn verify_signature(public_key: &[u8], document: &[u8], signature: &[u8]) -> bool {
    let compact: Vec<u8> = signature
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(compact) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(document, &signature)
    .is_ok()
}

/// The RSA public key of a PEM certificate, as `verify_signature` takes it.
pub fn public_key_of(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let certificate = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let key = certificate.public_key();
    // 1.2.840.113549.1.1.1: rsaEncryption.
    if key.algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
        anyhow::bail!(
            "its key is not an RSA key (algorithm {}); the identity document's signature is RSA",
            key.algorithm.algorithm.to_id_string()
        );
    }
    Ok(key.subject_public_key.data.to_vec())
}
