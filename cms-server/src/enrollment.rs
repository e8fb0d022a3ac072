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

use crate::aws::{AttestationError, Attestor};
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
    /// Attested enrollment on AWS, when the server is configured for it.
    pub aws: Option<Arc<Attestor>>,
    /// Which environment a node's tags bind it to.
    pub environments: crate::environments::EnvironmentsConfig,
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
    /// A signed identity document (attested enrollment): then the token,
    /// the name and the tags above are not used.
    pub identity: Option<IdentityProof>,
}

/// An identity document as the agent sent it.
#[derive(Debug, Clone)]
pub struct IdentityProof {
    pub kind: String,
    pub document: Vec<u8>,
    pub signature: Vec<u8>,
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

/// How long a token lives when the operator does not say.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest a token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A token made for the operator.
#[derive(Clone)]
pub struct NewToken {
    /// The secret and the CA's fingerprint, as the agent takes it.
    pub token: String,
    pub expires_unix: u64,
    /// The id the store keeps (sha256 of the secret), for the audit log.
    pub id: String,
    pub scope: BTreeMap<String, String>,
    pub uses: u32,
    pub ttl_seconds: u64,
}

impl std::fmt::Debug for NewToken {
    // Never prints the secret.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NewToken")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("uses", &self.uses)
            .field("expires_unix", &self.expires_unix)
            .finish_non_exhaustive()
    }
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
    #[error(
        "Failed to enroll: node {node_id} is gone, but its tags ({old_tags}) are outside this token's scope: {violation}; only a token whose scope covers them may take its name"
    )]
    NameOutOfScope {
        node_id: String,
        old_tags: String,
        violation: ScopeViolation,
    },
    #[error("Failed to enroll: another enrollment took the name {node_id} meanwhile")]
    NameClaimed { node_id: String },
    /// The token expired or was used up meanwhile.
    #[error("{0}")]
    TokenRefused(#[source] StoreError),
    #[error("{0}")]
    InvalidCsr(#[source] PkiError),
    #[error(
        "Failed to enroll: this server does not accept identity documents; enroll with a token, or configure [aws] in the server's enrollment file (--enrollment-config)"
    )]
    AttestationOff,
    #[error("Failed to enroll by attestation: {0}")]
    Attestation(#[source] AttestationError),
    #[error("node {node_id} is not enrolled")]
    NotEnrolled { node_id: String },
    #[error("a token needs a scope, e.g. env=staging,role=*")]
    NoScope,
    #[error(
        "Failed to create the token: a lifetime of {ttl_seconds} s is longer than the longest a token may live, {} hours; make a new token when it is needed",
        MAX_TOKEN_TTL.as_secs() / 3600
    )]
    TokenTtlTooLong { ttl_seconds: u64 },
    #[error("{0}")]
    Random(#[source] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Enrollment {
    /// Enrolls a node. With an identity document (attested enrollment on
    /// AWS) the node is named by its verified instance id and bound to the
    /// tags EC2 holds for it; the tags and name it sent are ignored and no
    /// token is needed. Otherwise the token's scope is checked against the
    /// tags asked for. Either way the name must be free (or the caller's
    /// own), a gone node's name is taken only by a token whose scope covers
    /// that node's tags (or by the same attested instance), the token is
    /// used up, and the certificate and the node are recorded with a
    /// compare-and-swap on the name, so two enrollments of one name never
    /// both get a certificate.
    pub fn enroll(&self, request: EnrollRequest) -> Result<Enrolled, EnrollError> {
        let now = self.clock.now_unix_ms();
        let (node_id, tags, attested, token) = match &request.identity {
            Some(proof) => {
                let attestor = self.aws.as_ref().ok_or(EnrollError::AttestationOff)?;
                let verified = attestor
                    .attest(&proof.kind, &proof.document, &proof.signature)
                    .map_err(EnrollError::Attestation)?;
                crate::pki::check_node_id(&verified.instance_id)
                    .map_err(EnrollError::InvalidNodeName)?;
                (verified.instance_id, verified.tags, verified.values, None)
            }
            None => {
                let node_id = request.node_name.clone();
                crate::pki::check_node_id(&node_id).map_err(EnrollError::InvalidNodeName)?;
                // Checked before the token is used up.
                let token = self.check_token(&request.token, &request.tags, now)?;
                (node_id, request.tags.clone(), BTreeMap::new(), Some(token))
            }
        };
        // The caller's certificate counts only for the name it names: an
        // enrolled node replaying another instance's document is a stranger
        // to that instance's name.
        let own_certificate = request.presented_own_certificate && request.node_name == node_id;
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
            own_certificate,
        ) {
            return Err(EnrollError::NameTaken {
                node_id,
                seen_seconds_ago: now.saturating_sub(last_seen) / 1000,
                gone_after_seconds: self.gone_after.as_secs(),
            });
        }
        // A free name that still has a record (gone or revoked) goes to a
        // token that could have enrolled that node, or to the instance the
        // name is (an attested enrollment is named by its verified id).
        if let (Some(old), Some(token)) = (&previous, &token)
            && !own_certificate
        {
            crate::pki::check_scope(&token.scope, &old.tags).map_err(|violation| {
                EnrollError::NameOutOfScope {
                    node_id: node_id.clone(),
                    old_tags: old
                        .tags
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    violation,
                }
            })?;
        }
        // The CSR is signed before the token is used, so that a request
        // that cannot be signed costs no use of a single-use token; the
        // certificate counts only once it is recorded below.
        let issued = self.sign(&request.csr_pem, &node_id)?;
        if let Some(token) = &token {
            self.use_token(&token.id, now)?;
        }
        // The node enrolling again with its certificate keeps its history;
        // anyone else taking a free name starts clean (an attested instance
        // too: its document may be a copy), and the old certificates are
        // refused from now on.
        let same_instance = own_certificate;
        let certificate = certificate_record(&issued, &node_id);
        let expected_serial = previous.as_ref().map(|n| n.certificate_serial.clone());
        let clear_history = previous.is_some() && !same_instance;
        let kept = previous.filter(|_| same_instance);
        self.store
            .claim_name(
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
                    attested,
                    environment: self.environments.bind(&tags),
                },
                expected_serial.as_deref(),
                clear_history,
            )
            .map_err(|e| match e {
                StoreError::NameClaimed { .. } => EnrollError::NameClaimed {
                    node_id: node_id.clone(),
                },
                other => EnrollError::Store(other),
            })?;
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
    /// `ttl` ([`DEFAULT_TOKEN_TTL`] when zero, at most [`MAX_TOKEN_TTL`])
    /// and `uses` enrollments (one when zero). There are no unlimited
    /// tokens: a token is a bearer secret, and each use is one more node.
    pub fn create_token(
        &self,
        scope: BTreeMap<String, String>,
        ttl: Duration,
        uses: u32,
    ) -> Result<NewToken, EnrollError> {
        if scope.is_empty() {
            return Err(EnrollError::NoScope);
        }
        let ttl = if ttl.is_zero() {
            DEFAULT_TOKEN_TTL
        } else {
            ttl
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(EnrollError::TokenTtlTooLong {
                ttl_seconds: ttl.as_secs(),
            });
        }
        let uses = uses.max(1);
        let token = crate::pki::new_token().map_err(EnrollError::Random)?;
        let now = self.clock.now_unix_ms() / 1000;
        self.store.put_token(&TokenRecord {
            id: token.id.clone(),
            scope: scope.clone(),
            expires_unix: now + ttl.as_secs(),
            uses_left: Some(uses),
            created_unix: now,
        })?;
        // The secret, then the CA's fingerprint: the agent checks the
        // server it enrolls with against it before trusting it.
        Ok(NewToken {
            token: format!("{}.{}", token.secret, self.ca_fingerprint),
            expires_unix: now + ttl.as_secs(),
            id: token.id,
            scope,
            uses,
            ttl_seconds: ttl.as_secs(),
        })
    }

    /// The token of an enrollment (the secret, a dot, the CA's
    /// fingerprint), checked without using it: known, not expired, not used
    /// up, and its scope allows `tags`. Returns its id.
    fn check_token(
        &self,
        token: &str,
        tags: &BTreeMap<String, String>,
        now_unix_ms: u64,
    ) -> Result<TokenRecord, EnrollError> {
        let secret = token.split('.').next().unwrap_or_default();
        let token_id = crate::pki::token_id(secret);
        let token = self
            .store
            .token(&token_id)?
            .ok_or(EnrollError::TokenUnknown)?;
        if now_unix_ms / 1000 >= token.expires_unix {
            return Err(EnrollError::TokenRefused(StoreError::TokenExpired {
                expires_unix: token.expires_unix,
            }));
        }
        if token.uses_left == Some(0) {
            return Err(EnrollError::TokenRefused(StoreError::TokenUsedUp));
        }
        crate::pki::check_scope(&token.scope, tags).map_err(EnrollError::OutOfScope)?;
        Ok(token)
    }

    /// Uses the token once, atomically (`Store::consume_token`): of two
    /// enrollments racing for its last use, one gets `TokenUsedUp`.
    fn use_token(&self, token_id: &str, now_unix_ms: u64) -> Result<(), EnrollError> {
        self.store
            .consume_token(token_id, now_unix_ms / 1000)
            .map(|_| ())
            .map_err(|e| match e {
                StoreError::TokenUnknown
                | StoreError::TokenExpired { .. }
                | StoreError::TokenUsedUp => EnrollError::TokenRefused(e),
                other => EnrollError::Store(other),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::MemoryStore;
    use rustls::pki_types::pem::PemObject as _;

    const HOUR_MS: u64 = 3_600_000;

    /// An enrollment domain over a store in memory, at a time the test sets.
    fn enrollment(clock: &Arc<ManualClock>) -> Enrollment {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Enrollment {
            store: Arc::new(MemoryStore::default()),
            ca: Arc::new(CertificateAuthority::create("test").unwrap()),
            ca_fingerprint: "f".repeat(64),
            fleet: Arc::new(Fleet::default()),
            clock: clock.clone(),
            certificate_validity: Duration::from_secs(3600),
            gone_after: Duration::from_secs(2 * 3600),
            aws: None,
            environments: crate::environments::EnvironmentsConfig::single("main"),
        }
    }

    fn csr(node_id: &str) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_id);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn request(token: &str, node: &str, own: bool) -> EnrollRequest {
        EnrollRequest {
            node_name: node.into(),
            token: token.into(),
            csr_pem: csr(node),
            tags: tags(&[("role", "web")]),
            presented_own_certificate: own,
            identity: None,
        }
    }

    #[test]
    fn a_token_enrolls_within_its_scope_and_its_uses() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let enrollment = enrollment(&clock);
        let token = enrollment
            .create_token(tags(&[("role", "w*")]), Duration::ZERO, 1)
            .unwrap()
            .token;
        assert!(token.ends_with(&enrollment.ca_fingerprint));
        let mut outside = request(&token, "db-1", false);
        outside.tags = tags(&[("role", "db")]);
        assert!(matches!(
            enrollment.enroll(outside),
            Err(EnrollError::OutOfScope(_))
        ));
        let enrolled = enrollment.enroll(request(&token, "web-1", false)).unwrap();
        assert_eq!(enrolled.bound_tags, tags(&[("role", "web")]));
        assert!(matches!(
            enrollment.enroll(request(&token, "web-2", false)),
            Err(EnrollError::TokenRefused(StoreError::TokenUsedUp))
        ));
        assert!(matches!(
            enrollment.enroll(request("nope.x", "web-3", false)),
            Err(EnrollError::TokenUnknown)
        ));
        assert!(matches!(
            enrollment.create_token(BTreeMap::new(), Duration::ZERO, 0),
            Err(EnrollError::NoScope)
        ));
    }

    #[test]
    fn a_node_is_bound_to_the_environment_its_scoped_tag_names_else_the_default() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let environments = crate::environments::EnvironmentsConfig::new(
            vec![
                crate::environments::EnvironmentSpec::parse("prod=main").unwrap(),
                crate::environments::EnvironmentSpec::parse("staging=staging").unwrap(),
            ],
            None,
            "env".into(),
        )
        .unwrap();
        let enrollment = Enrollment {
            environments,
            ..enrollment(&clock)
        };
        let token = enrollment
            .create_token(tags(&[("role", "web"), ("env", "*")]), Duration::ZERO, 3)
            .unwrap()
            .token;
        for (node, env, bound) in [
            ("web-1", "staging", "staging"),
            ("web-2", "prod", "prod"),
            ("web-3", "qa", "prod"),
        ] {
            let mut asked = request(&token, node, false);
            asked.tags = tags(&[("role", "web"), ("env", env)]);
            enrollment.enroll(asked).unwrap();
            let record = enrollment.store.node(node).unwrap().unwrap();
            assert_eq!(record.environment, bound, "{node} tagged env={env}");
        }
    }

    #[test]
    fn a_live_name_is_taken_by_a_new_instance_only_once_it_is_gone() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let enrollment = enrollment(&clock);
        let token = enrollment
            .create_token(tags(&[("role", "*")]), MAX_TOKEN_TTL, 10)
            .unwrap()
            .token;
        enrollment.enroll(request(&token, "web-1", false)).unwrap();
        clock.set(1_001 * HOUR_MS);
        assert!(matches!(
            enrollment.enroll(request(&token, "web-1", false)),
            Err(EnrollError::NameTaken {
                seen_seconds_ago: 3600,
                ..
            })
        ));
        // The node itself may enroll again, and keeps its first-seen time.
        enrollment.enroll(request(&token, "web-1", true)).unwrap();
        let node = enrollment.store.node("web-1").unwrap().unwrap();
        assert_eq!(node.first_seen_unix_ms, 1_000 * HOUR_MS);
        // Unseen for the gone-after time: a new instance takes the name and
        // starts clean.
        clock.set(1_004 * HOUR_MS);
        enrollment.enroll(request(&token, "web-1", false)).unwrap();
        let node = enrollment.store.node("web-1").unwrap().unwrap();
        assert_eq!(node.first_seen_unix_ms, 1_004 * HOUR_MS);
    }

    #[test]
    fn a_dev_scoped_token_cannot_take_the_name_of_a_gone_prod_node() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let enrollment = enrollment(&clock);
        // Two uses: the real node's enrollment and its replacement's.
        let prod = enrollment
            .create_token(tags(&[("env", "prod")]), Duration::from_secs(24 * 3600), 2)
            .unwrap()
            .token;
        let dev = enrollment
            .create_token(tags(&[("env", "dev")]), Duration::from_secs(24 * 3600), 1)
            .unwrap()
            .token;
        let mut real = request(&prod, "db-1", false);
        real.tags = tags(&[("env", "prod")]);
        let real_certificate = enrollment.enroll(real).unwrap().certificate_pem;
        // The prod node falls silent and is gone: its name is free, but
        // only for a token whose scope covers its tags.
        clock.set(1_004 * HOUR_MS);
        let mut thief = request(&dev, "db-1", false);
        thief.tags = tags(&[("env", "dev")]);
        let refused = enrollment.enroll(thief);
        assert!(
            matches!(refused, Err(EnrollError::NameOutOfScope { .. })),
            "a dev token took a prod node's name: {refused:?}"
        );
        let node = enrollment.store.node("db-1").unwrap().unwrap();
        assert_eq!(node.tags, tags(&[("env", "prod")]));
        let serial = crate::pki::peer_identity(
            &rustls::pki_types::CertificateDer::from_pem_slice(real_certificate.as_bytes())
                .unwrap(),
        )
        .unwrap()
        .1;
        assert!(!enrollment.store.is_revoked(&serial).unwrap());
        // A prod token may take it.
        let mut replacement = request(&prod, "db-1", false);
        replacement.tags = tags(&[("env", "prod")]);
        enrollment.enroll(replacement).unwrap();
        assert!(enrollment.store.is_revoked(&serial).unwrap());
    }

    /// A store whose `node` reads wait for each other, so that two
    /// enrollments both see the name free before either writes: the
    /// interleaving a race would need, made certain.
    #[derive(Debug)]
    struct RacingReads {
        inner: MemoryStore,
        barrier: std::sync::Barrier,
        armed: std::sync::atomic::AtomicBool,
    }

    impl crate::store::Store for RacingReads {
        fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
            self.inner.put_node(node)
        }
        fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
            let read = self.inner.node(id);
            if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
                self.barrier.wait();
            }
            read
        }
        fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
            self.inner.nodes()
        }
        fn update_node_with(
            &self,
            id: &str,
            change: &mut dyn FnMut(&mut NodeRecord),
        ) -> Result<Option<NodeRecord>, StoreError> {
            self.inner.update_node_with(id, change)
        }
        fn record_enrollment(
            &self,
            certificate: &CertificateRecord,
            node: &NodeRecord,
        ) -> Result<(), StoreError> {
            self.inner.record_enrollment(certificate, node)
        }
        fn claim_name(
            &self,
            certificate: &CertificateRecord,
            node: &NodeRecord,
            expected_serial: Option<&str>,
            clear_history: bool,
        ) -> Result<(), StoreError> {
            self.inner
                .claim_name(certificate, node, expected_serial, clear_history)
        }
        fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
            self.inner.token(id)
        }
        fn operator(&self, name: &str) -> Result<Option<crate::store::OperatorRecord>, StoreError> {
            self.inner.operator(name)
        }
        fn operators(&self) -> Result<Vec<crate::store::OperatorRecord>, StoreError> {
            self.inner.operators()
        }
        fn swap_operator(
            &self,
            expected: Option<&crate::store::OperatorRecord>,
            new: &crate::store::OperatorRecord,
        ) -> Result<bool, StoreError> {
            self.inner.swap_operator(expected, new)
        }
        fn append_audit(&self, record: &crate::store::AuditRecord) -> Result<(), StoreError> {
            self.inner.append_audit(record)
        }
        fn audit(&self, limit: usize) -> Result<Vec<crate::store::AuditRecord>, StoreError> {
            self.inner.audit(limit)
        }
        fn touch_nodes_with_facts(
            &self,
            seen: &[(String, u64, Option<serde_json::Value>)],
        ) -> Result<usize, StoreError> {
            self.inner.touch_nodes_with_facts(seen)
        }
        fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
            self.inner.remove_node(id)
        }
        fn put_report(
            &self,
            report: &crate::store::StoredReport,
        ) -> Result<crate::store::ReportWrite, StoreError> {
            self.inner.put_report(report)
        }
        fn record_run(
            &self,
            report: &crate::store::StoredReport,
            summary: &crate::store::RunSummary,
        ) -> Result<crate::store::ReportWrite, StoreError> {
            self.inner.record_run(report, summary)
        }
        fn report(
            &self,
            node_id: &str,
            run_id: &str,
        ) -> Result<Option<crate::store::StoredReport>, StoreError> {
            self.inner.report(node_id, run_id)
        }
        fn reports(
            &self,
            node_id: &str,
            limit: usize,
        ) -> Result<Vec<crate::store::StoredReport>, StoreError> {
            self.inner.reports(node_id, limit)
        }
        fn prune_reports(&self, older_than_unix_ms: u64) -> Result<usize, StoreError> {
            self.inner.prune_reports(older_than_unix_ms)
        }
        fn put_revision(&self, revision: &crate::store::RevisionRecord) -> Result<(), StoreError> {
            self.inner.put_revision(revision)
        }
        fn revision(
            &self,
            commit: &str,
        ) -> Result<Option<crate::store::RevisionRecord>, StoreError> {
            self.inner.revision(commit)
        }
        fn revisions(&self) -> Result<Vec<crate::store::RevisionRecord>, StoreError> {
            self.inner.revisions()
        }
        fn set_current_revision(&self, commit: &str) -> Result<(), StoreError> {
            self.inner.set_current_revision(commit)
        }
        fn current_revision(&self) -> Result<Option<String>, StoreError> {
            self.inner.current_revision()
        }
        fn put_ca(&self, ca: &crate::store::CaRecord) -> Result<(), StoreError> {
            self.inner.put_ca(ca)
        }
        fn ca(&self) -> Result<Option<crate::store::CaRecord>, StoreError> {
            self.inner.ca()
        }
        fn put_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
            self.inner.put_certificate(certificate)
        }
        fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
            self.inner.certificate(serial)
        }
        fn revoke_node(&self, node_id: &str) -> Result<Vec<String>, StoreError> {
            self.inner.revoke_node(node_id)
        }
        fn prune_certificates(&self, before_unix: u64) -> Result<usize, StoreError> {
            self.inner.prune_certificates(before_unix)
        }
        fn put_trigger(&self, trigger: &crate::store::TriggerRecord) -> Result<(), StoreError> {
            self.inner.put_trigger(trigger)
        }
        fn trigger(&self, id: &str) -> Result<Option<crate::store::TriggerRecord>, StoreError> {
            self.inner.trigger(id)
        }
        fn triggers(&self) -> Result<Vec<crate::store::TriggerRecord>, StoreError> {
            self.inner.triggers()
        }
        fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
            self.inner.put_token(token)
        }
        fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
            self.inner.tokens()
        }
        fn consume_token(&self, id: &str, now_unix: u64) -> Result<TokenRecord, StoreError> {
            self.inner.consume_token(id, now_unix)
        }
        fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
            self.inner.remove_token(id)
        }
        fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
            self.inner.put_setting(name, value)
        }
        fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get_setting(name)
        }
        fn open_session(
            &self,
            hash: &str,
            token_hash: &str,
            expires_unix_ms: u64,
            now_unix_ms: u64,
        ) -> Result<(), StoreError> {
            self.inner
                .open_session(hash, token_hash, expires_unix_ms, now_unix_ms)
        }
        fn session_is_valid(&self, hash: &str, now_unix_ms: u64) -> Result<bool, StoreError> {
            self.inner.session_is_valid(hash, now_unix_ms)
        }
        fn close_session(&self, hash: &str) -> Result<bool, StoreError> {
            self.inner.close_session(hash)
        }
        fn add_dashboard_token(
            &self,
            token: &crate::store::DashboardTokenRecord,
        ) -> Result<bool, StoreError> {
            self.inner.add_dashboard_token(token)
        }
        fn dashboard_token_is_valid(&self, hash: &str) -> Result<bool, StoreError> {
            self.inner.dashboard_token_is_valid(hash)
        }
        fn dashboard_tokens(&self) -> Result<Vec<crate::store::DashboardTokenRecord>, StoreError> {
            self.inner.dashboard_tokens()
        }
        fn revoke_dashboard_token(
            &self,
            hash: &str,
            revoked_unix_ms: u64,
            revoked_by: &str,
        ) -> Result<crate::store::DashboardTokenRevocation, StoreError> {
            self.inner
                .revoke_dashboard_token(hash, revoked_unix_ms, revoked_by)
        }
        fn settings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            self.inner.settings()
        }
        fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
            self.inner.certificates()
        }
        fn all_reports(
            &self,
            after: Option<(&str, &str)>,
            limit: usize,
        ) -> Result<Vec<crate::store::StoredReport>, StoreError> {
            self.inner.all_reports(after, limit)
        }
    }

    #[test]
    fn two_simultaneous_enrollments_of_one_free_name_give_one_certificate() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let store = Arc::new(RacingReads {
            inner: MemoryStore::default(),
            barrier: std::sync::Barrier::new(2),
            armed: std::sync::atomic::AtomicBool::new(false),
        });
        let enrollment = Enrollment {
            store: store.clone(),
            ..enrollment(&clock)
        };
        // Uses enough for both: the race is for the name, not the token.
        let token = enrollment
            .create_token(tags(&[("role", "*")]), Duration::ZERO, 2)
            .unwrap()
            .token;
        store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let outcomes: Vec<Result<Enrolled, EnrollError>> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let enrollment = enrollment.clone();
                    let request = request(&token, "web-1", false);
                    scope.spawn(move || enrollment.enroll(request))
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let won: Vec<&Enrolled> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(
            won.len(),
            1,
            "both enrollments got a certificate: {outcomes:?}"
        );
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(EnrollError::NameClaimed { .. }))),
            "{outcomes:?}"
        );
        // The winner's certificate is the one the store holds, unrevoked.
        store
            .armed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let node = enrollment.store.node("web-1").unwrap().unwrap();
        let serial = crate::pki::peer_identity(
            &rustls::pki_types::CertificateDer::from_pem_slice(won[0].certificate_pem.as_bytes())
                .unwrap(),
        )
        .unwrap()
        .1;
        assert_eq!(node.certificate_serial, serial);
        assert!(!enrollment.store.is_revoked(&serial).unwrap());
    }

    #[test]
    fn renewing_needs_an_enrolled_node_and_counts_the_renewal() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let enrollment = enrollment(&clock);
        assert!(matches!(
            enrollment.renew("ghost", &csr("ghost")),
            Err(EnrollError::NotEnrolled { .. })
        ));
        let token = enrollment
            .create_token(tags(&[("role", "*")]), Duration::ZERO, 0)
            .unwrap()
            .token;
        let first = enrollment.enroll(request(&token, "web-1", false)).unwrap();
        let renewed = enrollment.renew("web-1", &csr("web-1")).unwrap();
        assert_ne!(renewed.certificate_pem, first.certificate_pem);
        assert_eq!(enrollment.fleet.counters.renewals.get(), 1);
        let node = enrollment.store.node("web-1").unwrap().unwrap();
        let (_, serial) = crate::pki::peer_identity(
            &rustls::pki_types::CertificateDer::from_pem_slice(renewed.certificate_pem.as_bytes())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(node.certificate_serial, serial);
    }

    #[test]
    fn a_token_is_single_use_for_an_hour_unless_told_and_never_longer_than_a_day() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let enrollment = enrollment(&clock);
        let token = enrollment
            .create_token(tags(&[("role", "web")]), Duration::ZERO, 0)
            .unwrap();
        assert_eq!((token.uses, token.ttl_seconds), (1, 3600));
        let stored = enrollment.store.token(&token.id).unwrap().unwrap();
        assert_eq!(stored.uses_left, Some(1));
        assert_eq!(stored.expires_unix, 1_000 * 3600 + 3600);
        assert!(!format!("{token:?}").contains(&token.token));
        let month = enrollment
            .create_token(
                tags(&[("role", "web")]),
                Duration::from_secs(30 * 24 * 3600),
                0,
            )
            .unwrap_err();
        assert!(
            matches!(month, EnrollError::TokenTtlTooLong { .. }),
            "{month}"
        );
        assert!(
            enrollment
                .create_token(tags(&[("role", "web")]), MAX_TOKEN_TTL, 0)
                .is_ok()
        );
    }

    #[test]
    fn an_expired_token_is_refused_before_anything_is_signed() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let enrollment = enrollment(&clock);
        let token = enrollment
            .create_token(tags(&[("role", "*")]), Duration::from_secs(60), 1)
            .unwrap()
            .token;
        clock.set(1_000 * HOUR_MS + 60_000);
        let refused = enrollment
            .enroll(request(&token, "web-1", false))
            .unwrap_err();
        assert!(
            matches!(
                refused,
                EnrollError::TokenRefused(StoreError::TokenExpired { .. })
            ),
            "{refused}"
        );
        assert!(enrollment.store.node("web-1").unwrap().is_none());
    }

    #[test]
    fn a_request_that_cannot_be_signed_costs_no_use_of_the_token() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let enrollment = enrollment(&clock);
        let token = enrollment
            .create_token(tags(&[("role", "*")]), Duration::ZERO, 1)
            .unwrap()
            .token;
        let mut garbled = request(&token, "web-1", false);
        garbled.csr_pem = "not a CSR".into();
        assert!(matches!(
            enrollment.enroll(garbled),
            Err(EnrollError::InvalidCsr(_))
        ));
        enrollment.enroll(request(&token, "web-1", false)).unwrap();
    }

    #[test]
    fn two_enrollments_racing_for_a_single_use_token_enroll_one_node() {
        let clock = Arc::new(ManualClock::at(1_000 * HOUR_MS));
        let enrollment = enrollment(&clock);
        let token = enrollment
            .create_token(tags(&[("role", "*")]), Duration::ZERO, 1)
            .unwrap()
            .token;
        let barrier = std::sync::Barrier::new(2);
        let outcomes: Vec<Result<Enrolled, EnrollError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ["web-1", "web-2"]
                .into_iter()
                .map(|node| {
                    let (barrier, enrollment, token) = (&barrier, &enrollment, &token);
                    let asked = request(token, node, false);
                    scope.spawn(move || {
                        barrier.wait();
                        enrollment.enroll(asked)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
        assert_eq!(enrollment.store.nodes().unwrap().len(), 1);
    }
}
