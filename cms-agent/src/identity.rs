//! The agent's identity: its private key, the client certificate the server
//! signed for it at enrollment, and the CA certificate it trusts the server
//! by.
//!
//! The key is generated here and never leaves the instance: enrollment sends
//! only a CSR ([`generate_key_and_csr`]). The three files live in the state
//! directory as `key.pem` (owner-only), `cert.pem` and `ca.pem`.
//!
//! A key and a certificate that do not belong together are worse than none
//! (every call would fail the handshake), so [`save_identity`] replaces the
//! three files as one: it first writes and syncs `*.new` copies of all three,
//! then renames them in place, key first. Once `key.pem.new` is gone the new
//! identity is committed, and [`load_identity`] (or the next save) finishes
//! the remaining renames after a crash; while `key.pem.new` is still there,
//! the staged files are discarded and the old identity stays. Callers hold
//! the agent's run lock, so two saves never interleave.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
};

/// The node's private key, readable by its owner only.
pub const KEY_FILE: &str = "key.pem";
/// The node's client certificate, signed by the server's CA.
pub const CERTIFICATE_FILE: &str = "cert.pem";
/// The server's CA certificate: the agent trusts the server by it.
pub const CA_CERTIFICATE_FILE: &str = "ca.pem";

/// What an enrolled agent presents and trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub private_key_pem: String,
    pub certificate_pem: String,
    pub ca_certificate_pem: String,
}

/// A new private key and the CSR that asks the server to certify it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyAndCsr {
    pub private_key_pem: String,
    pub csr_pem: String,
}

/// Why the identity could not be made, saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("Failed to generate the node's private key")]
    GenerateKey {
        #[source]
        source: rcgen::Error,
    },
    #[error("Failed to make the certificate signing request")]
    MakeCsr {
        #[source]
        source: rcgen::Error,
    },
    #[error("Failed to check {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("Failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Failed to load the identity in {}: {missing} missing; delete {KEY_FILE}, \
         {CERTIFICATE_FILE} and {CA_CERTIFICATE_FILE} there to enroll again",
        state_dir.display()
    )]
    Incomplete { state_dir: PathBuf, missing: String },
}

/// Generates the node's ECDSA P-256 key and a CSR for it. The CSR names
/// `node_name` as its CN for the operator's benefit; the server ignores
/// every name in it and certifies the node id it decides.
pub fn generate_key_and_csr(node_name: &str) -> Result<KeyAndCsr, IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| IdentityError::GenerateKey { source })?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node_name);
    params.distinguished_name = name;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| IdentityError::MakeCsr { source })?;
    Ok(KeyAndCsr {
        private_key_pem: key.serialize_pem(),
        csr_pem,
    })
}

/// Saves the identity in `state_dir` (created owner-only if missing),
/// replacing any previous one as a whole; see the module documentation.
/// The inputs are checked first, so garbage is never written.
pub fn save_identity(
    state_dir: &Path,
    private_key_pem: &str,
    certificate_pem: &str,
    ca_certificate_pem: &str,
) -> Result<(), IdentityError> {
    check_parts(
        state_dir,
        private_key_pem,
        certificate_pem,
        ca_certificate_pem,
    )?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| IdentityError::Write {
            path: state_dir.to_owned(),
            source,
        })?;
    finish_interrupted_save(state_dir)?;
    let contents = [private_key_pem, certificate_pem, ca_certificate_pem];
    for ((name, mode), content) in INSTALL_ORDER.into_iter().zip(contents) {
        write_synced(&staged(state_dir, name), content, mode)?;
    }
    sync_directory(state_dir)?;
    for (name, _) in INSTALL_ORDER {
        install(state_dir, name)?;
    }
    sync_directory(state_dir)
}

/// Loads the identity saved in `state_dir`: `None` if the agent has not
/// enrolled (none of the three files exists), an error if only some exist or
/// one cannot be read. Finishes or discards an interrupted save first.
pub fn load_identity(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    match std::fs::metadata(state_dir) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::Read {
                path: state_dir.to_owned(),
                source,
            });
        }
    }
    finish_interrupted_save(state_dir)?;
    let key = read_if_present(&state_dir.join(KEY_FILE))?;
    let certificate = read_if_present(&state_dir.join(CERTIFICATE_FILE))?;
    let ca_certificate = read_if_present(&state_dir.join(CA_CERTIFICATE_FILE))?;
    let (private_key_pem, certificate_pem, ca_certificate_pem) =
        match (key, certificate, ca_certificate) {
            (None, None, None) => return Ok(None),
            (Some(key), Some(certificate), Some(ca_certificate)) => {
                (key, certificate, ca_certificate)
            }
            (key, certificate, ca_certificate) => {
                let missing: Vec<&str> = [
                    (key.is_none(), KEY_FILE),
                    (certificate.is_none(), CERTIFICATE_FILE),
                    (ca_certificate.is_none(), CA_CERTIFICATE_FILE),
                ]
                .into_iter()
                .filter_map(|(absent, name)| absent.then_some(name))
                .collect();
                let verb = if missing.len() == 1 { "is" } else { "are" };
                return Err(IdentityError::Incomplete {
                    state_dir: state_dir.to_owned(),
                    missing: format!("{} {verb}", missing.join(" and ")),
                });
            }
        };
    check_parts(
        state_dir,
        &private_key_pem,
        &certificate_pem,
        &ca_certificate_pem,
    )?;
    Ok(Some(Identity {
        private_key_pem,
        certificate_pem,
        ca_certificate_pem,
    }))
}

/// When a certificate's validity starts and ends, in seconds since the
/// Unix epoch.
pub fn certificate_validity(certificate_pem: &str) -> Result<(i64, i64), IdentityError> {
    let invalid = |reason: String| IdentityError::Invalid {
        path: PathBuf::from(CERTIFICATE_FILE),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
        .map_err(|e| invalid(format!("the certificate is not PEM: {e}")))?;
    let certificate = pem
        .parse_x509()
        .map_err(|e| invalid(format!("the certificate does not parse: {e}")))?;
    let validity = certificate.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// When the server issued a certificate, on the server's clock: its
/// `notBefore` plus the backdate the server applies
/// (`cms_proto::CERTIFICATE_BACKDATE_SECS`), never past its end.
fn issued_unix(not_before: i64, not_after: i64) -> i64 {
    not_before
        .saturating_add(cms_proto::CERTIFICATE_BACKDATE_SECS as i64)
        .min(not_after)
}

/// When the certificate is due for renewal, on this agent's clock: once two
/// thirds of its life have passed (8 hours before the end of a day-long
/// one), so a node that misses a renewal has many chances before it
/// expires. Its life is what the server gave it (`notAfter` minus the issue
/// time), counted from when the agent received it (`received_unix`, the
/// time `cert.pem` was written, on the agent's clock), so a clock that runs
/// ahead of or behind the server's does not make the agent renew in a loop
/// or too late.
pub fn renewal_due_unix(certificate_pem: &str, received_unix: i64) -> Result<i64, IdentityError> {
    let (not_before, not_after) = certificate_validity(certificate_pem)?;
    let life = not_after - issued_unix(not_before, not_after);
    Ok(received_unix + life * 2 / 3)
}

/// When the certificate ends, on this agent's clock: when it was received
/// plus the life the server gave it (see [`renewal_due_unix`]). Only a hint:
/// the agent asks the server before it gives up an identity.
pub fn expires_on_agent_clock(
    certificate_pem: &str,
    received_unix: i64,
) -> Result<i64, IdentityError> {
    let (not_before, not_after) = certificate_validity(certificate_pem)?;
    Ok(received_unix + (not_after - issued_unix(not_before, not_after)))
}

/// Whether a failed renewal (or any call) failed because the server
/// refused this node's certificate as expired: the TLS alert
/// `certificate_expired`, which the server sends for an expired client
/// certificate. The one signal on which the agent gives up its identity.
pub fn refused_as_expired(error: &anyhow::Error) -> bool {
    let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired);
    error.chain().any(|cause| {
        let rustls_error = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        rustls_error == Some(&alert) || cause.to_string().contains("CertificateExpired")
    })
}

/// When `cert.pem` was written, in seconds since the Unix epoch.
pub fn certificate_received_unix(state_dir: &Path) -> Option<i64> {
    let modified = std::fs::metadata(state_dir.join(CERTIFICATE_FILE))
        .and_then(|m| m.modified())
        .ok()?;
    modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// Moves an identity that can no longer be used (its certificate expired)
/// aside as `*.expired`, so the agent enrolls again; kept for inspection.
pub fn retire_identity(state_dir: &Path) -> Result<(), IdentityError> {
    for (name, _) in INSTALL_ORDER.iter().rev() {
        let from = state_dir.join(name);
        let to = state_dir.join(format!("{name}.expired"));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(IdentityError::Write { path: to, source }),
        }
    }
    sync_directory(state_dir)
}

impl fmt::Debug for Identity {
    // Never prints the private key.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Identity")
            .field("certificate_pem", &self.certificate_pem)
            .field("ca_certificate_pem", &self.ca_certificate_pem)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for KeyAndCsr {
    // Never prints the private key.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyAndCsr")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// The files and their modes, in the order they are installed. The key
/// comes first: its staged copy disappearing is the commit point.
const INSTALL_ORDER: [(&str, u32); 3] = [
    (KEY_FILE, 0o600),
    (CERTIFICATE_FILE, 0o644),
    (CA_CERTIFICATE_FILE, 0o644),
];

fn staged(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.new"))
}

/// Completes a save that was interrupted after its commit point, or
/// discards one interrupted before it.
fn finish_interrupted_save(state_dir: &Path) -> Result<(), IdentityError> {
    let staged_key = staged(state_dir, KEY_FILE);
    let committed = !exists(&staged_key)?;
    let mut changed = false;
    if committed {
        for (name, _) in &INSTALL_ORDER[1..] {
            if exists(&staged(state_dir, name))? {
                install(state_dir, name)?;
                changed = true;
            }
        }
    } else {
        // The key's staged copy goes last, so that the others stay marked
        // as uncommitted until they are gone.
        for (name, _) in INSTALL_ORDER.iter().rev() {
            let path = staged(state_dir, name);
            match std::fs::remove_file(&path) {
                Ok(()) => changed = true,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(IdentityError::Write { path, source }),
            }
        }
    }
    if changed {
        sync_directory(state_dir)?;
    }
    Ok(())
}

fn install(state_dir: &Path, name: &str) -> Result<(), IdentityError> {
    let target = state_dir.join(name);
    std::fs::rename(staged(state_dir, name), &target).map_err(|source| IdentityError::Write {
        path: target,
        source,
    })
}

fn write_synced(path: &Path, content: &str, mode: u32) -> Result<(), IdentityError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        // The mode above applies only to a new file; a leftover keeps its own.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(content.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}

fn sync_directory(state_dir: &Path) -> Result<(), IdentityError> {
    std::fs::File::open(state_dir)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| IdentityError::Write {
            path: state_dir.to_owned(),
            source,
        })
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    path.try_exists().map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_if_present(path: &Path) -> Result<Option<String>, IdentityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Checks that the key is a private key and both certificates are
/// certificates, naming the file each would be saved as.
fn check_parts(
    state_dir: &Path,
    private_key_pem: &str,
    certificate_pem: &str,
    ca_certificate_pem: &str,
) -> Result<(), IdentityError> {
    let key = KeyPair::from_pem(private_key_pem).map_err(|error| IdentityError::Invalid {
        path: state_dir.join(KEY_FILE),
        reason: format!("not a private key: {error}"),
    })?;
    for (name, pem) in [
        (CERTIFICATE_FILE, certificate_pem),
        (CA_CERTIFICATE_FILE, ca_certificate_pem),
    ] {
        // rcgen 0.14's only public certificate reader. It parses the whole
        // certificate, does not require a CA, and signs nothing with the key.
        Issuer::from_ca_cert_pem(pem, &key).map_err(|error| IdentityError::Invalid {
            path: state_dir.join(name),
            reason: format!("not a certificate: {error}"),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateSigningRequestParams, IsCa, PublicKeyData};

    use super::*;

    /// An identity as enrollment produces it: our key and CSR, signed by a
    /// CA standing in for the server's.
    fn enrolled(node_name: &str) -> (String, String, String) {
        let KeyAndCsr {
            private_key_pem,
            csr_pem,
        } = generate_key_and_csr(node_name).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_certificate = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let certificate = CertificateSigningRequestParams::from_pem(&csr_pem)
            .unwrap()
            .signed_by(&issuer)
            .unwrap();
        (private_key_pem, certificate.pem(), ca_certificate.pem())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn files_in(state_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(state_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn renewal_and_expiry_count_the_life_the_server_gave_on_the_agents_own_clock() {
        const DAY: i64 = 24 * 3600;
        const JAN_1_2030: i64 = 1_893_456_000;
        let backdate = cms_proto::CERTIFICATE_BACKDATE_SECS as i64;
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        // Issued on January 2 (the server backdates notBefore a day), valid
        // until January 31: a life of 29 days.
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 31);
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(
            certificate_validity(&pem).unwrap(),
            (JAN_1_2030, JAN_1_2030 + 30 * DAY)
        );
        let issued = JAN_1_2030 + backdate;
        let life = JAN_1_2030 + 30 * DAY - issued;
        // An agent whose clock is right, two days ahead or 30 minutes
        // behind: due after two thirds of the life, on its own clock, and
        // expired (by its clock) after the whole life.
        for skew in [0, 2 * DAY, -1800] {
            let received = issued + skew;
            assert_eq!(
                renewal_due_unix(&pem, received).unwrap(),
                received + life * 2 / 3,
                "skew {skew}"
            );
            assert_eq!(
                expires_on_agent_clock(&pem, received).unwrap(),
                received + life,
                "skew {skew}"
            );
        }
        assert!(certificate_validity("not a certificate").is_err());
    }

    #[test]
    fn only_the_servers_expired_certificate_alert_counts_as_expired() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        let error = anyhow::Error::new(io).context("Failed to renew the node certificate");
        assert!(refused_as_expired(&error));
        let unreachable = anyhow::anyhow!("Failed to connect: connection refused");
        assert!(!refused_as_expired(&unreachable));
    }

    #[test]
    fn csr_is_signed_by_the_returned_key_and_names_the_node() {
        let KeyAndCsr {
            private_key_pem,
            csr_pem,
        } = generate_key_and_csr("i-0abc").unwrap();
        // Parsing verifies the CSR's signature, as the server does.
        let request = CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
        let key = KeyPair::from_pem(&private_key_pem).unwrap();
        assert_eq!(request.public_key.der_bytes(), key.public_key_raw());
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            request.params.distinguished_name.get(&DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("i-0abc".to_owned()))
        );
    }

    #[test]
    fn every_csr_has_a_new_key() {
        let first = generate_key_and_csr("n").unwrap();
        let second = generate_key_and_csr("n").unwrap();
        assert_ne!(first.private_key_pem, second.private_key_pem);
    }

    #[test]
    fn saved_identity_loads_back_with_the_key_readable_by_its_owner_only() {
        let temporary = tempfile::tempdir().unwrap();
        let state_dir = temporary.path().join("state");
        let (key, certificate, ca) = enrolled("web-1");
        save_identity(&state_dir, &key, &certificate, &ca).unwrap();
        let identity = load_identity(&state_dir).unwrap().unwrap();
        assert_eq!(identity.private_key_pem, key);
        assert_eq!(identity.certificate_pem, certificate);
        assert_eq!(identity.ca_certificate_pem, ca);
        assert_eq!(files_in(&state_dir), ["ca.pem", "cert.pem", "key.pem"]);
        assert_eq!(mode(&state_dir.join("key.pem")), 0o600);
        assert_eq!(mode(&state_dir), 0o700);
    }

    #[test]
    fn an_agent_that_never_enrolled_has_no_identity() {
        let temporary = tempfile::tempdir().unwrap();
        assert_eq!(
            load_identity(&temporary.path().join("absent")).unwrap(),
            None
        );
        assert_eq!(load_identity(temporary.path()).unwrap(), None);
    }

    #[test]
    fn saving_again_replaces_the_whole_identity() {
        let temporary = tempfile::tempdir().unwrap();
        let (old_key, old_certificate, old_ca) = enrolled("web-1");
        save_identity(temporary.path(), &old_key, &old_certificate, &old_ca).unwrap();
        let (key, certificate, ca) = enrolled("web-1");
        save_identity(temporary.path(), &key, &certificate, &ca).unwrap();
        let identity = load_identity(temporary.path()).unwrap().unwrap();
        assert_eq!(
            (
                identity.private_key_pem,
                identity.certificate_pem,
                identity.ca_certificate_pem
            ),
            (key, certificate, ca)
        );
        assert_eq!(
            files_in(temporary.path()),
            ["ca.pem", "cert.pem", "key.pem"]
        );
    }

    #[test]
    fn a_save_interrupted_before_the_key_was_installed_keeps_the_old_identity() {
        let temporary = tempfile::tempdir().unwrap();
        let state_dir = temporary.path();
        let (old_key, old_certificate, old_ca) = enrolled("web-1");
        save_identity(state_dir, &old_key, &old_certificate, &old_ca).unwrap();
        // The new key was staged, the new certificate only half written.
        let (key, certificate, _) = enrolled("web-1");
        std::fs::write(state_dir.join("key.pem.new"), &key).unwrap();
        std::fs::write(state_dir.join("cert.pem.new"), &certificate[..100]).unwrap();
        let identity = load_identity(state_dir).unwrap().unwrap();
        assert_eq!(identity.private_key_pem, old_key);
        assert_eq!(identity.certificate_pem, old_certificate);
        assert_eq!(files_in(state_dir), ["ca.pem", "cert.pem", "key.pem"]);
    }

    #[test]
    fn a_save_interrupted_after_the_key_was_installed_is_completed() {
        let temporary = tempfile::tempdir().unwrap();
        let state_dir = temporary.path();
        let (old_key, old_certificate, old_ca) = enrolled("web-1");
        save_identity(state_dir, &old_key, &old_certificate, &old_ca).unwrap();
        // All three were staged and synced, and the key was installed.
        let (key, certificate, ca) = enrolled("web-1");
        std::fs::write(state_dir.join("key.pem"), &key).unwrap();
        std::fs::write(state_dir.join("cert.pem.new"), &certificate).unwrap();
        std::fs::write(state_dir.join("ca.pem.new"), &ca).unwrap();
        let identity = load_identity(state_dir).unwrap().unwrap();
        assert_eq!(
            (
                identity.private_key_pem,
                identity.certificate_pem,
                identity.ca_certificate_pem
            ),
            (key, certificate, ca)
        );
        assert_eq!(files_in(state_dir), ["ca.pem", "cert.pem", "key.pem"]);
    }

    #[test]
    fn a_partial_identity_is_an_error_that_says_how_to_start_over() {
        let temporary = tempfile::tempdir().unwrap();
        let (key, certificate, ca) = enrolled("web-1");
        save_identity(temporary.path(), &key, &certificate, &ca).unwrap();
        std::fs::remove_file(temporary.path().join("cert.pem")).unwrap();
        let error = load_identity(temporary.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "Failed to load the identity in {}: cert.pem is missing; delete key.pem, \
                 cert.pem and ca.pem there to enroll again",
                temporary.path().display()
            )
        );
    }

    #[test]
    fn garbage_is_refused_before_anything_is_written() {
        let temporary = tempfile::tempdir().unwrap();
        let state_dir = temporary.path().join("state");
        let (key, certificate, ca) = enrolled("web-1");
        let error = save_identity(&state_dir, &key, "not a certificate", &ca).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "Failed to check {}/cert.pem: not a certificate",
                state_dir.display()
            )),
            "{error}"
        );
        let error = save_identity(&state_dir, &certificate, &certificate, &ca).unwrap_err();
        assert!(
            error.to_string().contains("key.pem: not a private key"),
            "{error}"
        );
        assert!(!state_dir.exists());
    }

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let temporary = tempfile::tempdir().unwrap();
        let (key, certificate, ca) = enrolled("web-1");
        save_identity(temporary.path(), &key, &certificate, &ca).unwrap();
        let identity = load_identity(temporary.path()).unwrap().unwrap();
        let csr = generate_key_and_csr("web-1").unwrap();
        let printed = format!("{identity:?} {csr:?}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    }
}
