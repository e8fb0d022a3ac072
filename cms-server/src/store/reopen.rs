//! A store that recovers from a failing disk by itself: [`Reopening`]
//! wraps the engine behind the [`Store`] trait, notes the first write that
//! fails for a cause outside the server (a full disk, an I/O error), and
//! reopens the engine once the disk takes writes again.
//!
//! Why reopen: sled keeps the first I/O error of its log as a "global
//! error" and returns it for every later write of that open database; only
//! opening it again clears it (sled 0.34.7, `config.rs` `global_error`,
//! reset only in `PageCache::start`). So after `ENOSPC` the same handle
//! never writes again, even once space is freed.
//!
//! While writes fail, reads keep using the open handle (sled serves them
//! from its cache and its files), so agents keep getting catalogs and
//! callers authenticate; every write, and [`Store::check_writable`] (what
//! `/healthz` calls), first tries to recover: it writes and syncs a probe
//! file of [`PROBE_BYTES`] next to the database, and only when that works
//! drops the old handle and opens a new one. A probe that fails leaves the
//! old handle in place, so a still-full disk costs one failed small write
//! per attempt and nothing else.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use super::{
    AuditRecord, CaRecord, CertificateRecord, DashboardTokenRecord, DashboardTokenRevocation,
    NodeRecord, OperatorRecord, ReportWrite, RevisionRecord, RunSummary, SharedStore, Store,
    StoreError, StoredReport, TokenRecord, TriggerRecord,
};

/// How much the probe writes before a reopen: about what sled needs to
/// start (a snapshot and a fresh log segment of 512 KiB).
pub const PROBE_BYTES: usize = 1024 * 1024;

/// The name of the probe file in the database directory.
const PROBE_FILE: &str = ".cms-write-probe";

type Opener = dyn Fn(&Path) -> Result<SharedStore, StoreError> + Send + Sync;

/// A store that notes write failures of its medium and reopens the engine
/// when the medium works again. See the module docs.
pub struct Reopening {
    path: PathBuf,
    open: Box<Opener>,
    /// The open engine; `None` after a reopen failed.
    current: RwLock<Option<SharedStore>>,
    /// Why writes fail, while they do: the medium's error as text.
    failure: Mutex<Option<String>>,
    /// One recovery at a time.
    recovering: Mutex<()>,
}

impl std::fmt::Debug for Reopening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening")
            .field("path", &self.path)
            .field("failure", &*lock(&self.failure))
            .finish_non_exhaustive()
    }
}

impl Reopening {
    /// Opens the store in `path` with `open`, which is called again to
    /// reopen it after a failure.
    pub fn open(
        path: &Path,
        open: impl Fn(&Path) -> Result<SharedStore, StoreError> + Send + Sync + 'static,
    ) -> Result<Reopening, StoreError> {
        let store = open(path)?;
        Ok(Reopening {
            path: path.to_path_buf(),
            open: Box::new(open),
            current: RwLock::new(Some(store)),
            failure: Mutex::new(None),
            recovering: Mutex::new(()),
        })
    }

    /// Why writes fail now, if they do (without trying to recover).
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn current(&self) -> Option<SharedStore> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The engine for a read: the open one, even while writes fail.
    fn for_read(&self) -> Result<SharedStore, StoreError> {
        match self.current() {
            Some(store) => Ok(store),
            None => self.recover(),
        }
    }

    /// The engine for a write: recovered first if writes failed.
    fn for_write(&self) -> Result<SharedStore, StoreError> {
        if lock(&self.failure).is_none()
            && let Some(store) = self.current()
        {
            return Ok(store);
        }
        self.recover()
    }

    /// Notes a failure of the medium in `result`, if it is one.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let result = result.map_err(|mut error| {
            if let StoreError::Unwritable { path, .. } = &mut error
                && path.as_os_str().is_empty()
            {
                path.clone_from(&self.path);
            }
            error
        });
        if let Err(error) = &result
            && let Some(cause) = error.medium_failure()
        {
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                tracing::error!(
                    "the store at {} cannot write: {cause}; it recovers by itself once the disk takes writes again",
                    self.path.display()
                );
            }
            *failure = Some(cause);
        }
        result
    }

    fn read<T>(
        &self,
        op: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let store = self.for_read()?;
        self.note(op(&*store))
    }

    fn write<T>(
        &self,
        op: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let store = self.for_write()?;
        self.note(op(&*store))
    }

    /// Probes the disk and, when it takes writes, opens the engine anew.
    fn recover(&self) -> Result<SharedStore, StoreError> {
        let _one_at_a_time = lock(&self.recovering);
        if lock(&self.failure).is_none()
            && let Some(store) = self.current()
        {
            // Another caller recovered meanwhile.
            return Ok(store);
        }
        if let Err(source) = probe(&self.path) {
            *lock(&self.failure) = Some(source.to_string());
            return Err(StoreError::Unwritable {
                action: "write to the store".into(),
                path: self.path.clone(),
                source,
            });
        }
        // sled's lock on its files goes with the last handle; `open` waits
        // for callers still holding the old one to finish.
        let old = self
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(old);
        match (self.open)(&self.path) {
            Ok(store) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(store.clone());
                *lock(&self.failure) = None;
                tracing::info!("the store at {} writes again", self.path.display());
                Ok(store)
            }
            Err(error) => {
                let cause = error
                    .medium_failure()
                    .unwrap_or_else(|| super::error_chain(&error));
                *lock(&self.failure) = Some(cause);
                Err(error)
            }
        }
    }
}

/// Writes and syncs [`PROBE_BYTES`] in `dir`, then removes the file.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for Reopening {
    fn check_writable(&self) -> Result<(), StoreError> {
        if lock(&self.failure).is_none() && self.current().is_some() {
            return Ok(());
        }
        self.recover().map(|_| ())
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_node(node))
    }

    fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.read(|s| s.node(id))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read(|s| s.nodes())
    }

    fn update_node_with(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, StoreError> {
        self.write(|s| s.update_node_with(id, change))
    }

    fn record_enrollment(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
    ) -> Result<(), StoreError> {
        self.write(|s| s.record_enrollment(certificate, node))
    }

    fn claim_name(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
        expected_serial: Option<&str>,
        clear_history: bool,
    ) -> Result<(), StoreError> {
        self.write(|s| s.claim_name(certificate, node, expected_serial, clear_history))
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|s| s.token(id))
    }

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        self.read(|s| s.operator(name))
    }

    fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.read(|s| s.operators())
    }

    fn swap_operator(
        &self,
        expected: Option<&OperatorRecord>,
        new: &OperatorRecord,
    ) -> Result<bool, StoreError> {
        self.write(|s| s.swap_operator(expected, new))
    }

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.write(|s| s.append_audit(record))
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(|s| s.audit(limit))
    }

    fn touch_nodes_with_facts(
        &self,
        seen: &[(String, u64, Option<serde_json::Value>)],
    ) -> Result<usize, StoreError> {
        self.write(|s| s.touch_nodes_with_facts(seen))
    }

    fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|s| s.remove_node(id))
    }

    fn put_report(&self, report: &StoredReport) -> Result<ReportWrite, StoreError> {
        self.write(|s| s.put_report(report))
    }

    fn record_run(
        &self,
        report: &StoredReport,
        summary: &RunSummary,
    ) -> Result<ReportWrite, StoreError> {
        self.write(|s| s.record_run(report, summary))
    }

    fn report(&self, node_id: &str, run_id: &str) -> Result<Option<StoredReport>, StoreError> {
        self.read(|s| s.report(node_id, run_id))
    }

    fn reports(&self, node_id: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        self.read(|s| s.reports(node_id, limit))
    }

    fn prune_reports(&self, older_than_unix_ms: u64) -> Result<usize, StoreError> {
        self.write(|s| s.prune_reports(older_than_unix_ms))
    }

    fn put_revision(&self, revision: &RevisionRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_revision(revision))
    }

    fn revision(&self, commit: &str) -> Result<Option<RevisionRecord>, StoreError> {
        self.read(|s| s.revision(commit))
    }

    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        self.read(|s| s.revisions())
    }

    fn set_current_revision(&self, commit: &str) -> Result<(), StoreError> {
        self.write(|s| s.set_current_revision(commit))
    }

    fn current_revision(&self) -> Result<Option<String>, StoreError> {
        self.read(|s| s.current_revision())
    }

    fn put_ca(&self, ca: &CaRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_ca(ca))
    }

    fn ca(&self) -> Result<Option<CaRecord>, StoreError> {
        self.read(|s| s.ca())
    }

    fn put_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_certificate(certificate))
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.read(|s| s.certificate(serial))
    }

    fn revoke_node(&self, node_id: &str) -> Result<Vec<String>, StoreError> {
        self.write(|s| s.revoke_node(node_id))
    }

    fn is_revoked(&self, serial: &str) -> Result<bool, StoreError> {
        self.read(|s| s.is_revoked(serial))
    }

    fn prune_certificates(&self, before_unix: u64) -> Result<usize, StoreError> {
        self.write(|s| s.prune_certificates(before_unix))
    }

    fn put_trigger(&self, trigger: &TriggerRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_trigger(trigger))
    }

    fn trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError> {
        self.read(|s| s.trigger(id))
    }

    fn triggers(&self) -> Result<Vec<TriggerRecord>, StoreError> {
        self.read(|s| s.triggers())
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_token(token))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|s| s.tokens())
    }

    fn consume_token(&self, id: &str, now_unix: u64) -> Result<TokenRecord, StoreError> {
        self.write(|s| s.consume_token(id, now_unix))
    }

    fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|s| s.remove_token(id))
    }

    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|s| s.put_setting(name, value))
    }

    fn open_session(
        &self,
        hash: &str,
        token_hash: &str,
        expires_unix_ms: u64,
        now_unix_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(|s| s.open_session(hash, token_hash, expires_unix_ms, now_unix_ms))
    }

    fn session_is_valid(&self, hash: &str, now_unix_ms: u64) -> Result<bool, StoreError> {
        self.read(|s| s.session_is_valid(hash, now_unix_ms))
    }

    fn close_session(&self, hash: &str) -> Result<bool, StoreError> {
        self.write(|s| s.close_session(hash))
    }

    fn add_dashboard_token(&self, token: &DashboardTokenRecord) -> Result<bool, StoreError> {
        self.write(|s| s.add_dashboard_token(token))
    }

    fn dashboard_token_is_valid(&self, hash: &str) -> Result<bool, StoreError> {
        self.read(|s| s.dashboard_token_is_valid(hash))
    }

    fn dashboard_tokens(&self) -> Result<Vec<DashboardTokenRecord>, StoreError> {
        self.read(|s| s.dashboard_tokens())
    }

    fn revoke_dashboard_token(
        &self,
        hash: &str,
        revoked_unix_ms: u64,
        revoked_by: &str,
    ) -> Result<DashboardTokenRevocation, StoreError> {
        self.write(|s| s.revoke_dashboard_token(hash, revoked_unix_ms, revoked_by))
    }

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|s| s.get_setting(name))
    }

    fn settings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|s| s.settings())
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        self.read(|s| s.certificates())
    }

    fn all_reports(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredReport>, StoreError> {
        self.read(|s| s.all_reports(after, limit))
    }

    fn put_ca_if_absent(&self, ca: &CaRecord) -> Result<CaRecord, StoreError> {
        self.write(|s| s.put_ca_if_absent(ca))
    }
}
