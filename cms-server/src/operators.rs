//! Operators: one admin credential per person (or tool), each revocable on
//! its own. `cms-server admin add NAME` makes a key and a CSR where the
//! credential will live and asks the server (as an operator) to sign it;
//! the store keeps, per operator, the serial of its one current
//! certificate, and `auth::identify` accepts an admin certificate only
//! while it is that serial and the operator is not revoked.
//!
//! The server writes the first operator's credential itself, `admin`, into
//! `<data>/admin/` on its first start ([`bootstrap`]); a data directory of
//! a server from before operators existed holds the shared `cms://admin`
//! credential, which is adopted as that operator, revocable like any other.
//!
//! Everything here blocks (store writes with an fsync, signatures): the
//! gRPC edge runs it through `Blocking`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::pki::{
    BOOTSTRAP_OPERATOR, CertificateAuthority, IssuedCertificate, PeerIdentity, PkiError,
};
use crate::store::{AuditRecord, OperatorRecord, SharedStore, Store, StoreError};

/// How long an operator's certificate is valid unless asked otherwise.
pub const OPERATOR_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The longest an operator's certificate may be valid.
pub const MAX_OPERATOR_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Who the audit log names for what the server does by itself.
pub const SERVER_ACTOR: &str = "server";

/// What operator management needs.
#[derive(Debug, Clone)]
pub struct Operators {
    pub store: SharedStore,
    pub ca: Arc<CertificateAuthority>,
    pub clock: SharedClock,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    InvalidName(#[source] PkiError),
    #[error(
        "Failed to add operator {name}: it exists; use `cms-server admin renew {name}` for a new credential"
    )]
    Exists { name: String },
    #[error(
        "Failed to add operator {name}: it was revoked, and a revoked name is not reused; choose another name"
    )]
    RevokedName { name: String },
    #[error("operator {name} does not exist; `cms-server admin list` shows the operators")]
    Unknown { name: String },
    #[error("operator {name} is revoked")]
    Revoked { name: String },
    #[error(
        "Failed to revoke operator {name}: it is the last operator whose credential works; add another operator first (`cms-server admin add NAME`)"
    )]
    LastOperator { name: String },
    #[error("Failed to sign the operator's certificate: {validity_seconds} s is longer than the longest allowed, {} days", MAX_OPERATOR_VALIDITY.as_secs() / 86_400)]
    TooLong { validity_seconds: u64 },
    #[error("{0}")]
    InvalidCsr(#[source] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An operator's new certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    pub certificate_pem: String,
    pub ca_certificate_pem: String,
    pub not_after_unix: i64,
}

impl Operators {
    /// Signs a certificate for a new operator `name`, at `by`'s request.
    pub fn add(
        &self,
        by: &str,
        name: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<Signed, OperatorError> {
        crate::pki::check_operator_name(name).map_err(OperatorError::InvalidName)?;
        match self.store.operator(name)? {
            Some(existing) if existing.revoked_unix.is_some() => {
                return Err(OperatorError::RevokedName {
                    name: name.to_owned(),
                });
            }
            Some(_) => {
                return Err(OperatorError::Exists {
                    name: name.to_owned(),
                });
            }
            None => {}
        }
        let issued = self.sign(csr_pem, name, validity)?;
        let record = self.record(name, &issued, by);
        if !self.store.swap_operator(None, &record)? {
            // Added by someone else meanwhile: this certificate is never
            // recorded, so it is refused.
            return Err(OperatorError::Exists {
                name: name.to_owned(),
            });
        }
        Ok(self.signed(issued))
    }

    /// Replaces the certificate of an existing, unrevoked operator: from
    /// now on only the new one is accepted.
    pub fn renew(
        &self,
        by: &str,
        name: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<Signed, OperatorError> {
        crate::pki::check_operator_name(name).map_err(OperatorError::InvalidName)?;
        let issued = self.sign(csr_pem, name, validity)?;
        loop {
            let current = self.existing(name)?;
            let mut record = self.record(name, &issued, by);
            record.created_unix = current.created_unix;
            if self.store.swap_operator(Some(&current), &record)? {
                return Ok(self.signed(issued));
            }
        }
    }

    /// Revokes an operator: its certificate is refused on the next call.
    /// The last operator whose credential works is not revoked, so that
    /// the server keeps someone who can administer it.
    pub fn revoke(&self, name: &str) -> Result<OperatorRecord, OperatorError> {
        loop {
            let current = self.existing(name)?;
            let now = self.clock.now_unix_ms() / 1000;
            let others_working = self.store.operators()?.iter().any(|operator| {
                operator.name != name
                    && operator.revoked_unix.is_none()
                    && operator.not_after_unix > now
            });
            if !others_working {
                return Err(OperatorError::LastOperator {
                    name: name.to_owned(),
                });
            }
            let revoked = OperatorRecord {
                revoked_unix: Some(now),
                ..current.clone()
            };
            if self.store.swap_operator(Some(&current), &revoked)? {
                return Ok(revoked);
            }
        }
    }

    /// Every operator, revoked ones included, by name.
    pub fn list(&self) -> Result<Vec<OperatorRecord>, OperatorError> {
        Ok(self.store.operators()?)
    }

    fn existing(&self, name: &str) -> Result<OperatorRecord, OperatorError> {
        match self.store.operator(name)? {
            None => Err(OperatorError::Unknown {
                name: name.to_owned(),
            }),
            Some(operator) if operator.revoked_unix.is_some() => Err(OperatorError::Revoked {
                name: name.to_owned(),
            }),
            Some(operator) => Ok(operator),
        }
    }

    fn sign(
        &self,
        csr_pem: &str,
        name: &str,
        validity: Duration,
    ) -> Result<IssuedCertificate, OperatorError> {
        let validity = if validity.is_zero() {
            OPERATOR_VALIDITY
        } else {
            validity
        };
        if validity > MAX_OPERATOR_VALIDITY {
            return Err(OperatorError::TooLong {
                validity_seconds: validity.as_secs(),
            });
        }
        self.ca
            .sign_operator_csr(csr_pem, name, validity)
            .map_err(OperatorError::InvalidCsr)
    }

    fn record(&self, name: &str, issued: &IssuedCertificate, by: &str) -> OperatorRecord {
        OperatorRecord {
            name: name.to_owned(),
            serial: issued.serial_hex.clone(),
            created_unix: self.clock.now_unix_ms() / 1000,
            not_after_unix: issued.not_after_unix.max(0) as u64,
            revoked_unix: None,
            added_by: by.to_owned(),
        }
    }

    fn signed(&self, issued: IssuedCertificate) -> Signed {
        Signed {
            certificate_pem: issued.certificate_pem,
            ca_certificate_pem: self.ca.certificate_pem().to_owned(),
            not_after_unix: issued.not_after_unix,
        }
    }
}

/// The bootstrap operator at the server's start. When `<dir>/admin.key`
/// is missing, a new credential for [`BOOTSTRAP_OPERATOR`] is written
/// there (0600) and recorded as that operator's current one, revoked or
/// not before: whoever can delete files in the server's data directory can
/// read its CA key anyway, so this is the recovery path of a server whose
/// operators are all revoked or expired, and it is audited. An existing
/// credential the store does not know yet (written by a server from before
/// operators existed) is adopted as the bootstrap operator.
/// `write_private_file(name, text)` writes one file of the credential into
/// `dir`, owner-only and atomically (the server's `startup` passes its own).
pub fn bootstrap(
    store: &dyn Store,
    ca: &CertificateAuthority,
    dir: &Path,
    now_unix_ms: u64,
    shared_store: bool,
    write_private_file: &dyn Fn(&str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let certificate_path = dir.join("admin.pem");
    if dir.join("admin.key").exists() {
        if store.operator(BOOTSTRAP_OPERATOR)?.is_some() {
            return Ok(());
        }
        let pem = std::fs::read_to_string(&certificate_path)
            .with_context(|| format!("Failed to read {}", certificate_path.display()))?;
        let info = crate::pki::read_certificate(&pem)
            .with_context(|| format!("Failed to read {}", certificate_path.display()))?;
        if info.identity != PeerIdentity::Operator(BOOTSTRAP_OPERATOR.to_owned()) {
            anyhow::bail!(
                "Failed to adopt {} as the bootstrap operator's credential: it names {:?}",
                certificate_path.display(),
                info.identity
            );
        }
        let record = OperatorRecord {
            name: BOOTSTRAP_OPERATOR.to_owned(),
            serial: info.serial_hex,
            created_unix: now_unix_ms / 1000,
            not_after_unix: info.not_after_unix.max(0) as u64,
            revoked_unix: None,
            added_by: SERVER_ACTOR.to_owned(),
        };
        store.swap_operator(None, &record)?;
        audit_bootstrap(store, now_unix_ms, "AdoptCredential")?;
        return Ok(());
    }
    // Replicas share the store: the first to start makes the bootstrap
    // credential, and a later one must not replace it (that would refuse
    // the credential the operator already holds). Its data directory gets
    // the CA certificate; the operator uses the first replica's credential,
    // or one `cms-server admin add` made, with any replica.
    if shared_store
        && store
            .operator(BOOTSTRAP_OPERATOR)?
            .is_some_and(|existing| existing.revoked_unix.is_none())
    {
        write_private_file("ca.pem", ca.certificate_pem())?;
        tracing::info!(
            "the bootstrap operator `{BOOTSTRAP_OPERATOR}` is in the shared store already: no credential is made here; use the one in the data directory of the replica that made it, or `cms-server admin add NAME`"
        );
        return Ok(());
    }
    let (credential, issued) =
        ca.issue_operator_credential(BOOTSTRAP_OPERATOR, OPERATOR_VALIDITY)?;
    for (name, text) in [
        ("ca.pem", ca.certificate_pem()),
        ("admin.pem", credential.certificate_pem.as_str()),
        ("admin.key", credential.private_key_pem.as_str()),
    ] {
        write_private_file(name, text)?;
    }
    let record = OperatorRecord {
        name: BOOTSTRAP_OPERATOR.to_owned(),
        serial: issued.serial_hex,
        created_unix: now_unix_ms / 1000,
        not_after_unix: issued.not_after_unix.max(0) as u64,
        revoked_unix: None,
        added_by: SERVER_ACTOR.to_owned(),
    };
    if shared_store {
        // Two replicas starting at once: only the first record stands, and
        // the other's credential, never current, is removed again.
        if !store.swap_operator(None, &record)? {
            for name in ["admin.pem", "admin.key"] {
                let _ = std::fs::remove_file(dir.join(name));
            }
            return Ok(());
        }
    } else {
        loop {
            let current = store.operator(BOOTSTRAP_OPERATOR)?;
            if store.swap_operator(current.as_ref(), &record)? {
                break;
            }
        }
    }
    audit_bootstrap(store, now_unix_ms, "WriteBootstrapCredential")
}

fn audit_bootstrap(store: &dyn Store, now_unix_ms: u64, method: &str) -> anyhow::Result<()> {
    store.append_audit(&AuditRecord {
        time_unix_ms: now_unix_ms,
        operator: SERVER_ACTOR.to_owned(),
        method: method.to_owned(),
        target: BOOTSTRAP_OPERATOR.to_owned(),
        outcome: "ok".to_owned(),
        message: String::new(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::MemoryStore;

    const DAY_MS: u64 = 86_400_000;

    fn operators(clock: &Arc<ManualClock>) -> Operators {
        Operators {
            store: Arc::new(MemoryStore::default()),
            ca: Arc::new(CertificateAuthority::create("test").unwrap()),
            clock: clock.clone(),
        }
    }

    fn csr(name: &str) -> String {
        crate::pki::operator_key_and_csr(name).unwrap().1
    }

    /// Writes into `dir` as the server's startup does: owner-only.
    fn writer(dir: &Path) -> impl Fn(&str, &str) -> anyhow::Result<()> + '_ {
        move |name, text| {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(name))?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            Ok(())
        }
    }

    fn serial_of(pem: &str) -> String {
        crate::pki::read_certificate(pem).unwrap().serial_hex
    }

    #[test]
    fn an_added_operator_is_recorded_with_its_certificate_and_who_added_it() {
        let clock = Arc::new(ManualClock::at(1_000 * DAY_MS));
        let operators = operators(&clock);
        let signed = operators
            .add("admin", "alice", &csr("alice"), Duration::ZERO)
            .unwrap();
        let info = crate::pki::read_certificate(&signed.certificate_pem).unwrap();
        assert_eq!(info.identity, PeerIdentity::Operator("alice".into()));
        let record = operators.store.operator("alice").unwrap().unwrap();
        assert_eq!(record.serial, info.serial_hex);
        assert_eq!(record.added_by, "admin");
        assert_eq!(record.revoked_unix, None);
        // 90 days by default (the certificate's clock is the system's).
        let lifetime = info.not_after_unix - i64::try_from(record.created_unix).unwrap();
        assert!(lifetime > 0);
        let again = operators
            .add("admin", "alice", &csr("alice"), Duration::ZERO)
            .unwrap_err();
        assert!(matches!(again, OperatorError::Exists { .. }), "{again}");
        let bad = operators
            .add("admin", "Alice/..", &csr("x"), Duration::ZERO)
            .unwrap_err();
        assert!(matches!(bad, OperatorError::InvalidName(_)), "{bad}");
        let long = operators
            .add("admin", "bob", &csr("bob"), MAX_OPERATOR_VALIDITY * 2)
            .unwrap_err();
        assert!(matches!(long, OperatorError::TooLong { .. }), "{long}");
    }

    #[test]
    fn renewing_replaces_the_serial_and_a_revoked_operator_stays_revoked() {
        let clock = Arc::new(ManualClock::at(1_000 * DAY_MS));
        let operators = operators(&clock);
        let first = operators
            .add("admin", "alice", &csr("alice"), Duration::ZERO)
            .unwrap();
        operators
            .add("admin", "bob", &csr("bob"), Duration::ZERO)
            .unwrap();
        let renewed = operators
            .renew("alice", "alice", &csr("alice"), Duration::ZERO)
            .unwrap();
        let record = operators.store.operator("alice").unwrap().unwrap();
        assert_eq!(record.serial, serial_of(&renewed.certificate_pem));
        assert_ne!(record.serial, serial_of(&first.certificate_pem));
        operators.revoke("alice").unwrap();
        let renew = operators
            .renew("bob", "alice", &csr("alice"), Duration::ZERO)
            .unwrap_err();
        assert!(matches!(renew, OperatorError::Revoked { .. }), "{renew}");
        let add = operators
            .add("bob", "alice", &csr("alice"), Duration::ZERO)
            .unwrap_err();
        assert!(matches!(add, OperatorError::RevokedName { .. }), "{add}");
    }

    #[test]
    fn the_last_working_operator_is_not_revoked() {
        let clock = Arc::new(ManualClock::at(1_000 * DAY_MS));
        let operators = operators(&clock);
        operators
            .add("server", "admin", &csr("admin"), Duration::ZERO)
            .unwrap();
        let last = operators.revoke("admin").unwrap_err();
        assert!(matches!(last, OperatorError::LastOperator { .. }), "{last}");
        operators
            .add("admin", "alice", &csr("alice"), Duration::ZERO)
            .unwrap();
        operators.revoke("admin").unwrap();
        let unknown = operators.revoke("nobody").unwrap_err();
        assert!(
            matches!(unknown, OperatorError::Unknown { .. }),
            "{unknown}"
        );
    }

    #[test]
    fn bootstrap_writes_a_credential_once_and_a_removed_key_recovers_a_revoked_admin() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::default();
        let ca = CertificateAuthority::create("test").unwrap();
        bootstrap(&store, &ca, dir.path(), 5_000, false, &writer(dir.path())).unwrap();
        let first = std::fs::read_to_string(dir.path().join("admin.pem")).unwrap();
        let record = store.operator("admin").unwrap().unwrap();
        assert_eq!(record.serial, serial_of(&first));
        // A restart leaves it alone.
        bootstrap(&store, &ca, dir.path(), 6_000, false, &writer(dir.path())).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("admin.pem")).unwrap(),
            first
        );
        // Revoked, then its key removed on the server host: a new one.
        let revoked = OperatorRecord {
            revoked_unix: Some(7),
            ..record.clone()
        };
        assert!(store.swap_operator(Some(&record), &revoked).unwrap());
        std::fs::remove_file(dir.path().join("admin.key")).unwrap();
        bootstrap(&store, &ca, dir.path(), 8_000, false, &writer(dir.path())).unwrap();
        let second = std::fs::read_to_string(dir.path().join("admin.pem")).unwrap();
        let record = store.operator("admin").unwrap().unwrap();
        assert_eq!(record.serial, serial_of(&second));
        assert_eq!(record.revoked_unix, None);
        let methods: Vec<String> = store
            .audit(10)
            .unwrap()
            .into_iter()
            .map(|r| format!("{} {}", r.operator, r.method))
            .collect();
        assert_eq!(
            methods,
            [
                "server WriteBootstrapCredential",
                "server WriteBootstrapCredential"
            ]
        );
    }

    #[test]
    fn a_second_replica_on_a_shared_store_leaves_the_first_replicas_credential_current() {
        let store = MemoryStore::default();
        let ca = CertificateAuthority::create("test").unwrap();
        let first = tempfile::tempdir().unwrap();
        bootstrap(
            &store,
            &ca,
            first.path(),
            5_000,
            true,
            &writer(first.path()),
        )
        .unwrap();
        let held = std::fs::read_to_string(first.path().join("admin.pem")).unwrap();
        let second = tempfile::tempdir().unwrap();
        bootstrap(
            &store,
            &ca,
            second.path(),
            6_000,
            true,
            &writer(second.path()),
        )
        .unwrap();
        let record = store.operator("admin").unwrap().unwrap();
        assert_eq!(
            record.serial,
            serial_of(&held),
            "the credential the operator holds stays the current one"
        );
        assert!(
            !second.path().join("admin.key").exists(),
            "no second credential"
        );
        assert!(
            second.path().join("ca.pem").exists(),
            "the CA certificate is there"
        );
    }

    #[test]
    fn bootstrap_adopts_the_shared_credential_of_an_older_server() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::default();
        let ca = CertificateAuthority::create("test").unwrap();
        let legacy = ca.issue_admin_certificate().unwrap();
        std::fs::write(dir.path().join("admin.pem"), &legacy.certificate_pem).unwrap();
        std::fs::write(dir.path().join("admin.key"), &legacy.private_key_pem).unwrap();
        bootstrap(&store, &ca, dir.path(), 5_000, false, &writer(dir.path())).unwrap();
        let record = store.operator("admin").unwrap().unwrap();
        assert_eq!(record.serial, serial_of(&legacy.certificate_pem));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("admin.pem")).unwrap(),
            legacy.certificate_pem
        );
    }
}
