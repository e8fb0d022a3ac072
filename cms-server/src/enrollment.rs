//! Enrollment: a node trades a token and a CSR for a certificate bound to
//! its name and tags; it renews that certificate before it ends; the
//! operator makes the tokens.
//!
//! A name is taken while its node is live: a new instance may take it only
//! once the old one is gone (unseen for `gone_after`) or revoked, while the
//! node itself (presenting its current certificate) may enroll again at any
//! time and keeps its history. Tokens are checked against the tags asked for
//! before they are used up, and used atomically (see `Store::consume_token`).
//!
//! Everything here blocks (store writes, signatures): the gRPC edge runs it
//! through `Blocking`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::fleet::Fleet;
use crate::pki::{CertificateAuthority, IssuedCertificate, PkiError, ScopeViolation};
use crate::store::{
    CertificateRecord, NodeRecord, NodeStatus, SharedStore, StoreError, TokenRecord,
};

/// What enrollment needs: narrow handles and the two durations it applies.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub store: SharedStore,
    pub ca: Arc<CertificateAuthority>,
    /// sha256 (hex) of the CA certificate (DER): part of every token, so an
    /// agent can check the server before trusting it.
    pub ca_fingerprint: String,
    pub fleet: Arc<Fleet>,
    pub clock: SharedClock,
    /// How long a node certificate is valid.
    pub certificate_validity: Duration,
    /// A node unseen this long is gone, and its name free.
    pub gone_after: Duration,
}

/// An enrollment as asked.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub node_name: String,
    /// The token as the operator handed it out: the secret, a dot, the CA's
    /// fingerprint.
    pub token: String,
    pub csr_pem: String,
    pub tags: BTreeMap<String, String>,
    /// The caller presented a valid certificate of this very node.
    pub presented_own_certificate: bool,
}

/// A certificate issued to a node.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub node_id: String,
    pub certificate_pem: String,
    pub ca_certificate_pem: String,
    pub bound_tags: BTreeMap<String, String>,
    pub not_after_unix: i64,
}

/// A token made for the operator.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The secret and the CA's fingerprint, as the agent takes it.
    pub token: String,
    pub expires_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    InvalidNodeName(#[source] PkiError),
    #[error("Failed to enroll: the token is unknown")]
    TokenUnknown,
    #[error("Failed to enroll: {0}")]
    OutOfScope(#[source] ScopeViolation),
    #[error(
        "Failed to enroll: node {node_id} is live (last seen {seen_seconds_ago} s ago); its name becomes free when it has not been seen for {gone_after_seconds} s, or when an operator runs `cms-server node revoke {node_id}`"
    )]
    NameTaken {
        node_id: String,
        seen_seconds_ago: u64,
        gone_after_seconds: u64,
    },
    /// The token expired or was used up meanwhile.
    #[error("{0}")]
    TokenRefused(#[source] StoreError),
    #[error("{0}")]
    InvalidCsr(#[source] PkiError),
    #[error("node {node_id} is not enrolled")]
    NotEnrolled { node_id: String },
    #[error("a token needs a scope, e.g. env=staging,role=*")]
    NoScope,
    #[error("{0}")]
    Random(#[source] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Enrollment {
    /// Enrolls a node: checks the token's scope, that the name is free (or
    /// the caller's own), uses the token, and records the certificate and
    /// the node together.
    pub fn enroll(&self, request: EnrollRequest) -> Result<Enrolled, EnrollError> {
        let node_id = request.node_name;
        crate::pki::check_node_id(&node_id).map_err(EnrollError::InvalidNodeName)?;
        let secret = request.token.split('.').next().unwrap_or_default();
        let tags = request.tags;
        let token_id = TokenRecord::id_for_secret(secret);
        // Check the scope before using the token up.
        let token = self
            .store
            .tokens()?
            .into_iter()
            .find(|t| t.id == token_id)
            .ok_or(EnrollError::TokenUnknown)?;
        crate::pki::check_scope(&token.scope, &tags).map_err(EnrollError::OutOfScope)?;
        let now = self.clock.now_unix_ms();
        let previous = self.store.node(&node_id)?;
        let revoked = match &previous {
            Some(node) => self.store.is_revoked(&node.certificate_serial)?,
            None => false,
        };
        let last_seen = previous
            .as_ref()
            .map_or(0, |n| self.fleet.last_seen(&n.id, n.last_seen_unix_ms, now));
        if !crate::fleet::name_is_free(
            previous.as_ref(),
            last_seen,
            now,
            self.gone_after,
            revoked,
            request.presented_own_certificate,
        ) {
            return Err(EnrollError::NameTaken {
                node_id,
                seen_seconds_ago: now.saturating_sub(last_seen) / 1000,
                gone_after_seconds: self.gone_after.as_secs(),
            });
        }
        self.store
            .consume_token(&token_id, now / 1000)
            .map_err(|e| match e {
                StoreError::TokenUnknown
                | StoreError::TokenExpired { .. }
                | StoreError::TokenUsedUp => EnrollError::TokenRefused(e),
                other => EnrollError::Store(other),
            })?;
        // The same instance enrolling again keeps its history; a new
        // instance taking a free name starts clean, and the old one's
        // certificates are refused from now on.
        let same_instance = request.presented_own_certificate;
        if previous.is_some() && !same_instance {
            self.store.revoke_node(&node_id)?;
            self.store.remove_node(&node_id)?;
        }
        let issued = self.sign(&request.csr_pem, &node_id)?;
        let certificate = certificate_record(&issued, &node_id);
        let kept = previous.filter(|_| same_instance);
        self.store.record_enrollment(
            &certificate,
            &NodeRecord {
                id: node_id.clone(),
                tags: tags.clone(),
                facts: kept
                    .as_ref()
                    .map_or(serde_json::Value::Null, |n| n.facts.clone()),
                certificate_serial: issued.serial_hex.clone(),
                first_seen_unix_ms: kept.as_ref().map_or(now, |n| n.first_seen_unix_ms),
                last_seen_unix_ms: now,
                last_run: kept.and_then(|n| n.last_run),
                status: NodeStatus::Active,
                gone_since_unix_ms: None,
            },
        )?;
        Ok(Enrolled {
            node_id,
            certificate_pem: issued.certificate_pem,
            ca_certificate_pem: self.ca.certificate_pem().to_string(),
            bound_tags: tags,
            not_after_unix: issued.not_after_unix,
        })
    }

    /// A new certificate for an enrolled node, with the tags it has; the
    /// node counts as seen and active.
    pub fn renew(&self, node_id: &str, csr_pem: &str) -> Result<Enrolled, EnrollError> {
        let node = self
            .store
            .node(node_id)?
            .ok_or_else(|| EnrollError::NotEnrolled {
                node_id: node_id.to_string(),
            })?;
        let issued = self.sign(csr_pem, node_id)?;
        // Recorded first, so that it can be revoked.
        self.store
            .put_certificate(&certificate_record(&issued, node_id))?;
        let now = self.clock.now_unix_ms();
        self.store.update_node(node_id, |n| {
            n.certificate_serial = issued.serial_hex.clone();
            n.last_seen_unix_ms = n.last_seen_unix_ms.max(now);
            n.status = NodeStatus::Active;
            n.gone_since_unix_ms = None;
        })?;
        self.fleet.counters.renewals.inc();
        Ok(Enrolled {
            node_id: node_id.to_string(),
            certificate_pem: issued.certificate_pem,
            ca_certificate_pem: self.ca.certificate_pem().to_string(),
            bound_tags: node.tags,
            not_after_unix: issued.not_after_unix,
        })
    }

    /// Makes an enrollment token for nodes with tags in `scope`, valid for
    /// `ttl` (a day when zero) and `uses` times (unlimited when zero).
    pub fn create_token(
        &self,
        scope: BTreeMap<String, String>,
        ttl: Duration,
        uses: u32,
    ) -> Result<NewToken, EnrollError> {
        if scope.is_empty() {
            return Err(EnrollError::NoScope);
        }
        let token = crate::pki::new_token().map_err(EnrollError::Random)?;
        let now = self.clock.now_unix_ms() / 1000;
        let ttl = if ttl.is_zero() {
            24 * 3600
        } else {
            ttl.as_secs()
        };
        self.store.put_token(&TokenRecord {
            id: token.id.clone(),
            scope,
            expires_unix: now + ttl,
            uses_left: (uses > 0).then_some(uses),
            created_unix: now,
        })?;
        // The secret, then the CA's fingerprint: the agent checks the
        // server it enrolls with against it before trusting it.
        Ok(NewToken {
            token: format!("{}.{}", token.secret, self.ca_fingerprint),
            expires_unix: now + ttl,
        })
    }

    fn sign(&self, csr_pem: &str, node_id: &str) -> Result<IssuedCertificate, EnrollError> {
        self.ca
            .sign_node_csr(csr_pem, node_id, self.certificate_validity)
            .map_err(EnrollError::InvalidCsr)
    }
}

fn certificate_record(issued: &IssuedCertificate, node_id: &str) -> CertificateRecord {
    CertificateRecord {
        serial: issued.serial_hex.clone(),
        node_id: node_id.to_string(),
        not_after_unix: issued.not_after_unix.max(0) as u64,
        revoked: false,
    }
}
