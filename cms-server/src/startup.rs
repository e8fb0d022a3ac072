//! What the server does before it listens: opens the store, marks the
//! triggers of an earlier run interrupted, loads or creates the CA, writes
//! the admin credential, and restores the last good revision. Only then
//! are its ports bound (`commands::serve`), so a client that finds the port
//! answering also finds the admin credential.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::clock::Clock;
use crate::git_sync::Revision;
use crate::pki::CertificateAuthority;
use crate::store::{CaRecord, SharedStore, Store};
use crate::sync::RolesSource;

/// What the server has once it is ready to listen.
pub struct Prepared {
    pub store: SharedStore,
    pub ca: Arc<CertificateAuthority>,
    /// sha256 (hex) of the CA certificate (DER): part of every enrollment
    /// token, so an agent can check the server before trusting it.
    pub ca_fingerprint: String,
    pub source: RolesSource,
    /// The last good revision of an earlier run, served until a sync.
    pub restored: Option<Revision>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("store", &self.store)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

/// Everything before listening, for a data directory and a roles source.
pub fn prepare(
    data_dir: &Path,
    source: RolesSource,
    clock: &dyn Clock,
) -> anyhow::Result<Prepared> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("Failed to create the data directory {}", data_dir.display()))?;
    let store = crate::store::open(&data_dir.join("db"))?;
    crate::triggers::interrupt_running(&*store, clock)?;
    let ca = load_or_create_ca(&*store)?;
    write_admin_credential(&*store, &ca, data_dir, clock)?;
    let ca_fingerprint = certificate_fingerprint(ca.certificate_pem())?;
    let restored = restore_revision(&*store, &source);
    Ok(Prepared {
        store,
        ca: Arc::new(ca),
        ca_fingerprint,
        source,
        restored,
    })
}

/// Where the admin credential lives in the data directory.
pub fn admin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("admin")
}

/// The sha256 hex of the DER of the first certificate in `pem`.
pub fn certificate_fingerprint(pem: &str) -> anyhow::Result<String> {
    let der = pem_to_der(pem).context("Failed to read the CA certificate")?;
    Ok(cms_roles::digest::sha256_hex(&der))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fn load_or_create_ca(store: &dyn Store) -> anyhow::Result<CertificateAuthority> {
    if let Some(record) = store.ca()? {
        return Ok(CertificateAuthority::from_pem(
            &record.certificate_pem,
            &record.private_key_pem,
        )?);
    }
    let ca = CertificateAuthority::create("server")?;
    store.put_ca(&CaRecord {
        certificate_pem: ca.certificate_pem().to_string(),
        private_key_pem: ca.private_key_pem(),
    })?;
    Ok(ca)
}

/// The bootstrap operator's admin credential, made once:
/// `admin/admin.pem`, `admin/admin.key` and `admin/ca.pem`, readable by the
/// server's user only, and recorded as the operator `admin`
/// (`operators::bootstrap`).
fn write_admin_credential(
    store: &dyn Store,
    ca: &CertificateAuthority,
    data_dir: &Path,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = admin_dir(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("Failed to create {}", dir.display()))?;
    crate::operators::bootstrap(store, ca, &dir, clock.now_unix_ms(), &|name, text| {
        write_private_file(&dir, name, text.as_bytes())
    })
}

/// Writes `dir/name` owner-only (0600), atomically: a temporary file in
/// the same folder, synced, renamed over the old one, and the folder synced.
pub(crate) fn write_private_file(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("Failed to write {}", temporary.display()))?;
    std::io::Write::write_all(&mut file, bytes)
        .with_context(|| format!("Failed to write {}", temporary.display()))?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("Failed to write {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The last good revision of an earlier run, from the store's pointer and
/// the git mirror, so a restart keeps serving it even if the branch now
/// points to a broken commit.
fn restore_revision(store: &dyn Store, source: &RolesSource) -> Option<Revision> {
    let commit = store.current_revision().ok().flatten()?;
    let RolesSource::Git(syncer) = source else {
        // A plain folder has no history to go back to.
        return None;
    };
    let files = syncer.source().read_commit(&commit).ok()?;
    let (repository, diagnostics) = cms_roles::Repository::load(files);
    diagnostics.is_empty().then(|| Revision {
        commit,
        repository: Arc::new(repository),
    })
}
