//! What the server does before it listens: opens the store, loads or
//! creates the CA (kept in
//! the store and, owner-only, in `<data>/ca/`, see `ca_dir`), writes
//! the admin credential, imports the dashboard tokens an older server kept
//! in a file (`dashboard_tokens::import_at_start`), and restores each
//! environment: its last good
//! revision, its rollout (paused where it stood) and its pins. Only then
//! are its ports bound (`commands::serve`), so a client that finds the port
//! answering also finds the admin credential.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::clock::Clock;
use crate::environments::{Environment, Environments, EnvironmentsConfig};
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
    /// Each environment's roles source, in configuration order.
    pub sources: Vec<(Arc<Environment>, RolesSource)>,
    /// The environments as an earlier run left them: their last good
    /// revisions, served until a sync, rollouts and pins.
    pub environments: Arc<Environments>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("store", &self.store)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

/// Everything before listening, for a data directory and one roles
/// source, the environment `production`.
pub fn prepare(
    data_dir: &Path,
    source: RolesSource,
    clock: &dyn Clock,
) -> anyhow::Result<Prepared> {
    let config = EnvironmentsConfig::single("main");
    let name = config.default_name().to_string();
    prepare_environments(
        data_dir,
        &crate::store::StoreConfig::default(),
        config,
        vec![(name, source)],
        clock,
    )
}

/// Everything before listening, for a data directory, the store chosen
/// (sled in the data directory by default) and each environment's roles
/// source (by name, as `config` lists them).
pub fn prepare_environments(
    data_dir: &Path,
    store_config: &crate::store::StoreConfig,
    config: EnvironmentsConfig,
    sources: Vec<(String, RolesSource)>,
    clock: &dyn Clock,
) -> anyhow::Result<Prepared> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("Failed to create the data directory {}", data_dir.display()))?;
    let store_name = match &store_config.location {
        Some(location) => location.describe(),
        None => data_dir.join("db").display().to_string(),
    };
    // A replica leaves a rollout as it is: another replica may be driving
    // it; the leader takes over what a dead one left
    // (`Rollouts::take_over_rollouts`).
    let shared_store = matches!(
        store_config.location,
        Some(crate::store::StoreLocation::Postgres(_))
    );
    let alone = !shared_store;
    let store = crate::store::open_configured(data_dir, store_config)?;
    let ca = load_or_create_ca(&*store, &store_name, data_dir)?;
    write_admin_credential(&*store, &ca, data_dir, shared_store, clock)?;
    // Tokens an older server kept in `<data>/admin/dashboard-tokens` sign
    // in from the first login on.
    crate::dashboard_tokens::import_at_start(&admin_dir(data_dir), &*store, clock.now_unix_ms())?;
    let ca_fingerprint = certificate_fingerprint(ca.certificate_pem())?;
    let environments = Arc::new(restore_environments(
        &*store, &config, &sources, clock, alone,
    ));
    let sources = sources
        .into_iter()
        .map(|(name, source)| {
            let environment = environments
                .named(&name)
                .expect("every source is of a configured environment")
                .clone();
            (environment, source)
        })
        .collect();
    Ok(Prepared {
        store,
        ca: Arc::new(ca),
        ca_fingerprint,
        sources,
        environments,
    })
}

/// Where the admin credential lives in the data directory.
pub fn admin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("admin")
}

/// The file beside the bootstrap operator's credential that records the
/// server's gRPC address, so admin commands run with `--data` (or on the
/// server host) need no `--server`.
const SERVER_ADDRESS_FILE: &str = "server";

/// Records the address the server's gRPC port listens on in
/// `DATA/admin/server`, on every start (the port may change between
/// starts). An unspecified address (`0.0.0.0`, `::`) is recorded as
/// loopback, which reaches it from the server host.
pub fn record_server_address(data_dir: &Path, listening: SocketAddr) -> anyhow::Result<()> {
    let mut address = listening;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    write_private_file(
        &admin_dir(data_dir),
        SERVER_ADDRESS_FILE,
        format!("{address}\n").as_bytes(),
    )
}

/// The server address recorded in `DATA/admin/server`, when there is one.
pub fn recorded_server_address(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(admin_dir(data_dir).join(SERVER_ADDRESS_FILE)).ok()?;
    let address = text.trim();
    (!address.is_empty()).then(|| address.to_owned())
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

/// Where the CA's certificate and key are kept outside the store:
/// `<data>/ca/ca.pem` and `<data>/ca/ca.key`, owner-only (0600, in a 0700
/// folder), so the server's identity survives any damage to the store.
pub fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ca")
}

const CA_CERTIFICATE_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// The CA: from the store and its copy in `ca/`, which are kept the same.
/// A store that lost it (a new store after damage) gets it back from the
/// file; a store-held key without its file (an older server) is copied to
/// the file; a new server creates it, file first. The two differing is an
/// error an operator resolves, never a silent choice.
fn load_or_create_ca(
    store: &dyn Store,
    store_name: &str,
    data_dir: &Path,
) -> anyhow::Result<CertificateAuthority> {
    let dir = ca_dir(data_dir);
    let from_file = read_ca_files(&dir)?;
    let from_store = match store.ca() {
        Ok(record) => record,
        Err(error) if from_file.is_some() => {
            tracing::warn!(
                "{}; using the CA kept in {}",
                crate::store::error_chain(&error),
                dir.display()
            );
            None
        }
        Err(error) => return Err(error.into()),
    };
    match (from_store, from_file) {
        (Some(stored), Some(file)) => {
            if stored != file {
                anyhow::bail!(
                    "Failed to load the CA: the store at {store_name} and {} hold different CAs; keep the one your agents trust (the fingerprint in enrollment tokens) and move the other aside",
                    dir.display()
                );
            }
            Ok(ca_from_record(&stored)?)
        }
        (Some(stored), None) => {
            let ca = ca_from_record(&stored)?;
            write_ca_files(&dir, &stored)?;
            tracing::info!("copied the CA from the store to {}", dir.display());
            Ok(ca)
        }
        (None, Some(file)) => {
            let ca = ca_from_record(&file)?;
            store.put_ca(&file)?;
            tracing::warn!("the store held no CA: restored it from {}", dir.display());
            Ok(ca)
        }
        (None, None) => {
            let ca = CertificateAuthority::create("server")?;
            let record = CaRecord {
                certificate_pem: ca.certificate_pem().to_string(),
                private_key_pem: ca.private_key_pem(),
            };
            // Of replicas starting together on a new shared store, the
            // first CA stored wins; the others keep that one, not theirs.
            let stored = store.put_ca_if_absent(&record)?;
            write_ca_files(&dir, &stored)?;
            if stored == record {
                Ok(ca)
            } else {
                Ok(ca_from_record(&stored)?)
            }
        }
    }
}

fn ca_from_record(record: &CaRecord) -> anyhow::Result<CertificateAuthority> {
    Ok(CertificateAuthority::from_pem(
        &record.certificate_pem,
        &record.private_key_pem,
    )?)
}

/// The CA kept in `dir`, if both files are there.
fn read_ca_files(dir: &Path) -> anyhow::Result<Option<CaRecord>> {
    let read = |name: &str| -> anyhow::Result<Option<String>> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("Failed to read {}", path.display())),
        }
    };
    match (read(CA_CERTIFICATE_FILE)?, read(CA_KEY_FILE)?) {
        (Some(certificate_pem), Some(private_key_pem)) => Ok(Some(CaRecord {
            certificate_pem,
            private_key_pem,
        })),
        (None, None) => Ok(None),
        _ => anyhow::bail!(
            "Failed to load the CA from {}: one of {CA_CERTIFICATE_FILE} and {CA_KEY_FILE} is missing",
            dir.display()
        ),
    }
}

fn write_ca_files(dir: &Path, record: &CaRecord) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("Failed to create {}", dir.display()))?;
    write_private_file(dir, CA_CERTIFICATE_FILE, record.certificate_pem.as_bytes())?;
    write_private_file(dir, CA_KEY_FILE, record.private_key_pem.as_bytes())
}

/// The bootstrap operator's admin credential, made once:
/// `admin/admin.pem`, `admin/admin.key` and `admin/ca.pem`, readable by the
/// server's user only, and recorded as the operator `admin`
/// (`operators::bootstrap`).
fn write_admin_credential(
    store: &dyn Store,
    ca: &CertificateAuthority,
    data_dir: &Path,
    shared_store: bool,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = admin_dir(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("Failed to create {}", dir.display()))?;
    crate::operators::bootstrap(
        store,
        ca,
        &dir,
        clock.now_unix_ms(),
        shared_store,
        &|name, text| write_private_file(&dir, name, text.as_bytes()),
    )
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

/// Each environment as an earlier run left it, from the store's records and
/// the git mirror, so a restart keeps serving its last good revision even
/// if the branch now points to a broken commit. A server from before
/// environments kept one pointer (`current_revision`): the default
/// environment starts from it.
fn restore_environments(
    store: &dyn Store,
    config: &EnvironmentsConfig,
    sources: &[(String, RolesSource)],
    clock: &dyn Clock,
    interrupt_rollouts: bool,
) -> Environments {
    let legacy = store.current_revision().ok().flatten();
    let restored = config
        .environments()
        .iter()
        .map(|spec| {
            let source = sources.iter().find(|(name, _)| *name == spec.name);
            // A plain folder has no history to go back to.
            let mirror = source.and_then(|(_, source)| match source {
                RolesSource::Git(syncer) => Some(syncer.source().clone()),
                RolesSource::Directory { .. } => None,
            });
            let secrets = source.map_or_else(crate::secrets::ServerSecrets::none, |(_, s)| {
                s.secrets().clone()
            });
            let legacy = (spec.name == config.default_name())
                .then(|| legacy.clone())
                .flatten();
            // Secrets are read again (decrypted, fetched) on a thread of
            // its own: the AWS client blocks, and this may run inside the
            // runtime.
            let environment = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        crate::rollouts::restore_environment(
                            spec,
                            store,
                            mirror.as_ref(),
                            &secrets,
                            legacy,
                            clock.now_unix_ms(),
                            interrupt_rollouts,
                        )
                    })
                    .join()
                    .expect("restoring an environment does not panic")
            });
            (spec.name.clone(), environment)
        })
        .collect();
    Environments::new(config.clone(), restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn start(data_dir: &Path) -> Prepared {
        let source = RolesSource::Directory {
            path: data_dir.join("roles"),
            current: None,
            secrets: crate::secrets::ServerSecrets::none(),
        };
        prepare(data_dir, source, &crate::clock::ManualClock::at(1_000_000)).expect("start")
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_ca_is_kept_owner_only_outside_the_store_and_survives_the_loss_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let first = start(data).ca_fingerprint;
        assert_eq!(mode(&ca_dir(data)), 0o700);
        assert_eq!(mode(&ca_dir(data).join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&ca_dir(data).join(CA_CERTIFICATE_FILE)), 0o600);
        // The store is lost (damaged beyond repair and moved aside).
        std::fs::rename(data.join("db"), data.join("db.damaged")).unwrap();
        let again = start(data);
        assert_eq!(again.ca_fingerprint, first, "the server's identity changed");
        let restored = again
            .store
            .ca()
            .unwrap()
            .expect("the new store holds the CA");
        assert_eq!(
            certificate_fingerprint(&restored.certificate_pem).unwrap(),
            first
        );
    }

    #[test]
    fn a_ca_held_only_by_the_store_is_copied_to_its_owner_only_file_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let ca = CertificateAuthority::create("older server").unwrap();
        {
            let store = crate::store::open(&data.join("db")).unwrap();
            store
                .put_ca(&CaRecord {
                    certificate_pem: ca.certificate_pem().to_string(),
                    private_key_pem: ca.private_key_pem(),
                })
                .unwrap();
        }
        let prepared = start(data);
        assert_eq!(
            prepared.ca_fingerprint,
            certificate_fingerprint(ca.certificate_pem()).unwrap()
        );
        let key = std::fs::read_to_string(ca_dir(data).join(CA_KEY_FILE)).unwrap();
        assert_eq!(key, ca.private_key_pem());
        assert_eq!(mode(&ca_dir(data).join(CA_KEY_FILE)), 0o600);
    }

    #[test]
    fn a_store_and_a_file_holding_different_cas_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        drop(start(data));
        let other = CertificateAuthority::create("other").unwrap();
        write_ca_files(
            &ca_dir(data),
            &CaRecord {
                certificate_pem: other.certificate_pem().to_string(),
                private_key_pem: other.private_key_pem(),
            },
        )
        .unwrap();
        let source = RolesSource::Directory {
            path: data.join("roles"),
            current: None,
            secrets: crate::secrets::ServerSecrets::none(),
        };
        let error =
            prepare(data, source, &crate::clock::ManualClock::at(1_000_000)).expect_err("two CAs");
        assert!(
            format!("{error:#}").contains("hold different CAs"),
            "{error:#}"
        );
    }
}
