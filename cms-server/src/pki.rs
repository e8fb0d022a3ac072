//! The server's certificate authority and enrollment tokens: pure crypto, no
//! storage and no tonic.
//!
//! The CA (ECDSA P-256, created on the server's first start) signs three
//! kinds of certificates, and the identity each one carries is a SAN URI that
//! only this module writes:
//!
//! - a node's client certificate, signed from the CSR an agent sends when it
//!   enrolls: `cms://node/<node_id>`, client-auth only. Whatever names the
//!   CSR asks for are ignored; the CSR contributes its public key and nothing
//!   else, so an agent cannot ask to be the admin or another node;
//! - an operator's admin credential: `cms://operator/<name>`, client-auth
//!   only, from a CSR the operator's CLI made ([`operator_key_and_csr`]);
//!   servers before operators existed wrote one shared credential,
//!   `cms://admin`, which now reads as the operator
//!   [`BOOTSTRAP_OPERATOR`];
//! - the server's own certificate: DNS names and IP addresses, server-auth
//!   only, so it can never be presented as a client.
//!
//! The mTLS layer verifies the chain to the CA and the extended key usage;
//! [`peer_identity`] then only reads who the verified peer is. Revocation is
//! not checked here: the caller compares the serial [`peer_identity`] returns
//! with the revoked serials it stores.
//!
//! An enrollment token is a random secret shown once to the operator; the
//! server stores only its [`token_id`] (a SHA-256), together with the token's
//! scope ([`parse_scope`], [`check_scope`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use cms_roles::digest::{hex, sha256_hex};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use x509_parser::extensions::GeneralName;

/// The SAN URI prefix of a node certificate; the node id follows it.
pub const NODE_URI_PREFIX: &str = "cms://node/";
/// The SAN URI of the shared admin credential servers wrote before each
/// operator had one; it identifies the operator [`BOOTSTRAP_OPERATOR`].
pub const ADMIN_URI: &str = "cms://admin";
/// The SAN URI prefix of an operator's certificate; the name follows it.
pub const OPERATOR_URI_PREFIX: &str = "cms://operator/";
/// The operator whose credential the server writes itself, on its first
/// start, into `<data>/admin/`.
pub const BOOTSTRAP_OPERATOR: &str = "admin";
/// The longest operator name.
pub const MAX_OPERATOR_NAME_LENGTH: usize = 64;
/// Every enrollment token starts with this, so that a leaked one is easy to
/// recognise (and to search for in logs and repositories).
pub const TOKEN_PREFIX: &str = "cmst_";
/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// The longest node id [`CertificateAuthority::sign_node_csr`] accepts.
pub const MAX_NODE_ID_LENGTH: usize = 128;

/// How far in the past certificates start, so that a peer whose clock is
/// behind the server's (by up to a day) does not refuse a certificate it
/// just got, nor the server's own after a restart. See
/// `cms_proto::CERTIFICATE_BACKDATE_SECS` and docs/operations.md.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(cms_proto::CERTIFICATE_BACKDATE_SECS);

/// The server's certificate authority: its certificate and signing key.
pub struct CertificateAuthority {
    certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after_unix: i64,
}

/// A node certificate signed from a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    /// The serial number as lowercase hex, as [`peer_identity`] reads it back.
    pub serial_hex: String,
    /// Seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// A certificate together with the private key the CA generated for it: the
/// server's own certificate and the admin credential, which are made on the
/// server and never leave its data directory.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

/// Who a verified peer certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    Node(String),
    /// An operator's admin credential, by the operator's name.
    Operator(String),
}

/// What a certificate says about itself, read without checking its dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub identity: PeerIdentity,
    pub serial_hex: String,
    pub not_after_unix: i64,
}

/// A fresh enrollment token. The secret is shown to the operator once; only
/// the id is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// `cmst_` followed by 32 random bytes in unpadded base64url.
    pub secret: String,
    /// [`token_id`] of the secret.
    pub id: String,
}

/// Why a certificate, a token or a scope could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("Failed to generate a key pair")]
    GenerateKey {
        #[source]
        source: rcgen::Error,
    },
    #[error("Failed to read random bytes from /dev/urandom")]
    ReadRandom {
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to sign the {what} certificate")]
    Sign {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("Failed to read the CA certificate: {reason}")]
    ReadCaCertificate { reason: String },
    #[error("Failed to read the CA private key")]
    ReadCaKey {
        #[source]
        source: rcgen::Error,
    },
    #[error("Failed to load the CA: its private key does not belong to its certificate")]
    CaKeyMismatch,
    #[error("Failed to read the certificate signing request")]
    ReadCsr {
        #[source]
        source: rcgen::Error,
    },
    #[error("Failed to accept the node id `{node_id}`: {reason}")]
    InvalidNodeId { node_id: String, reason: String },
    #[error("Failed to issue the server certificate: {reason}")]
    InvalidServerNames { reason: String },
    #[error("Failed to identify the peer: {reason}")]
    IdentifyPeer { reason: String },
    #[error("Failed to accept the operator name `{name}`: {reason}")]
    InvalidOperatorName { name: String, reason: String },
    #[error("Failed to make a certificate signing request")]
    MakeCsr {
        #[source]
        source: rcgen::Error,
    },
    #[error("Failed to parse the token scope `{scope}`: {reason}")]
    ParseScope { scope: String, reason: String },
}

/// Why a token's scope does not allow the tags a node asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeViolation {
    #[error("tag `{tag}` is not in the token's scope, which allows only {allowed}")]
    TagNotInScope { tag: String, allowed: String },
    #[error("tag `{tag}={value}` is outside the token's scope, which allows {tag}={pattern}")]
    ValueNotInScope {
        tag: String,
        value: String,
        pattern: String,
    },
    #[error("tag `{tag}` is required by the token's scope ({tag}={pattern}) but was not sent")]
    MissingTag { tag: String, pattern: String },
}

impl CertificateAuthority {
    /// Creates a new CA: a fresh ECDSA P-256 key and a self-signed
    /// certificate, "cms CA <name>", valid for [`CA_VALIDITY`].
    pub fn create(name: &str) -> Result<Self, PkiError> {
        let key = generate_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&format!("cms CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        let now = unix_now();
        let not_after_unix = now + CA_VALIDITY.as_secs();
        set_validity(
            &mut params,
            now.saturating_sub(CLOCK_SKEW_ALLOWANCE.as_secs()),
            not_after_unix,
        );
        let certificate = params
            .self_signed(&key)
            .map_err(|source| PkiError::Sign { what: "CA", source })?;
        Ok(Self {
            certificate_pem: certificate.pem(),
            issuer: Issuer::new(params, key),
            not_after_unix: to_i64(not_after_unix),
        })
    }

    /// Loads a CA saved with [`Self::certificate_pem`] and
    /// [`Self::private_key_pem`], checking that the key belongs to the
    /// certificate and that the certificate is a CA.
    pub fn from_pem(certificate_pem: &str, private_key_pem: &str) -> Result<Self, PkiError> {
        let key =
            KeyPair::from_pem(private_key_pem).map_err(|source| PkiError::ReadCaKey { source })?;
        let unreadable = |reason: String| PkiError::ReadCaCertificate { reason };
        let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
            .map_err(|error| unreadable(format!("not PEM: {error}")))?;
        let certificate = pem
            .parse_x509()
            .map_err(|error| unreadable(format!("not an X.509 certificate: {error}")))?;
        if !certificate.is_ca() {
            return Err(unreadable("it is not a CA certificate".to_owned()));
        }
        if certificate.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::CaKeyMismatch);
        }
        let not_after_unix = certificate.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_pem(certificate_pem, key)
            .map_err(|error| unreadable(error.to_string()))?;
        Ok(Self {
            certificate_pem: certificate_pem.to_owned(),
            issuer,
            not_after_unix,
        })
    }

    /// The CA certificate, which agents and admin clients trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA's private key (PKCS#8 PEM), for the server to store.
    pub fn private_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the CA certificate expires, in seconds since the Unix epoch. No
    /// certificate it issues outlives it.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix
    }

    /// Signs a node's client certificate from its CSR.
    ///
    /// The CSR's signature is verified (the agent holds the private key) and
    /// its public key is used; everything else it asks for is ignored. The
    /// certificate names `node_id` in its CN and as the SAN URI
    /// `cms://node/<node_id>`, allows client authentication only, and is
    /// valid from a minute ago for `validity` (but never past the CA).
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        validity: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        check_node_id(node_id)?;
        self.sign_client_csr(
            csr_pem,
            node_id,
            &format!("{NODE_URI_PREFIX}{node_id}"),
            "node",
            validity,
        )
    }

    /// Issues the server's own certificate, with a fresh key, for the names
    /// agents connect to. Server authentication only. It is valid as long as
    /// the CA, so that a server that is never restarted does not lock its
    /// fleet out; the server may issue a new one whenever it starts.
    pub fn issue_server_certificate(
        &self,
        dns_names: &[String],
        ip_addresses: &[IpAddr],
    ) -> Result<Credential, PkiError> {
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(PkiError::InvalidServerNames {
                reason: "it names no DNS name and no IP address".to_owned(),
            });
        }
        let mut names = Vec::new();
        for name in dns_names {
            let ia5 = rcgen::string::Ia5String::try_from(name.as_str()).map_err(|_| {
                PkiError::InvalidServerNames {
                    reason: format!("`{name}` is not a DNS name"),
                }
            })?;
            names.push(SanType::DnsName(ia5));
        }
        names.extend(ip_addresses.iter().copied().map(SanType::IpAddress));
        self.issue_with_new_key(
            "cms server",
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        )
    }

    /// Issues the admin credential (`cms://admin`, client authentication
    /// only), with a fresh key, valid as long as the CA.
    pub fn issue_admin_certificate(&self) -> Result<Credential, PkiError> {
        self.issue_with_new_key(
            "cms admin",
            vec![SanType::URI(ia5(ADMIN_URI)?)],
            ExtendedKeyUsagePurpose::ClientAuth,
            "admin",
        )
    }

    /// Signs an operator's admin certificate from the CSR its CLI made:
    /// `cms://operator/<name>`, client authentication only, valid from a
    /// minute ago for `validity` (never past the CA). As for nodes, only the
    /// CSR's public key is used.
    pub fn sign_operator_csr(
        &self,
        csr_pem: &str,
        name: &str,
        validity: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        check_operator_name(name)?;
        self.sign_client_csr(
            csr_pem,
            &format!("cms operator {name}"),
            &format!("{OPERATOR_URI_PREFIX}{name}"),
            "operator",
            validity,
        )
    }

    /// A client-authentication certificate for the CSR's public key (its
    /// signature verified, everything else it asks for ignored), named
    /// `common_name` and by the SAN URI `uri`; `what` names it in errors.
    fn sign_client_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        uri: &str,
        what: &'static str,
        validity: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|source| PkiError::ReadCsr { source })?;
        let (params, serial_hex, not_after_unix) = self.leaf_params(
            common_name,
            vec![SanType::URI(ia5(uri)?)],
            ExtendedKeyUsagePurpose::ClientAuth,
            unix_now().saturating_add(validity.as_secs()),
        )?;
        let certificate = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(|source| PkiError::Sign { what, source })?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            serial_hex,
            not_after_unix,
        })
    }

    /// An operator's credential made on the server, key included: the
    /// bootstrap operator's, which the server writes into its data
    /// directory.
    pub fn issue_operator_credential(
        &self,
        name: &str,
        validity: Duration,
    ) -> Result<(Credential, IssuedCertificate), PkiError> {
        let (private_key_pem, csr_pem) = operator_key_and_csr(name)?;
        let issued = self.sign_operator_csr(&csr_pem, name, validity)?;
        Ok((
            Credential {
                certificate_pem: issued.certificate_pem.clone(),
                private_key_pem,
            },
            issued,
        ))
    }

    fn issue_with_new_key(
        &self,
        common_name: &str,
        subject_alt_names: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        what: &'static str,
    ) -> Result<Credential, PkiError> {
        let key = generate_key()?;
        // Asking for the end of time is clamped to the CA's own end.
        let (params, _, _) = self.leaf_params(common_name, subject_alt_names, usage, u64::MAX)?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Sign { what, source })?;
        Ok(Credential {
            certificate_pem: certificate.pem(),
            private_key_pem: key.serialize_pem(),
        })
    }

    /// The parameters every leaf shares, with a random serial, valid from
    /// `CLOCK_SKEW_ALLOWANCE` (a day) ago until `not_after_unix` or the CA's end, whichever is first.
    /// Returns them with the serial as hex and the actual end of validity.
    fn leaf_params(
        &self,
        common_name_value: &str,
        subject_alt_names: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        not_after_unix: u64,
    ) -> Result<(CertificateParams, String, i64), PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(common_name_value);
        params.subject_alt_names = subject_alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        let ca_not_after = u64::try_from(self.not_after_unix).unwrap_or(0);
        let not_after = not_after_unix.min(ca_not_after);
        let not_before = unix_now().saturating_sub(CLOCK_SKEW_ALLOWANCE.as_secs());
        set_validity(&mut params, not_before, not_after);
        Ok((params, serial_hex, to_i64(not_after)))
    }
}

impl fmt::Debug for CertificateAuthority {
    // Never prints the private key.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CertificateAuthority")
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Credential {
    // Never prints the private key.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Credential")
            .field("certificate_pem", &self.certificate_pem)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for NewToken {
    // Never prints the secret.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("NewToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Reads who a peer certificate (DER) belongs to, and its serial as hex.
///
/// The mTLS layer has already verified the chain to our CA and the extended
/// key usage; this only reads the one `cms://` SAN URI this module wrote. A
/// certificate with none, or with more than one, is refused.
pub fn peer_identity(certificate_der: &[u8]) -> Result<(PeerIdentity, String), PkiError> {
    let refuse = |reason: String| PkiError::IdentifyPeer { reason };
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der)
        .map_err(|error| refuse(format!("not an X.509 certificate: {error}")))?;
    // The TLS handshake checked the dates, but a resumed session or a
    // long-lived connection outlives that check.
    let validity = certificate.validity();
    if !validity.is_valid() {
        return Err(refuse(format!(
            "the certificate is valid from {} to {}, not now: renew it or enroll again",
            validity.not_before, validity.not_after
        )));
    }
    let names = certificate
        .subject_alternative_name()
        .map_err(|error| refuse(format!("unreadable subject alternative names: {error}")))?
        .map(|extension| extension.value.general_names.as_slice())
        .unwrap_or_default();
    let mut ours = names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with("cms://") => Some(*uri),
        _ => None,
    });
    let (Some(uri), None) = (ours.next(), ours.next()) else {
        return Err(refuse(
            "the certificate must name exactly one cms:// URI".to_owned(),
        ));
    };
    let identity = if uri == ADMIN_URI {
        PeerIdentity::Operator(BOOTSTRAP_OPERATOR.to_owned())
    } else if let Some(name) = uri.strip_prefix(OPERATOR_URI_PREFIX) {
        if check_operator_name(name).is_err() {
            return Err(refuse(format!("`{name}` is not a valid operator name")));
        }
        PeerIdentity::Operator(name.to_owned())
    } else if let Some(node_id) = uri.strip_prefix(NODE_URI_PREFIX) {
        if check_node_id(node_id).is_err() {
            return Err(refuse(format!("`{node_id}` is not a valid node id")));
        }
        PeerIdentity::Node(node_id.to_owned())
    } else {
        return Err(refuse(format!("unknown identity `{uri}`")));
    };
    Ok((identity, hex(certificate.raw_serial())))
}

/// Reads who a certificate (PEM) names, its serial and its end, without
/// looking at its dates: the server reads its own bootstrap credential so.
pub fn read_certificate(certificate_pem: &str) -> Result<CertificateInfo, PkiError> {
    let refuse = |reason: String| PkiError::IdentifyPeer { reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
        .map_err(|error| refuse(format!("not PEM: {error}")))?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&pem.contents)
        .map_err(|error| refuse(format!("not an X.509 certificate: {error}")))?;
    let not_after_unix = certificate.validity().not_after.timestamp();
    let serial_hex = hex(certificate.raw_serial());
    let names = certificate
        .subject_alternative_name()
        .map_err(|error| refuse(format!("unreadable subject alternative names: {error}")))?
        .map(|extension| extension.value.general_names.clone())
        .unwrap_or_default();
    let uri = names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("cms://") => Some(*uri),
            _ => None,
        })
        .ok_or_else(|| refuse("the certificate names no cms:// URI".to_owned()))?;
    let identity = if uri == ADMIN_URI {
        PeerIdentity::Operator(BOOTSTRAP_OPERATOR.to_owned())
    } else if let Some(name) = uri.strip_prefix(OPERATOR_URI_PREFIX) {
        PeerIdentity::Operator(name.to_owned())
    } else if let Some(node_id) = uri.strip_prefix(NODE_URI_PREFIX) {
        PeerIdentity::Node(node_id.to_owned())
    } else {
        return Err(refuse(format!("unknown identity `{uri}`")));
    };
    Ok(CertificateInfo {
        identity,
        serial_hex,
        not_after_unix,
    })
}

/// A fresh P-256 key (PKCS#8 PEM) and a CSR for the operator `name`, made
/// where the operator's credential will live: the key never travels.
pub fn operator_key_and_csr(name: &str) -> Result<(String, String), PkiError> {
    check_operator_name(name)?;
    let key = generate_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("cms operator {name}"));
    let csr = params
        .serialize_request(&key)
        .and_then(|request| request.pem())
        .map_err(|source| PkiError::MakeCsr { source })?;
    Ok((key.serialize_pem(), csr))
}

/// Checks that an operator name is a safe name: 1 to 64 lowercase ASCII
/// letters, digits, `-`, `_` and `.`, starting with a letter or digit. It
/// ends up in a URI, a storage key, the audit log and a folder name.
pub fn check_operator_name(name: &str) -> Result<(), PkiError> {
    let refuse = |reason: &str| PkiError::InvalidOperatorName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(first) = name.chars().next() else {
        return Err(refuse("it is empty"));
    };
    if name.len() > MAX_OPERATOR_NAME_LENGTH {
        return Err(refuse("it is longer than 64 characters"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(refuse("it must start with a lowercase letter or a digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        return Err(refuse(
            "it may contain only lowercase letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(())
}

/// Checks that a node id is a safe name: 1 to 128 ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit (so never `.`, `..` or
/// something that reads as a command-line flag). Node ids end up in URIs,
/// storage keys, logs and file names.
pub fn check_node_id(node_id: &str) -> Result<(), PkiError> {
    let refuse = |reason: &str| PkiError::InvalidNodeId {
        node_id: node_id.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(first) = node_id.chars().next() else {
        return Err(refuse("it is empty"));
    };
    if node_id.len() > MAX_NODE_ID_LENGTH {
        return Err(refuse("it is longer than 128 characters"));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(refuse("it must start with a letter or a digit"));
    }
    if !node_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(refuse(
            "it may contain only letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(())
}

/// Makes a new enrollment token: [`TOKEN_PREFIX`] and 32 random bytes.
pub fn new_token() -> Result<NewToken, PkiError> {
    let mut bytes = [0u8; 32];
    os_random(&mut bytes)?;
    let secret = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let id = token_id(&secret);
    Ok(NewToken { secret, id })
}

/// What the server stores for a token and looks it up by: the SHA-256 of the
/// secret, as lowercase hex. The secret itself is never stored, so a copy of
/// the database enrolls nothing.
pub fn token_id(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// Parses a token scope: `tag=glob` pairs separated by commas, such as
/// `env=staging,role=*`. Globs use `*` and `?`; tag names are literal.
pub fn parse_scope(scope: &str) -> Result<BTreeMap<String, String>, PkiError> {
    let refuse = |reason: String| PkiError::ParseScope {
        scope: scope.to_owned(),
        reason,
    };
    if scope.trim().is_empty() {
        return Err(refuse(
            "it is empty; name the tags the token may enroll, such as env=staging,role=*"
                .to_owned(),
        ));
    }
    let mut parsed = BTreeMap::new();
    for entry in scope.split(',').map(str::trim) {
        let Some((tag, pattern)) = entry.split_once('=') else {
            return Err(refuse(format!("`{entry}` is not of the form tag=value")));
        };
        let (tag, pattern) = (tag.trim(), pattern.trim());
        if tag.is_empty() {
            return Err(refuse(format!("`{entry}` names no tag")));
        }
        if tag.contains(['*', '?']) {
            return Err(refuse(format!(
                "tag name `{tag}` contains a glob; only values may be globs"
            )));
        }
        if pattern.is_empty() {
            return Err(refuse(format!(
                "tag `{tag}` has an empty value; use `{tag}=*` to allow any value"
            )));
        }
        if parsed.insert(tag.to_owned(), pattern.to_owned()).is_some() {
            return Err(refuse(format!("tag `{tag}` is named twice")));
        }
    }
    Ok(parsed)
}

/// Checks the tags a node asks for against a token's scope: each requested
/// tag must be named in the scope with a value its glob matches, and each
/// tag the scope names must be requested (a token for `env=staging` cannot
/// enroll a node without `env`). Reports the first violation in tag order.
pub fn check_scope(
    scope: &BTreeMap<String, String>,
    requested_tags: &BTreeMap<String, String>,
) -> Result<(), ScopeViolation> {
    for (tag, value) in requested_tags {
        let Some(pattern) = scope.get(tag) else {
            return Err(ScopeViolation::TagNotInScope {
                tag: tag.clone(),
                allowed: scope
                    .iter()
                    .map(|(tag, pattern)| format!("{tag}={pattern}"))
                    .collect::<Vec<_>>()
                    .join(","),
            });
        };
        if !cms_roles::glob_match(pattern, value) {
            return Err(ScopeViolation::ValueNotInScope {
                tag: tag.clone(),
                value: value.clone(),
                pattern: pattern.clone(),
            });
        }
    }
    if let Some((tag, pattern)) = scope
        .iter()
        .find(|(tag, _)| !requested_tags.contains_key(*tag))
    {
        return Err(ScopeViolation::MissingTag {
            tag: tag.clone(),
            pattern: pattern.clone(),
        });
    }
    Ok(())
}

/// Fills `buffer` from the kernel's random number generator.
///
/// The server has no direct dependency on a random number crate (ring comes
/// in through rcgen and rustls but is not ours to call), and on Linux
/// `/dev/urandom` is the kernel CSPRNG: it does not block once the kernel
/// has been seeded at boot, long before the server starts.
fn os_random(buffer: &mut [u8]) -> Result<(), PkiError> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(buffer))
        .map_err(|source| PkiError::ReadRandom { source })
}

/// 16 random bytes, the first forced into 0x40..=0x7f: positive (DER
/// integers are signed) and with no leading zero to drop, so the serial is
/// always 16 bytes and its hex is what [`peer_identity`] reads back.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    os_random(&mut bytes)?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn generate_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::GenerateKey { source })
}

fn common_name(value: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, value);
    name
}

fn ia5(text: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    // Our URIs are ASCII by construction (node ids are checked first).
    rcgen::string::Ia5String::try_from(text).map_err(|source| PkiError::Sign {
        what: "leaf",
        source,
    })
}

/// Sets the validity from Unix timestamps. rcgen takes `time` dates and
/// cms-server does not depend on `time`, so dates are built by adding
/// seconds to the Unix epoch, which rcgen can name.
fn set_validity(params: &mut CertificateParams, not_before_unix: u64, not_after_unix: u64) {
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_before_unix);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after_unix);
}

/// Now in unix seconds, from the server's one clock.
fn unix_now() -> u64 {
    crate::clock::now_unix_ms() / 1000
}

fn to_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn csr(common_name_value: &str, uris: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(common_name_value);
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI((*uri).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn der(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.contents
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &CertificateAuthority) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(der(ca.certificate_pem())))
            .unwrap();
        Arc::new(roots)
    }

    /// Whether rustls, as our mTLS server does, accepts `certificate_pem` as
    /// a client certificate issued by `ca`.
    fn accepted_as_client(ca: &CertificateAuthority, certificate_pem: &str) -> bool {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        verifier
            .verify_client_cert(
                &CertificateDer::from(der(certificate_pem)),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    /// Whether rustls, as an agent does, accepts `certificate_pem` as the
    /// server's certificate for `name`.
    fn accepted_as_server(ca: &CertificateAuthority, certificate_pem: &str, name: &str) -> bool {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        verifier
            .verify_server_cert(
                &CertificateDer::from(der(certificate_pem)),
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    fn identity_of(certificate_pem: &str) -> Result<(PeerIdentity, String), String> {
        peer_identity(&der(certificate_pem)).map_err(|error| error.to_string())
    }

    #[test]
    fn node_certificate_names_the_node_and_is_accepted_as_a_client_of_the_ca() {
        let ca = CertificateAuthority::create("test").unwrap();
        let issued = ca
            .sign_node_csr(&csr("i-0abc", &[]), "i-0abc", DAY)
            .unwrap();
        assert!(accepted_as_client(&ca, &issued.certificate_pem));
        assert!(!accepted_as_server(
            &ca,
            &issued.certificate_pem,
            "localhost"
        ));
        assert_eq!(
            identity_of(&issued.certificate_pem).unwrap(),
            (PeerIdentity::Node("i-0abc".to_owned()), issued.serial_hex)
        );
    }

    #[test]
    fn an_expired_node_certificate_identifies_nobody() {
        // A resumed TLS session skips the handshake's date check; the
        // identity check does it again.
        let ca = CertificateAuthority::create("test").unwrap();
        let issued = ca
            .sign_node_csr(&csr("i-0abc", &[]), "i-0abc", Duration::ZERO)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1_100));
        let error = identity_of(&issued.certificate_pem).unwrap_err();
        assert!(
            error.contains("not now: renew it or enroll again"),
            "{error}"
        );
    }

    #[test]
    fn names_asked_for_in_the_csr_are_ignored() {
        let ca = CertificateAuthority::create("test").unwrap();
        let greedy = csr("admin", &[ADMIN_URI, "cms://node/someone-else"]);
        let issued = ca.sign_node_csr(&greedy, "web-1", DAY).unwrap();
        let (identity, _) = identity_of(&issued.certificate_pem).unwrap();
        assert_eq!(identity, PeerIdentity::Node("web-1".to_owned()));
        let certificate_der = der(&issued.certificate_pem);
        let (_, certificate) = x509_parser::parse_x509_certificate(&certificate_der).unwrap();
        let common_names: Vec<_> = certificate
            .subject()
            .iter_common_name()
            .map(|name| name.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(common_names, ["web-1"]);
    }

    #[test]
    fn csr_with_a_bad_signature_is_refused() {
        let ca = CertificateAuthority::create("test").unwrap();
        let mut tampered = der(&csr("web-1", &[]));
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(tampered)
        );
        let error = ca.sign_node_csr(&tampered, "web-1", DAY).unwrap_err();
        assert!(
            matches!(
                error,
                PkiError::ReadCsr {
                    source: rcgen::Error::InvalidCertificationRequestSignature
                }
            ),
            "{error:?}"
        );
        let garbage = ca.sign_node_csr("not a csr", "web-1", DAY).unwrap_err();
        assert!(matches!(garbage, PkiError::ReadCsr { .. }), "{garbage:?}");
    }

    #[test]
    fn node_ids_must_be_safe_names() {
        let ca = CertificateAuthority::create("test").unwrap();
        let request = csr("x", &[]);
        for good in [
            "i-0123456789abcdef0",
            "web_01.example.com",
            "7",
            &"a".repeat(128),
        ] {
            assert!(
                ca.sign_node_csr(&request, good, DAY).is_ok(),
                "`{good}` should be accepted"
            );
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "../etc",
            "a b",
            "web=1",
            "é",
            &"a".repeat(129),
        ] {
            let error = ca.sign_node_csr(&request, bad, DAY).unwrap_err();
            assert!(
                matches!(error, PkiError::InvalidNodeId { .. }),
                "`{bad}`: {error}"
            );
        }
    }

    #[test]
    fn node_certificate_starts_a_day_early_for_clock_skew_and_lasts_the_requested_validity() {
        let ca = CertificateAuthority::create("test").unwrap();
        let before = to_i64(unix_now());
        let issued = ca.sign_node_csr(&csr("n", &[]), "n", DAY).unwrap();
        let after = to_i64(unix_now());
        let certificate_der = der(&issued.certificate_pem);
        let (_, certificate) = x509_parser::parse_x509_certificate(&certificate_der).unwrap();
        let not_before = certificate.validity().not_before.timestamp();
        let not_after = certificate.validity().not_after.timestamp();
        let backdate = cms_proto::CERTIFICATE_BACKDATE_SECS as i64;
        assert!((before - backdate..=after - backdate).contains(&not_before));
        assert_eq!(not_after, issued.not_after_unix);
        assert!((before + 86_400..=after + 86_400).contains(&not_after));
    }

    #[test]
    fn no_certificate_outlives_the_ca() {
        let ca = CertificateAuthority::create("test").unwrap();
        let issued = ca
            .sign_node_csr(&csr("n", &[]), "n", CA_VALIDITY * 3)
            .unwrap();
        assert_eq!(issued.not_after_unix, ca.not_after_unix());
        let admin = ca.issue_admin_certificate().unwrap();
        let certificate_der = der(&admin.certificate_pem);
        let (_, certificate) = x509_parser::parse_x509_certificate(&certificate_der).unwrap();
        assert_eq!(
            certificate.validity().not_after.timestamp(),
            ca.not_after_unix()
        );
    }

    #[test]
    fn serials_are_random_and_read_back_as_issued() {
        let ca = CertificateAuthority::create("test").unwrap();
        let request = csr("n", &[]);
        let serials: std::collections::BTreeSet<String> = (0..20)
            .map(|_| {
                let issued = ca.sign_node_csr(&request, "n", DAY).unwrap();
                let (_, serial) = identity_of(&issued.certificate_pem).unwrap();
                assert_eq!(serial, issued.serial_hex);
                assert_eq!(serial.len(), 32);
                serial
            })
            .collect();
        assert_eq!(serials.len(), 20);
    }

    #[test]
    fn admin_certificate_is_identified_as_admin_and_is_a_client_certificate() {
        let ca = CertificateAuthority::create("test").unwrap();
        let admin = ca.issue_admin_certificate().unwrap();
        assert!(KeyPair::from_pem(&admin.private_key_pem).is_ok());
        assert!(accepted_as_client(&ca, &admin.certificate_pem));
        assert!(!accepted_as_server(
            &ca,
            &admin.certificate_pem,
            "localhost"
        ));
        assert_eq!(
            identity_of(&admin.certificate_pem).unwrap().0,
            PeerIdentity::Operator(BOOTSTRAP_OPERATOR.to_owned())
        );
    }

    #[test]
    fn server_certificate_serves_its_names_and_cannot_act_as_a_client() {
        let ca = CertificateAuthority::create("test").unwrap();
        let server = ca
            .issue_server_certificate(&["localhost".to_owned()], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        assert!(accepted_as_server(
            &ca,
            &server.certificate_pem,
            "localhost"
        ));
        assert!(accepted_as_server(
            &ca,
            &server.certificate_pem,
            "127.0.0.1"
        ));
        assert!(!accepted_as_server(
            &ca,
            &server.certificate_pem,
            "cms.example.com"
        ));
        assert!(!accepted_as_client(&ca, &server.certificate_pem));
        let error = identity_of(&server.certificate_pem).unwrap_err();
        assert_eq!(
            error,
            "Failed to identify the peer: the certificate must name exactly one cms:// URI"
        );
        let nameless = ca.issue_server_certificate(&[], &[]).unwrap_err();
        assert_eq!(
            nameless.to_string(),
            "Failed to issue the server certificate: it names no DNS name and no IP address"
        );
    }

    #[test]
    fn ca_reloaded_from_pem_issues_what_the_original_trusts() {
        let original = CertificateAuthority::create("test").unwrap();
        let reloaded =
            CertificateAuthority::from_pem(original.certificate_pem(), &original.private_key_pem())
                .unwrap();
        assert_eq!(reloaded.not_after_unix(), original.not_after_unix());
        let issued = reloaded.sign_node_csr(&csr("n", &[]), "n", DAY).unwrap();
        assert!(accepted_as_client(&original, &issued.certificate_pem));
        let other = CertificateAuthority::create("other").unwrap();
        assert!(!accepted_as_client(&other, &issued.certificate_pem));
    }

    #[test]
    fn ca_refuses_to_load_with_a_key_of_another_ca_or_a_leaf_certificate() {
        let ca = CertificateAuthority::create("test").unwrap();
        let other = CertificateAuthority::create("other").unwrap();
        let mismatch =
            CertificateAuthority::from_pem(ca.certificate_pem(), &other.private_key_pem())
                .unwrap_err();
        assert!(matches!(mismatch, PkiError::CaKeyMismatch), "{mismatch:?}");
        let admin = ca.issue_admin_certificate().unwrap();
        let leaf = CertificateAuthority::from_pem(&admin.certificate_pem, &admin.private_key_pem)
            .unwrap_err();
        assert_eq!(
            leaf.to_string(),
            "Failed to read the CA certificate: it is not a CA certificate"
        );
    }

    #[test]
    fn debug_output_never_shows_private_keys_or_token_secrets() {
        let ca = CertificateAuthority::create("test").unwrap();
        let admin = ca.issue_admin_certificate().unwrap();
        let token = new_token().unwrap();
        let printed = format!("{ca:?} {admin:?} {token:?}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        assert!(!printed.contains(&token.secret), "{printed}");
    }

    #[test]
    fn tokens_are_prefixed_random_secrets_stored_only_as_their_hash() {
        let first = new_token().unwrap();
        let second = new_token().unwrap();
        assert_ne!(first.secret, second.secret);
        let encoded = first.secret.strip_prefix(TOKEN_PREFIX).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(first.id, token_id(&first.secret));
        assert_eq!(first.id.len(), 64);
        assert!(!first.id.contains(encoded));
        // The SHA-256 of "abc", as every implementation computes it.
        assert_eq!(
            token_id("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Parses `scope` and checks `tags` (`k=v,…`) against it: `Ok(())`, or
    /// the message an operator or agent would see.
    #[track_caller]
    fn check(scope: &str, tags: &str) -> Result<(), String> {
        let scope = parse_scope(scope).map_err(|error| error.to_string())?;
        let tags: BTreeMap<String, String> = tags
            .split(',')
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (tag, value) = entry.split_once('=').unwrap();
                (tag.to_owned(), value.to_owned())
            })
            .collect();
        check_scope(&scope, &tags).map_err(|violation| violation.to_string())
    }

    #[test]
    fn scope_allows_tags_whose_values_match_its_globs() {
        assert_eq!(check("env=staging,role=*", "env=staging,role=api"), Ok(()));
        assert_eq!(
            check(" env = staging , role = web-? ", "env=staging,role=web-1"),
            Ok(())
        );
        assert_eq!(check("role=*", "role="), Ok(()));
    }

    #[test]
    fn scope_refuses_values_outside_its_globs() {
        assert_eq!(
            check("env=staging,role=*", "env=prod,role=api"),
            Err("tag `env=prod` is outside the token's scope, which allows env=staging".to_owned())
        );
        assert_eq!(
            check("role=web-?", "role=web-10"),
            Err(
                "tag `role=web-10` is outside the token's scope, which allows role=web-?"
                    .to_owned()
            )
        );
    }

    #[test]
    fn scope_refuses_tags_it_does_not_name() {
        assert_eq!(
            check("env=staging,role=*", "env=staging,role=api,team=payments"),
            Err(
                "tag `team` is not in the token's scope, which allows only env=staging,role=*"
                    .to_owned()
            )
        );
    }

    #[test]
    fn scope_requires_every_tag_it_names() {
        assert_eq!(
            check("env=staging,role=*", "role=api"),
            Err(
                "tag `env` is required by the token's scope (env=staging) but was not sent"
                    .to_owned()
            )
        );
        assert_eq!(
            check("env=staging", ""),
            Err(
                "tag `env` is required by the token's scope (env=staging) but was not sent"
                    .to_owned()
            )
        );
    }

    #[test]
    fn malformed_scopes_are_refused_with_the_reason() {
        let reason = |scope: &str| check(scope, "").unwrap_err();
        assert_eq!(
            reason(""),
            "Failed to parse the token scope ``: it is empty; name the tags the token may \
             enroll, such as env=staging,role=*"
        );
        assert_eq!(
            reason("env"),
            "Failed to parse the token scope `env`: `env` is not of the form tag=value"
        );
        assert_eq!(
            reason("env=a,,role=b"),
            "Failed to parse the token scope `env=a,,role=b`: `` is not of the form tag=value"
        );
        assert_eq!(
            reason("=a"),
            "Failed to parse the token scope `=a`: `=a` names no tag"
        );
        assert_eq!(
            reason("r*=a"),
            "Failed to parse the token scope `r*=a`: tag name `r*` contains a glob; only \
             values may be globs"
        );
        assert_eq!(
            reason("env="),
            "Failed to parse the token scope `env=`: tag `env` has an empty value; use \
             `env=*` to allow any value"
        );
        assert_eq!(
            reason("env=a,env=b"),
            "Failed to parse the token scope `env=a,env=b`: tag `env` is named twice"
        );
    }
}
