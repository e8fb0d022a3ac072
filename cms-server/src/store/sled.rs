//! The store in one embedded sled database, in a directory of the
//! server's data folder: the only module that names sled types.
//!
//! One sled tree per keyspace of the key layout (see the parent module).
//!
//! # Durability
//!
//! Every mutating method flushes before it returns, so whatever the server
//! has acknowledged to a client survives a restart, a SIGKILL and, as far
//! as the disk honours fsync, a power cut or kernel crash.
//! `tests/store_crash.rs` kills a writer with SIGKILL under load and checks
//! that nothing acknowledged is lost.
//!
//! sled's own `flush` is not enough for the power cut: on Linux it waits
//! for its log with `sync_file_range`, which writes neither the file's
//! metadata nor the disk's write cache, and it never fsyncs the files in
//! `blobs/` where it keeps values above about 128 KiB (sled issues #1452
//! and #1077, open). So after sled's flush the store fsyncs the log, any
//! new blob file and the blob directory itself (`Durability`). A SIGKILL
//! test cannot see that difference, since the kernel keeps what a killed
//! process wrote; it rests on reading sled 0.34.7's source
//! (`iobuf.rs`, `blob_io.rs`) and on `strace`.
//!
//! The cost is two or three syncs per write. On the 2-core development VM
//! (ext4 on a virtual disk, debug build) a `put_report` took 0.35 ms with
//! sled's flush alone and 0.46 ms with the added fsyncs; a physical disk
//! that really empties its write cache on fsync costs a millisecond or more
//! per fsync, a slow disk tens. Writers flushing at the same time share one
//! flush (`GroupCommit`); never acknowledge before the flush.
//!
//! Run reports are not flushed through sled: their bodies are appended
//! to the store's report log (`report_log.rs`, in `report-log/` of the
//! database directory) and synced there, shared by the writers of the
//! moment, and only then does sled get a pointer to each, unflushed. Every
//! flush of sled first notes how far the log is applied
//! (`report_log_applied` in `meta`), and opening the store applies the
//! entries after that point again, so a crash loses no acknowledged report
//! and brings back none that a flushed removal or prune took away.
//!
//! The database directory is created owner-only (0700) when it does not
//! exist yet, because it holds the CA's private key; an existing
//! directory's permissions are left as they are.
//!
//! # Concurrency
//!
//! `SledStore` is `Clone` (sled's handles are reference-counted) and
//! `Send + Sync`. sled calls are synchronous: a read takes microseconds, a
//! write ends in an fsync that blocks for milliseconds. Read-modify-write
//! uses compare-and-swap loops (`consume_token`, `update_node_with`,
//! `revoke_dashboard_token`) and
//! sled transactions (`put_report`, `record_run`, `set_current_revision`,
//! `remove_node`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::sled::Transactional;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::report_log::{Appended, Pointer, Position, ReportLog};
use super::{
    AuditRecord, BackendError, CaRecord, CertificateRecord, DashboardTokenRecord,
    DashboardTokenRevocation, FORMAT_VERSION, NodeRecord, OperatorRecord, ReportWrite,
    RevisionRecord, RunSummary, Store, StoreError, StoredReport, TokenRecord, TriggerRecord,
    check_node_id, note_run,
};

/// The server's storage in one sled database. Cheap to clone; all clones
/// share one database.
#[derive(Clone)]
pub struct SledStore {
    path: Arc<Path>,
    db: ::sled::Db,
    durability: Arc<Durability>,
    flushes: Arc<GroupCommit>,
    /// The bodies of the reports (`report_log`); `reports` holds pointers.
    report_log: Arc<ReportLog>,
    /// Syncs of the report log, shared as `flushes` are.
    log_syncs: Arc<GroupCommit>,
    meta: ::sled::Tree,
    nodes: ::sled::Tree,
    reports: ::sled::Tree,
    report_index: ::sled::Tree,
    revisions: ::sled::Tree,
    certificates: ::sled::Tree,
    tokens: ::sled::Tree,
    settings: ::sled::Tree,
    /// Dashboard sessions: hash → expiry (unix ms, big-endian).
    sessions: ::sled::Tree,
    /// Dashboard tokens: hash → `DashboardTokenRecord`.
    dashboard_tokens: ::sled::Tree,
    triggers: ::sled::Tree,
    operators: ::sled::Tree,
    audit: ::sled::Tree,
}

impl fmt::Debug for SledStore {
    /// Only the path: sled's own `Debug` walks every page of a tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl SledStore {
    /// Revokes the certificates of `node_id` but `keep`, without flushing.
    fn revoke_certificates(
        &self,
        node_id: &str,
        keep: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut revoked = Vec::new();
        for entry in self.certificates.iter() {
            let (key, mut value) = entry.map_err(|e| backend("list certificates".into(), e))?;
            loop {
                let mut certificate: CertificateRecord = decode(CERTIFICATES, &key, &value)?;
                if certificate.node_id != node_id
                    || certificate.revoked
                    || keep == Some(certificate.serial.as_str())
                {
                    break;
                }
                certificate.revoked = true;
                let new_value = encode("certificate record", &certificate)?;
                let swapped = self
                    .certificates
                    .compare_and_swap(&key, Some(&value), Some(new_value))
                    .map_err(|e| {
                        backend(format!("revoke certificate {}", certificate.serial), e)
                    })?;
                match swapped {
                    Ok(()) => {
                        revoked.push(certificate.serial);
                        break;
                    }
                    // Changed meanwhile: look again at what is there now.
                    Err(conflict) => match conflict.current {
                        Some(current) => value = current,
                        None => break,
                    },
                }
            }
        }
        Ok(revoked)
    }

    /// Opens the database in `dir`, creating it (owner-only) if needed.
    /// Only one process can hold a database open at a time: while another
    /// does, this waits a few seconds (see `LOCK_WAIT`) and then fails with
    /// `StoreError::Locked`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, super::report_log::SEGMENT_BYTES)
    }

    /// `open`, with report log segments closed at `segment_bytes`.
    fn open_with(dir: &Path, segment_bytes: u64) -> Result<SledStore, StoreError> {
        create_private_directory(dir)?;
        let db = open_database(dir, LOCK_WAIT)?;
        let durability = Durability::open(dir).map_err(|source| StoreError::Sync {
            path: dir.to_path_buf(),
            source,
        })?;
        let open_error = |source| StoreError::Open {
            path: dir.to_path_buf(),
            source: BackendError::new(source),
        };
        let tree = |name: &str| db.open_tree(name).map_err(open_error);
        let report_log =
            ReportLog::open_with(&dir.join(REPORT_LOG), segment_bytes).map_err(|source| {
                StoreError::Unwritable {
                    action: "open the report log".into(),
                    path: dir.join(REPORT_LOG),
                    source,
                }
            })?;
        let store = SledStore {
            path: Arc::from(dir),
            meta: tree(META)?,
            nodes: tree(NODES)?,
            reports: tree(REPORTS)?,
            report_index: tree(REPORT_INDEX)?,
            revisions: tree(REVISIONS)?,
            certificates: tree(CERTIFICATES)?,
            tokens: tree(TOKENS)?,
            settings: tree(SETTINGS)?,
            sessions: tree(SESSIONS)?,
            dashboard_tokens: tree(DASHBOARD_TOKENS)?,
            triggers: tree(TRIGGERS)?,
            operators: tree(OPERATORS)?,
            audit: tree(AUDIT)?,
            db,
            durability: Arc::new(durability),
            flushes: Arc::new(GroupCommit::default()),
            report_log: Arc::new(report_log),
            log_syncs: Arc::new(GroupCommit::default()),
        };
        store.check_format()?;
        store.replay_report_log()?;
        Ok(store)
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write so far durable. Writers that flush at the same
    /// time share one flush (`GroupCommit`): 10,000 enrollments or reports
    /// arriving together cost a few dozen flushes, not 10,000 threads taking
    /// turns at the log.
    fn flush(&self) -> Result<(), StoreError> {
        self.flushes.run(|| self.flush_now())
    }

    /// One flush: sled's writes its log (one for all trees) and waits for it
    /// with `sync_file_range`; `Durability` then adds the fsyncs sled leaves
    /// out (see the module docs). It first notes how far the report log is
    /// applied, which the flush makes durable with what it applied.
    fn flush_now(&self) -> Result<(), StoreError> {
        let applied = self.report_log.applied_through();
        self.meta
            .insert(REPORT_LOG_APPLIED, &applied.to_bytes())
            .map_err(|e| backend("note how far the report log is applied".into(), e))?;
        self.db
            .flush()
            .map_err(|e| backend("flush the store to disk".into(), e))?;
        self.durability.sync().map_err(|source| StoreError::Sync {
            path: self.path.to_path_buf(),
            source,
        })
    }

    /// Records the format in a new database and refuses one written in a
    /// format this code does not read.
    fn check_format(&self) -> Result<(), StoreError> {
        let found = self
            .meta
            .get(FORMAT)
            .map_err(|e| backend("read the store format".into(), e))?;
        match found {
            Some(found) if found.as_ref() == FORMAT_VERSION.as_bytes() => Ok(()),
            Some(found) => Err(StoreError::UnsupportedFormat {
                path: self.path.to_path_buf(),
                found: String::from_utf8_lossy(&found).into_owned(),
            }),
            None => {
                self.meta
                    .insert(FORMAT, FORMAT_VERSION.as_bytes())
                    .map_err(|e| backend("write the store format".into(), e))?;
                self.flush()
            }
        }
    }

    /// Applies again the report log's entries after the point the last
    /// flush recorded (a crash may have lost sled's copy of their
    /// pointers), then flushes. Applying an entry twice stores it once.
    fn replay_report_log(&self) -> Result<(), StoreError> {
        let from = self.report_log_applied()?.unwrap_or(Position {
            segment: 0,
            offset: 0,
        });
        if from > self.report_log.end() {
            // The log was cut after what the last flush counted as applied
            // (entries whose sync failed): count from its end again, or the
            // next entries, written where those were, would be skipped.
            return self.flush();
        }
        let entries = self
            .report_log
            .entries_from(from)
            .map_err(|source| self.log_error("read the report log", source))?;
        if entries.is_empty() {
            return Ok(());
        }
        for (pointer, payload) in &entries {
            let entry: LogEntry = decode(REPORT_LOG, &pointer.to_bytes(), payload)?;
            self.apply_logged(&entry.report, entry.summary.as_ref(), Some(*pointer))?;
        }
        tracing::info!(
            "applied {} reports from the report log that the store had not flushed",
            entries.len()
        );
        self.flush()
    }

    /// How far the report log is applied, as the last flush recorded it.
    fn report_log_applied(&self) -> Result<Option<Position>, StoreError> {
        Ok(self
            .meta
            .get(REPORT_LOG_APPLIED)
            .map_err(|e| backend("read how far the report log is applied".into(), e))?
            .and_then(|bytes| Position::from_bytes(&bytes)))
    }

    /// The key and value of the report `index_key` names, if both are
    /// there (a pruned report may leave its index entry behind).
    fn indexed_report(
        &self,
        index_key: &[u8],
    ) -> Result<Option<(::sled::IVec, ::sled::IVec)>, ::sled::Error> {
        let Some(key) = self.report_index.get(index_key)? else {
            return Ok(None);
        };
        Ok(self.reports.get(&key)?.map(|value| (key, value)))
    }

    /// Reads node `id`, lets `change` change it (false: leave it as it
    /// is) and compare-and-swaps it in, from the read again when another
    /// writer changed it meanwhile; not flushed. The record as written, or
    /// `None` when there is no such node or `change` left it.
    fn swap_node(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut NodeRecord) -> bool,
    ) -> Result<Option<NodeRecord>, StoreError> {
        loop {
            let Some(current) = self
                .nodes
                .get(id.as_bytes())
                .map_err(|e| backend(format!("read node {id}"), e))?
            else {
                return Ok(None);
            };
            let mut node: NodeRecord = decode(NODES, id.as_bytes(), &current)?;
            if !change(&mut node) {
                return Ok(None);
            }
            let value = encode("node record", &node)?;
            let swapped = self
                .nodes
                .compare_and_swap(id.as_bytes(), Some(&current), Some(value))
                .map_err(|e| backend(format!("write node {id}"), e))?;
            if swapped.is_ok() {
                return Ok(Some(node));
            }
        }
    }

    fn log_error(&self, action: &str, source: std::io::Error) -> StoreError {
        StoreError::Unwritable {
            action: action.to_string(),
            path: self.report_log.dir().to_path_buf(),
            source,
        }
    }

    /// Makes the report log durable up to what was appended before this
    /// call (one `fdatasync` for the writers of the moment).
    fn sync_report_log(&self) -> Result<(), StoreError> {
        self.log_syncs.run(|| {
            self.report_log
                .sync()
                .map_err(|source| self.log_error("make a report durable", source))
        })
    }

    /// Stores a report (and with `summary`, the node's last run): its body
    /// appended to the report log and synced, then its pointer, index
    /// entry and the node's summary written to sled, not flushed
    /// (`apply_logged`: the log is what makes it durable). A report already
    /// stored, or on its way, is not written again.
    fn write_report(
        &self,
        report: &StoredReport,
        summary: Option<&RunSummary>,
    ) -> Result<ReportWrite, StoreError> {
        check_node_id(&report.node_id)?;
        let index_key = report_index_key(&report.node_id, &report.run_id);
        let payload = encode("report", &LogEntryRef { report, summary })?;
        let stored = || {
            self.indexed_report(&index_key)
                .map(|found| found.is_some())
                .map_err(|e| {
                    backend(
                        format!("read report {} of node {}", report.run_id, report.node_id),
                        e,
                    )
                })
        };
        let appended = self.report_log.append(
            &report.node_id,
            &report.run_id,
            &payload,
            stored,
            |source| self.log_error("write a report to the report log", source),
        )?;
        let pointer = match appended {
            // Its entry was synced before sled had it; the node is noted
            // again.
            None => return self.apply_logged(report, summary, None),
            // Acknowledged again once the first copy is durable.
            Some(Appended::InFlight) => {
                self.sync_report_log()?;
                return self.apply_logged(report, summary, None);
            }
            Some(Appended::Written(pointer)) => pointer,
        };
        let result = self
            .sync_report_log()
            .and_then(|()| self.apply_logged(report, summary, Some(pointer)));
        self.report_log.applied(pointer.at);
        if result.is_ok() && pointer.at.offset == 0 {
            // A new segment: record how far the log is applied, so that a
            // start replays at most about one segment.
            self.flush()?;
        }
        result
    }

    /// Puts a logged report's pointer, index entry and (with `summary`) the
    /// node's last run into sled; not flushed. Without a pointer (a report
    /// stored already), notes the node alone.
    ///
    /// Plain writes, not a sled transaction: every sled transaction seals
    /// and writes sled's I/O buffer (`pin_log`), which cost more than the
    /// rest of the report together. The log makes it whole instead: an
    /// entry counts as applied (`ReportLog::applied`) only after all three
    /// writes, so a crash between them is replayed at the next start. The
    /// pointer is written before the index entry, so that whoever finds
    /// the one finds the other.
    fn apply_logged(
        &self,
        report: &StoredReport,
        summary: Option<&RunSummary>,
        pointer: Option<Pointer>,
    ) -> Result<ReportWrite, StoreError> {
        check_node_id(&report.node_id)?;
        let write_error = |e| {
            backend(
                format!("write report {} of node {}", report.run_id, report.node_id),
                e,
            )
        };
        if let Some(summary) = summary {
            // The node may change meanwhile (its facts, a revocation): noted
            // on the record as it is then.
            self.swap_node(&report.node_id, &mut |node| {
                note_run(node, report, summary);
                true
            })?;
        }
        let Some(pointer) = pointer else {
            return Ok(ReportWrite::AlreadyStored);
        };
        let index_key = report_index_key(&report.node_id, &report.run_id);
        if self
            .indexed_report(&index_key)
            .map_err(write_error)?
            .is_some()
        {
            return Ok(ReportWrite::AlreadyStored);
        }
        let key = report_key(&report.node_id, report.received_unix_ms, &report.run_id);
        self.reports
            .insert(key.as_slice(), &pointer.to_bytes()[..])
            .map_err(write_error)?;
        self.report_index
            .insert(index_key.as_slice(), key.as_slice())
            .map_err(write_error)?;
        Ok(ReportWrite::Stored)
    }

    /// Removes the report log's closed segments that no stored report points
    /// into (pruned, or of removed nodes), keeping those a start would
    /// replay (from the point the last flush recorded).
    fn remove_unreferenced_log_segments(&self) -> Result<usize, StoreError> {
        let mut referenced = BTreeSet::new();
        for value in self.reports.iter().values() {
            let value = value.map_err(|e| backend("list reports".into(), e))?;
            if let Some(pointer) = Pointer::from_bytes(&value) {
                referenced.insert(pointer.at.segment);
            }
        }
        let keep_from = self.report_log_applied()?.map_or(0, |at| at.segment);
        self.report_log
            .remove_unreferenced(keep_from, &referenced)
            .map_err(|source| self.log_error("remove pruned report log segments", source))
    }

    /// A stored report: JSON in sled (stored before the report log), or a
    /// pointer into the log. `None` when the log's segment was pruned
    /// meanwhile.
    fn read_report(&self, key: &[u8], value: &[u8]) -> Result<Option<StoredReport>, StoreError> {
        let Some(pointer) = Pointer::from_bytes(value) else {
            return decode(REPORTS, key, value).map(Some);
        };
        let payload = self.report_log.read(pointer).map_err(|source| {
            self.log_error(
                &format!("read report {} from the report log", display_key(key)),
                source,
            )
        })?;
        payload
            .map(|payload| decode::<LogEntry>(REPORT_LOG, key, &payload).map(|entry| entry.report))
            .transpose()
    }
}

/// A report log entry as written.
#[derive(Serialize)]
struct LogEntryRef<'a> {
    report: &'a StoredReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<&'a RunSummary>,
}

/// A report log entry as read.
#[derive(serde::Deserialize)]
struct LogEntry {
    report: StoredReport,
    #[serde(default)]
    summary: Option<RunSummary>,
}

impl Store for SledStore {
    // Nodes.

    /// Inserts or replaces a node.
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        insert_record(&self.nodes, "node record", "node", &node.id, node)?;
        self.flush()
    }

    fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        get_record(&self.nodes, NODES, "node", id)
    }

    /// All nodes, ordered by id.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        list_records(&self.nodes, NODES, "nodes")
    }

    /// Changes an existing node atomically: `change` sees the current record
    /// and may run more than once if another writer changed the node
    /// meanwhile. Returns the record as written, or `None` (and writes
    /// nothing) when there is no such node.
    fn update_node_with(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, StoreError> {
        let written = self.swap_node(id, &mut |node| {
            change(node);
            // The id is the key: a change cannot move the record elsewhere.
            node.id = id.to_string();
            true
        })?;
        if written.is_some() {
            self.flush()?;
        }
        Ok(written)
    }

    /// Records an enrollment: the certificate issued and the node record,
    /// together in one transaction and one flush.
    fn record_enrollment(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
    ) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        let certificate_value = encode("certificate record", certificate)?;
        let node_value = encode("node record", node)?;
        (&self.certificates, &self.nodes)
            .transaction(|(certificates, nodes)| {
                certificates.insert(certificate.serial.as_bytes(), certificate_value.clone())?;
                nodes.insert(node.id.as_bytes(), node_value.clone())?;
                Ok::<_, TxError>(())
            })
            .map_err(|e| transaction_error(format!("record the enrollment of {}", node.id), e))?;
        self.flush()
    }

    /// Takes the name in one transaction over the certificates, the nodes
    /// and (with `clear_history`) the reports: the node record is read
    /// again inside it, so of two claims that expected the same record one
    /// aborts. Then the other certificates of the name are revoked, and
    /// everything is flushed once.
    fn claim_name(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
        expected_serial: Option<&str>,
        clear_history: bool,
    ) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        let id = node.id.as_str();
        let certificate_value = encode("certificate record", certificate)?;
        let node_value = encode("node record", node)?;
        let (report_keys, index_keys) = if clear_history {
            let prefix = node_prefix(id);
            let list_error = |e| backend(format!("list the reports of node {id}"), e);
            (
                self.reports
                    .scan_prefix(&prefix)
                    .keys()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(list_error)?,
                self.report_index
                    .scan_prefix(&prefix)
                    .keys()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(list_error)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        (
            &self.certificates,
            &self.nodes,
            &self.reports,
            &self.report_index,
        )
            .transaction(|(certificates, nodes, reports, index)| {
                let held = match nodes.get(id.as_bytes())? {
                    Some(value) => match decode::<NodeRecord>(NODES, id.as_bytes(), &value) {
                        Ok(current) => Some(current.certificate_serial),
                        Err(error) => return abort(error),
                    },
                    None => None,
                };
                if held.as_deref() != expected_serial {
                    return abort(StoreError::NameClaimed { id: id.to_string() });
                }
                for key in &report_keys {
                    reports.remove(key)?;
                }
                for key in &index_keys {
                    index.remove(key)?;
                }
                certificates.insert(certificate.serial.as_bytes(), certificate_value.clone())?;
                nodes.insert(id.as_bytes(), node_value.clone())?;
                Ok::<_, TxError>(())
            })
            .map_err(|e| transaction_error(format!("record the enrollment of {id}"), e))?;
        if clear_history {
            self.revoke_certificates(id, Some(&certificate.serial))?;
        }
        self.flush()
    }

    /// The same, also replacing the facts of nodes that sent new ones (the
    /// facts are informational: catalogs are compiled from the facts of
    /// each request, so they may wait for the batch like last-seen times).
    fn touch_nodes_with_facts(
        &self,
        seen: &[(String, u64, Option<serde_json::Value>)],
    ) -> Result<usize, StoreError> {
        let mut touched = 0;
        for (id, at, facts) in seen {
            if self
                .swap_node(id, &mut |node| node.note_seen(*at, facts.as_ref()))?
                .is_some()
            {
                touched += 1;
            }
        }
        if touched > 0 {
            self.flush()?;
        }
        Ok(touched)
    }

    /// Removes a node and all its reports. Returns whether the node existed.
    /// Its certificates stay, so that a revocation outlives the node.
    fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
        check_node_id(id)?;
        let prefix = node_prefix(id);
        let list_error = |e| backend(format!("list the reports of node {id}"), e);
        let report_keys = self
            .reports
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(list_error)?;
        let index_keys = self
            .report_index
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(list_error)?;
        // A report put while this runs may survive; it is removed with the
        // next call, or by pruning.
        let existed = (&self.nodes, &self.reports, &self.report_index)
            .transaction(|(nodes, reports, index)| {
                for key in &report_keys {
                    reports.remove(key)?;
                }
                for key in &index_keys {
                    index.remove(key)?;
                }
                Ok::<_, TxError>(nodes.remove(id.as_bytes())?.is_some())
            })
            .map_err(|e| transaction_error(format!("remove node {id}"), e))?;
        self.flush()?;
        Ok(existed)
    }

    // Reports.

    /// Stores a report unless the same (node, run id) is already stored, in
    /// which case the stored copy (and its received time) stays. Either way
    /// the report is on disk when this returns, so the caller may
    /// acknowledge it.
    fn put_report(&self, report: &StoredReport) -> Result<ReportWrite, StoreError> {
        self.write_report(report, None)
    }

    /// The report, its index entry and the node's summary: the body
    /// appended to the report log and synced (one sync for the reports of
    /// the moment), the rest written to sled after it (`write_report`).
    fn record_run(
        &self,
        report: &StoredReport,
        summary: &RunSummary,
    ) -> Result<ReportWrite, StoreError> {
        self.write_report(report, Some(summary))
    }

    fn report(&self, node_id: &str, run_id: &str) -> Result<Option<StoredReport>, StoreError> {
        check_node_id(node_id)?;
        let read_error = |e| backend(format!("read report {run_id} of node {node_id}"), e);
        let index_key = report_index_key(node_id, run_id);
        match self.indexed_report(&index_key).map_err(read_error)? {
            Some((key, value)) => self.read_report(&key, &value),
            None => Ok(None),
        }
    }

    /// A node's reports, newest first, at most `limit` of them.
    fn reports(&self, node_id: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        check_node_id(node_id)?;
        self.reports
            .scan_prefix(node_prefix(node_id))
            .take(limit)
            .filter_map(|entry| {
                let read = entry
                    .map_err(|e| backend(format!("list the reports of node {node_id}"), e))
                    .and_then(|(key, value)| self.read_report(&key, &value));
                read.transpose()
            })
            .collect()
    }

    /// Removes every report received before `older_than_unix_ms`, of all
    /// nodes. Returns how many it removed.
    fn prune_reports(&self, older_than_unix_ms: u64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for key in self.reports.iter().keys() {
            let key = key.map_err(|e| backend("list reports".into(), e))?;
            let Some((node_id, received_unix_ms, run_id)) = parse_report_key(&key) else {
                return Err(StoreError::CorruptKey {
                    tree: REPORTS,
                    key: display_key(&key),
                });
            };
            if received_unix_ms < older_than_unix_ms {
                let mut index_key = node_id.to_vec();
                index_key.push(0);
                index_key.extend_from_slice(run_id);
                expired.push((key.to_vec(), index_key));
            }
        }
        // Chunks keep each transaction small; each chunk is atomic, and a
        // crash between chunks leaves a consistent, partly pruned store.
        for chunk in expired.chunks(512) {
            (&self.reports, &self.report_index)
                .transaction(|(reports, index)| {
                    for (key, index_key) in chunk {
                        reports.remove(key.as_slice())?;
                        if index.get(index_key)?.as_deref() == Some(key.as_slice()) {
                            index.remove(index_key.as_slice())?;
                        }
                    }
                    Ok::<_, TxError>(())
                })
                .map_err(|e| transaction_error("prune reports".into(), e))?;
        }
        self.flush()?;
        self.remove_unreferenced_log_segments()?;
        Ok(expired.len())
    }

    // Revisions.

    /// Inserts or replaces the record of a synced commit.
    fn put_revision(&self, revision: &RevisionRecord) -> Result<(), StoreError> {
        insert_record(
            &self.revisions,
            "revision record",
            "revision",
            &revision.commit,
            revision,
        )?;
        self.flush()
    }

    fn revision(&self, commit: &str) -> Result<Option<RevisionRecord>, StoreError> {
        get_record(&self.revisions, REVISIONS, "revision", commit)
    }

    /// All recorded revisions, most recently synced first.
    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        let mut revisions: Vec<RevisionRecord> =
            list_records(&self.revisions, REVISIONS, "revisions")?;
        revisions.sort_by(|a, b| (b.synced_unix_ms, &a.commit).cmp(&(a.synced_unix_ms, &b.commit)));
        Ok(revisions)
    }

    /// Makes `commit` the revision the server serves. Only a recorded,
    /// accepted revision can become current.
    fn set_current_revision(&self, commit: &str) -> Result<(), StoreError> {
        let current = encode("commit id", &commit)?;
        (&self.revisions, &self.meta)
            .transaction(|(revisions, meta)| {
                let Some(value) = revisions.get(commit.as_bytes())? else {
                    return abort(StoreError::RevisionUnknown {
                        commit: commit.to_string(),
                    });
                };
                let revision: RevisionRecord = match decode(REVISIONS, commit.as_bytes(), &value) {
                    Ok(revision) => revision,
                    Err(error) => return abort(error),
                };
                if !revision.accepted {
                    return abort(StoreError::RevisionRefused {
                        commit: commit.to_string(),
                    });
                }
                meta.insert(CURRENT_REVISION, current.as_slice())?;
                Ok(())
            })
            .map_err(|e| transaction_error(format!("make revision {commit} current"), e))?;
        self.flush()
    }

    /// The commit last made current: the last good revision.
    fn current_revision(&self) -> Result<Option<String>, StoreError> {
        let value = self
            .meta
            .get(CURRENT_REVISION)
            .map_err(|e| backend("read the current revision".into(), e))?;
        value
            .map(|value| decode(META, CURRENT_REVISION, &value))
            .transpose()
    }

    // The CA and certificates.

    /// Stores the CA, replacing any earlier one.
    fn put_ca(&self, ca: &CaRecord) -> Result<(), StoreError> {
        let value = encode("CA record", ca)?;
        self.meta
            .insert(CA, value)
            .map_err(|e| backend("write the CA".into(), e))?;
        self.flush()
    }

    fn ca(&self) -> Result<Option<CaRecord>, StoreError> {
        let value = self
            .meta
            .get(CA)
            .map_err(|e| backend("read the CA".into(), e))?;
        value.map(|value| decode(META, CA, &value)).transpose()
    }

    /// Inserts or replaces the record of an issued certificate.
    fn put_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
        insert_record(
            &self.certificates,
            "certificate record",
            "certificate",
            &certificate.serial,
            certificate,
        )?;
        self.flush()
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        get_record(&self.certificates, CERTIFICATES, "certificate", serial)
    }

    /// Revokes every certificate issued to `node_id`. Returns the serials
    /// this call revoked (not those revoked before). It scans all
    /// certificates: revocation is rare, and a few thousand records scan in
    /// milliseconds.
    fn revoke_node(&self, node_id: &str) -> Result<Vec<String>, StoreError> {
        let revoked = self.revoke_certificates(node_id, None)?;
        self.flush()?;
        Ok(revoked)
    }

    /// Forgets certificate records that expired before `before_unix`: the
    /// TLS layer refuses an expired certificate by itself, so its record
    /// (revoked or not) is no longer needed.
    fn prune_certificates(&self, before_unix: u64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for entry in self.certificates.iter() {
            let (key, value) = entry.map_err(|e| backend("list certificates".into(), e))?;
            let certificate: CertificateRecord = decode(CERTIFICATES, &key, &value)?;
            if certificate.not_after_unix < before_unix {
                expired.push(key);
            }
        }
        for key in &expired {
            self.certificates
                .remove(key)
                .map_err(|e| backend("remove an expired certificate".into(), e))?;
        }
        if !expired.is_empty() {
            self.flush()?;
        }
        Ok(expired.len())
    }

    // Fleet triggers.

    /// Inserts or replaces a trigger's progress.
    fn put_trigger(&self, trigger: &TriggerRecord) -> Result<(), StoreError> {
        insert_record(
            &self.triggers,
            "trigger record",
            "trigger",
            &trigger.id,
            trigger,
        )?;
        self.flush()
    }

    fn trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError> {
        get_record(&self.triggers, TRIGGERS, "trigger", id)
    }

    /// All triggers, ordered by id (ids start with their start time).
    fn triggers(&self) -> Result<Vec<TriggerRecord>, StoreError> {
        list_records(&self.triggers, TRIGGERS, "triggers")
    }

    // Enrollment tokens.

    /// Inserts or replaces a token.
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let value = encode("token record", token)?;
        self.tokens
            .insert(token.id.as_bytes(), value)
            .map_err(|e| backend("write an enrollment token".into(), e))?;
        self.flush()
    }

    /// All tokens, including expired and used-up ones.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        list_records(&self.tokens, TOKENS, "enrollment tokens")
    }

    /// Uses the token once: fails if it is unknown, expired at `now_unix`
    /// (seconds) or used up, and otherwise takes one use off a limited token,
    /// atomically, so concurrent enrollments never use it more often than
    /// allowed. Returns the token as it is after this use.
    fn consume_token(&self, id: &str, now_unix: u64) -> Result<TokenRecord, StoreError> {
        let write_error = |e| backend("use an enrollment token".into(), e);
        loop {
            let Some(current) = self.tokens.get(id.as_bytes()).map_err(write_error)? else {
                return Err(StoreError::TokenUnknown);
            };
            let mut token: TokenRecord = decode(TOKENS, id.as_bytes(), &current)?;
            if now_unix >= token.expires_unix {
                return Err(StoreError::TokenExpired {
                    expires_unix: token.expires_unix,
                });
            }
            match token.uses_left {
                None => return Ok(token),
                Some(0) => return Err(StoreError::TokenUsedUp),
                Some(uses_left) => token.uses_left = Some(uses_left - 1),
            }
            let value = encode("token record", &token)?;
            let swapped = self
                .tokens
                .compare_and_swap(id.as_bytes(), Some(&current), Some(value))
                .map_err(write_error)?;
            if swapped.is_ok() {
                self.flush()?;
                return Ok(token);
            }
        }
    }

    /// Removes a token. Returns whether it existed.
    fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self
            .tokens
            .remove(id.as_bytes())
            .map_err(|e| backend("remove an enrollment token".into(), e))?
            .is_some();
        self.flush()?;
        Ok(existed)
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        get_record(&self.tokens, TOKENS, "enrollment token", id)
    }

    // Operators.

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        get_record(&self.operators, OPERATORS, "operator", name)
    }

    fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        list_records(&self.operators, OPERATORS, "operators")
    }

    /// A compare-and-swap on the operator's key: the JSON of `expected`
    /// must be the stored bytes.
    fn swap_operator(
        &self,
        expected: Option<&OperatorRecord>,
        new: &OperatorRecord,
    ) -> Result<bool, StoreError> {
        let write_error = |e| backend(format!("write operator {}", new.name), e);
        let current = self
            .operators
            .get(new.name.as_bytes())
            .map_err(write_error)?;
        let stored: Option<OperatorRecord> = current
            .as_ref()
            .map(|value| decode(OPERATORS, new.name.as_bytes(), value))
            .transpose()?;
        if stored.as_ref() != expected {
            return Ok(false);
        }
        let value = encode("operator record", new)?;
        let swapped = self
            .operators
            .compare_and_swap(new.name.as_bytes(), current, Some(value))
            .map_err(write_error)?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    // The audit log.

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let sequence = self
            .db
            .generate_id()
            .map_err(|e| backend("number an audit record".into(), e))?;
        let mut key = record.time_unix_ms.to_be_bytes().to_vec();
        key.extend_from_slice(&sequence.to_be_bytes());
        let value = encode("audit record", record)?;
        self.audit
            .insert(key, value)
            .map_err(|e| backend("write an audit record".into(), e))?;
        self.flush()
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let mut records = self
            .audit
            .iter()
            .rev()
            .take(limit)
            .map(|entry| {
                let (key, value) = entry.map_err(|e| backend("list the audit log".into(), e))?;
                decode(AUDIT, &key, &value)
            })
            .collect::<Result<Vec<AuditRecord>, StoreError>>()?;
        records.reverse();
        Ok(records)
    }

    // Settings: small named values such as the admin credential.

    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.settings
            .insert(name.as_bytes(), value)
            .map_err(|e| backend(format!("write setting {name}"), e))?;
        self.flush()
    }

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .settings
            .get(name.as_bytes())
            .map_err(|e| backend(format!("read setting {name}"), e))?;
        Ok(value.map(|value| value.to_vec()))
    }

    // Dashboard sessions: not flushed on their own (one lost in a crash
    // means signing in again); the next flush of anything takes them.

    fn open_session(
        &self,
        hash: &str,
        token_hash: &str,
        expires_unix_ms: u64,
        now_unix_ms: u64,
    ) -> Result<(), StoreError> {
        let expired: Vec<::sled::IVec> = self
            .sessions
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, value)| session_expiry(value) <= now_unix_ms)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            self.sessions
                .remove(key)
                .map_err(|e| backend("remove an expired dashboard session".into(), e))?;
        }
        let mut value = expires_unix_ms.to_be_bytes().to_vec();
        value.extend_from_slice(token_hash.as_bytes());
        self.sessions
            .insert(hash.as_bytes(), value)
            .map_err(|e| backend("write a dashboard session".into(), e))?;
        Ok(())
    }

    fn session_is_valid(&self, hash: &str, now_unix_ms: u64) -> Result<bool, StoreError> {
        let value = self
            .sessions
            .get(hash.as_bytes())
            .map_err(|e| backend("read a dashboard session".into(), e))?;
        let Some(value) = value else {
            return Ok(false);
        };
        match session_token(&value) {
            Some(token_hash) if session_expiry(&value) > now_unix_ms => {
                self.dashboard_token_is_valid(token_hash)
            }
            _ => Ok(false),
        }
    }

    fn close_session(&self, hash: &str) -> Result<bool, StoreError> {
        let removed = self
            .sessions
            .remove(hash.as_bytes())
            .map_err(|e| backend("remove a dashboard session".into(), e))?;
        Ok(removed.is_some())
    }

    // Dashboard tokens: credentials, so every write is flushed. Adding is
    // a compare-and-swap from nothing, revoking one from the record read.

    fn add_dashboard_token(&self, token: &DashboardTokenRecord) -> Result<bool, StoreError> {
        let value = encode("dashboard token record", token)?;
        let swapped = self
            .dashboard_tokens
            .compare_and_swap(token.hash.as_bytes(), None as Option<&[u8]>, Some(value))
            .map_err(|e| backend("write a dashboard token".into(), e))?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    fn dashboard_token_is_valid(&self, hash: &str) -> Result<bool, StoreError> {
        let token: Option<DashboardTokenRecord> = get_record(
            &self.dashboard_tokens,
            DASHBOARD_TOKENS,
            "dashboard token",
            hash,
        )?;
        Ok(token.is_some_and(|token| !token.is_revoked()))
    }

    fn dashboard_tokens(&self) -> Result<Vec<DashboardTokenRecord>, StoreError> {
        list_records(&self.dashboard_tokens, DASHBOARD_TOKENS, "dashboard tokens")
    }

    fn revoke_dashboard_token(
        &self,
        hash: &str,
        revoked_unix_ms: u64,
        revoked_by: &str,
    ) -> Result<DashboardTokenRevocation, StoreError> {
        let write_error = |e| backend("revoke a dashboard token".into(), e);
        loop {
            let Some(current) = self
                .dashboard_tokens
                .get(hash.as_bytes())
                .map_err(write_error)?
            else {
                return Ok(DashboardTokenRevocation::Unknown);
            };
            let mut token: DashboardTokenRecord =
                decode(DASHBOARD_TOKENS, hash.as_bytes(), &current)?;
            if token.is_revoked() {
                return Ok(DashboardTokenRevocation::AlreadyRevoked(token));
            }
            token.revoked_unix_ms = Some(revoked_unix_ms);
            token.revoked_by = Some(revoked_by.to_string());
            let value = encode("dashboard token record", &token)?;
            let swapped = self
                .dashboard_tokens
                .compare_and_swap(hash.as_bytes(), Some(&current), Some(value))
                .map_err(write_error)?;
            if swapped.is_ok() {
                self.flush()?;
                return Ok(DashboardTokenRevocation::Revoked(token));
            }
            // Changed meanwhile: read it again.
        }
    }

    fn settings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.settings
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(|e| backend("list settings".into(), e))?;
                let name = String::from_utf8(key.to_vec()).map_err(|_| StoreError::CorruptKey {
                    tree: SETTINGS,
                    key: display_key(&key),
                })?;
                Ok((name, value.to_vec()))
            })
            .collect()
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        list_records(&self.certificates, CERTIFICATES, "certificates")
    }

    /// Walks `report_index`, whose keys (node id, NUL, run id) sort as
    /// (node id, run id) do, since node ids hold no NUL.
    fn all_reports(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredReport>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some((node_id, run_id)) => Bound::Excluded(report_index_key(node_id, run_id)),
            None => Bound::Unbounded,
        };
        let list_error = |e| backend("list reports".into(), e);
        let mut reports = Vec::new();
        for entry in self
            .report_index
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            if reports.len() >= limit {
                break;
            }
            let (_, key) = entry.map_err(list_error)?;
            // An index entry whose report was pruned is skipped.
            if let Some(value) = self.reports.get(&key).map_err(list_error)?
                && let Some(report) = self.read_report(&key, &value)?
            {
                reports.push(report);
            }
        }
        Ok(reports)
    }
}

const META: &str = "meta";
const NODES: &str = "nodes";
const REPORTS: &str = "reports";
const REPORT_INDEX: &str = "report_index";
/// The report log's directory in the database directory.
const REPORT_LOG: &str = "report-log";
/// The meta key of how far the report log is applied (`Position`).
const REPORT_LOG_APPLIED: &str = "report_log_applied";
const REVISIONS: &str = "revisions";
const CERTIFICATES: &str = "certificates";
const TOKENS: &str = "tokens";
const SETTINGS: &str = "settings";
const SESSIONS: &str = "dashboard_sessions";
const DASHBOARD_TOKENS: &str = "dashboard_tokens";

/// A stored session's expiry, its first 8 bytes; a shorter value (never
/// written) reads as expired.
fn session_expiry(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// The hash of the token a stored session was opened with, after its
/// expiry; `None` for a session an older server wrote (its expiry alone).
fn session_token(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value.get(8..)?)
        .ok()
        .filter(|token| !token.is_empty())
}
const TRIGGERS: &str = "triggers";
const OPERATORS: &str = "operators";
const AUDIT: &str = "audit";

const FORMAT: &[u8] = b"format";
const CURRENT_REVISION: &[u8] = b"current_revision";
const CA: &[u8] = b"ca";

/// The error type of our transaction closures: they abort with a
/// `StoreError` when a check fails.
type TxError = ::sled::transaction::ConflictableTransactionError<StoreError>;

fn abort<T>(error: StoreError) -> Result<T, TxError> {
    Err(::sled::transaction::ConflictableTransactionError::Abort(
        error,
    ))
}

fn transaction_error(
    action: String,
    error: ::sled::transaction::TransactionError<StoreError>,
) -> StoreError {
    match error {
        ::sled::transaction::TransactionError::Abort(error) => error,
        ::sled::transaction::TransactionError::Storage(source) => backend(action, source),
    }
}

fn backend(action: String, source: ::sled::Error) -> StoreError {
    match source {
        // The disk's own error (a full disk above all): the caller, the
        // agent and the operator see it, and `Reopening` recovers from it.
        ::sled::Error::Io(io) => StoreError::Unwritable {
            action,
            path: PathBuf::new(),
            source: plain_io_error(io),
        },
        source => StoreError::Backend {
            action,
            source: BackendError::new(source),
        },
    }
}

/// sled hands out copies of its first I/O error whose text is the
/// original's `Debug` (`Os { code: 28, kind: StorageFull, message: … }`):
/// this turns such a copy back into the error of that OS code, which reads
/// "No space left on device (os error 28)".
fn plain_io_error(error: std::io::Error) -> std::io::Error {
    if error.raw_os_error().is_some() {
        return error;
    }
    let text = error.to_string();
    let code = text.split_once("code: ").and_then(|(_, rest)| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<i32>().ok()
    });
    match code {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => error,
    }
}

/// sled's page cache, bounded so the server's memory stays bounded however
/// many nodes and reports the store holds (sled's default is 1 GiB). With
/// 10,000 nodes, 16 MB instead of 32 MB left the storm bench's duration the
/// same within its noise and took about 20 MB off its peak.
const CACHE_CAPACITY: u64 = 16 * 1024 * 1024;

/// How long `Store::open` waits for sled's lock on the database file.
/// sled takes an exclusive `flock` on open and releases it only when its
/// background threads have let go of the file, some milliseconds after the
/// last handle is dropped. Without the wait, a drop followed at once by an
/// open (a restart inside one process, or the next process after a check)
/// fails now and then; `tests/store_crash.rs` hit that. A database that
/// another process really holds still fails, after this wait.
const LOCK_WAIT: Duration = Duration::from_secs(5);
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Group commit: a caller's writes are durable once a flush that *started*
/// after them has finished. One caller runs the flush while the others
/// wait for it; those that arrived during it need the next one, which one
/// of them runs for all. A failed flush satisfies nobody: each waiter then
/// runs (or waits for) another and sees its own error.
#[derive(Debug, Default)]
struct GroupCommit {
    state: std::sync::Mutex<GroupState>,
    finished: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Flushes started so far; the running one, if any, is the last.
    started: u64,
    /// The number of the last flush that finished without error.
    succeeded: u64,
    running: bool,
    /// Writers waiting for a flush to finish (what a test waits on).
    waiting: usize,
}

impl GroupCommit {
    fn run(&self, flush: impl Fn() -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut state = self.state.lock().expect("group commit lock");
        // The running flush may have started before this caller's writes.
        let needed = state.started + 1;
        loop {
            if state.succeeded >= needed {
                return Ok(());
            }
            if !state.running {
                state.running = true;
                state.started += 1;
                let number = state.started;
                drop(state);
                // Clears `running` even if the flush panics, so the others
                // do not wait forever.
                let mut guard = RunningFlush {
                    group: self,
                    succeeded: None,
                };
                let result = flush();
                if result.is_ok() {
                    guard.succeeded = Some(number);
                }
                drop(guard);
                if number >= needed {
                    return result;
                }
                state = self.state.lock().expect("group commit lock");
                continue;
            }
            state.waiting += 1;
            state = self.finished.wait(state).expect("group commit lock");
            state.waiting -= 1;
        }
    }
}

struct RunningFlush<'a> {
    group: &'a GroupCommit,
    succeeded: Option<u64>,
}

impl Drop for RunningFlush<'_> {
    fn drop(&mut self) {
        let mut state = self
            .group
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.running = false;
        if let Some(number) = self.succeeded {
            state.succeeded = state.succeeded.max(number);
        }
        self.group.finished.notify_all();
    }
}

fn open_database(dir: &Path, lock_wait: Duration) -> Result<::sled::Db, StoreError> {
    match open_database_once(dir, lock_wait) {
        Err(StoreError::Open { .. }) if remove_unfinished_snapshots(dir)? > 0 => {
            open_database_once(dir, lock_wait)
        }
        result => result,
    }
}

/// Removes the snapshot files sled was still writing when it stopped
/// (`snap.*.generating`: a start on a full disk, a SIGKILL) and returns how
/// many. sled picks the newest snapshot file by name, and a `.generating`
/// one sorts after the finished snapshot of the same log position, so a
/// truncated one makes every later open fail with "Read corrupted data at
/// file offset None". Such a file is never needed: sled renames a snapshot
/// only once it is complete and synced, and recovers from the older
/// snapshot and its log. Called only after an open failed, so never while
/// another process has the database open (that fails with `Locked`).
fn remove_unfinished_snapshots(dir: &Path) -> Result<usize, StoreError> {
    let io_error = |source: std::io::Error| StoreError::Open {
        path: dir.to_path_buf(),
        source: BackendError::new(source),
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path()).map_err(io_error)?;
            tracing::warn!(
                "removed {}, a snapshot sled did not finish writing (a start on a full disk or a killed server)",
                entry.path().display()
            );
            removed += 1;
        }
    }
    if removed > 0 {
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error)?;
    }
    Ok(removed)
}

fn open_database_once(dir: &Path, lock_wait: Duration) -> Result<::sled::Db, StoreError> {
    let deadline = crate::clock::instant() + lock_wait;
    loop {
        match ::sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(source) if is_lock_contention(&source) => {
                if crate::clock::instant() >= deadline {
                    return Err(StoreError::Locked {
                        path: dir.to_path_buf(),
                        source: BackendError::new(source),
                    });
                }
                // sled offers nothing to wait on, so poll.
                std::thread::sleep(LOCK_RETRY_INTERVAL);
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: dir.to_path_buf(),
                    source: BackendError::new(source),
                });
            }
        }
    }
}

/// sled reports a held lock only as an `Other` I/O error with this text.
fn is_lock_contention(error: &::sled::Error) -> bool {
    matches!(error, ::sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other
        && io.to_string().starts_with("could not acquire lock"))
}

/// The fsyncs that sled 0.34 leaves out, so that a write is on stable
/// storage, not only in the kernel's page cache, when `flush` returns.
///
/// On Linux sled's flush waits for its log with `sync_file_range`, which
/// neither writes the file's metadata (its size, as the log grows) nor
/// flushes the disk's write cache, and it never fsyncs its blob files
/// (values above about 128 KiB live in `blobs/`, one file each) nor their
/// directory; its background thread fsyncs the log only every 500 ms.
/// None of this matters for a SIGKILL, which leaves the page cache intact;
/// all of it matters for a power cut or a kernel crash. Upstream: sled
/// issues #1452 ("Data is not written durably") and #1077.
struct Durability {
    log: File,
    blobs_directory_path: PathBuf,
    blobs_directory: File,
    /// Blob files already fsynced (by name), so each costs one fsync.
    synced_blobs: Mutex<BTreeSet<OsString>>,
}

impl Durability {
    /// Opens what it syncs, and syncs once what an earlier process may
    /// have left unsynced: the directory entries, the config file and
    /// every blob.
    fn open(dir: &Path) -> std::io::Result<Durability> {
        let blobs_directory_path = dir.join("blobs");
        let durability = Durability {
            log: File::open(dir.join("db"))?,
            blobs_directory: File::open(&blobs_directory_path)?,
            blobs_directory_path,
            synced_blobs: Mutex::new(BTreeSet::new()),
        };
        File::open(dir.join("conf"))?.sync_all()?;
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        durability.sync()?;
        Ok(durability)
    }

    /// Runs after sled's flush: the blob files it wrote are complete and
    /// the log is written, so fsync new blobs, their directory, then the log.
    fn sync(&self) -> std::io::Result<()> {
        let mut synced_blobs = self
            .synced_blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut present = BTreeSet::new();
        let mut any_new = false;
        for entry in std::fs::read_dir(&self.blobs_directory_path)? {
            let name = entry?.file_name();
            if !synced_blobs.contains(&name) {
                match File::open(self.blobs_directory_path.join(&name)) {
                    Ok(blob) => blob.sync_data()?,
                    // sled removed it meanwhile (a page was rewritten).
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            self.blobs_directory.sync_all()?;
        }
        *synced_blobs = present;
        drop(synced_blobs);
        self.log.sync_data()
    }
}

fn create_private_directory(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDirectory {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `value` as JSON under `key` in `tree` (not flushed). `record`
/// names it in encoding errors, `noun` in write errors.
fn insert_record<T: Serialize>(
    tree: &::sled::Tree,
    record: &'static str,
    noun: &str,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = encode(record, value)?;
    tree.insert(key.as_bytes(), bytes)
        .map_err(|e| backend(format!("write {noun} {key}"), e))?;
    Ok(())
}

/// The JSON record under `key` in `tree` (named `tree_name`), if any.
fn get_record<T: DeserializeOwned>(
    tree: &::sled::Tree,
    tree_name: &'static str,
    noun: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let value = tree
        .get(key.as_bytes())
        .map_err(|e| backend(format!("read {noun} {key}"), e))?;
    value
        .map(|value| decode(tree_name, key.as_bytes(), &value))
        .transpose()
}

/// Every JSON record of `tree` (named `tree_name`), in key order.
fn list_records<T: DeserializeOwned>(
    tree: &::sled::Tree,
    tree_name: &'static str,
    plural: &str,
) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|entry| {
            let (key, value) = entry.map_err(|e| backend(format!("list {plural}"), e))?;
            decode(tree_name, &key, &value)
        })
        .collect()
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::CorruptValue {
        tree,
        key: display_key(key),
        source,
    })
}

/// A key as text for error messages: printable ASCII as is, other bytes
/// escaped (`\x00`).
fn display_key(key: &[u8]) -> String {
    key.iter()
        .flat_map(|byte| std::ascii::escape_default(*byte))
        .map(char::from)
        .collect()
}

fn node_prefix(node_id: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(node_id.len() + 1);
    prefix.extend_from_slice(node_id.as_bytes());
    prefix.push(0);
    prefix
}

fn report_key(node_id: &str, received_unix_ms: u64, run_id: &str) -> Vec<u8> {
    let mut key = node_prefix(node_id);
    key.extend_from_slice(&(u64::MAX - received_unix_ms).to_be_bytes());
    key.extend_from_slice(run_id.as_bytes());
    key
}

fn report_index_key(node_id: &str, run_id: &str) -> Vec<u8> {
    let mut key = node_prefix(node_id);
    key.extend_from_slice(run_id.as_bytes());
    key
}

/// Splits a `reports` key into node id, received time and run id.
fn parse_report_key(key: &[u8]) -> Option<(&[u8], u64, &[u8])> {
    let separator = key.iter().position(|&byte| byte == 0)?;
    let (node_id, rest) = key.split_at(separator);
    let rest = rest.get(1..)?;
    let (inverted_time, run_id) = rest.split_at_checked(8)?;
    let inverted_time = u64::from_be_bytes(inverted_time.try_into().ok()?);
    Some((node_id, u64::MAX - inverted_time, run_id))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{certificate, node, report, revision, token};

    #[test]
    fn writers_flushing_together_share_flushes_and_each_waits_for_one_started_after_it() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::mpsc;
        let group = Arc::new(super::GroupCommit::default());
        let flushes = Arc::new(AtomicU64::new(0));
        // The first flush holds until the test lets it go, so that the
        // later writers certainly arrive while it runs.
        let (started, first_started) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let flush = {
            let flushes = flushes.clone();
            move || {
                if flushes.fetch_add(1, Ordering::SeqCst) == 0 {
                    started.send(()).unwrap();
                    released.lock().unwrap().recv().unwrap();
                }
                Ok(())
            }
        };
        // One writer starts a flush; eight more arrive while it runs.
        let first = {
            let (group, flush) = (group.clone(), flush.clone());
            std::thread::spawn(move || group.run(flush))
        };
        first_started
            .recv_timeout(Duration::from_secs(10))
            .expect("the first flush started");
        let later: Vec<_> = (0..8)
            .map(|_| {
                let (group, flush, flushes) = (group.clone(), flush.clone(), flushes.clone());
                std::thread::spawn(move || {
                    let result = group.run(flush);
                    // The flush that satisfied it started after it arrived.
                    (result.is_ok(), flushes.load(Ordering::SeqCst))
                })
            })
            .collect();
        // Every later writer waits for the running flush before it ends.
        let deadline = crate::clock::instant() + Duration::from_secs(10);
        while group.state.lock().unwrap().waiting < 8 {
            assert!(
                crate::clock::instant() < deadline,
                "the later writers did not all wait"
            );
            std::thread::yield_now();
        }
        release.send(()).unwrap();
        assert!(first.join().unwrap().is_ok());
        for writer in later {
            assert_eq!(writer.join().unwrap(), (true, 2));
        }
        assert_eq!(
            flushes.load(Ordering::SeqCst),
            2,
            "nine writers, two flushes"
        );
    }

    fn fresh_store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&dir.path().join("db")).expect("open store");
        (dir, store)
    }

    #[test]
    fn store_is_cheap_to_share_between_threads() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<SledStore>();
    }

    #[test]
    fn reopening_after_drop_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let ca = CaRecord {
            certificate_pem: "cert".to_string(),
            private_key_pem: "key".to_string(),
        };
        {
            let store = SledStore::open(&path).unwrap();
            store.put_node(&node("n1")).unwrap();
            store.put_report(&report("n1", "r1", 1_000)).unwrap();
            store.put_revision(&revision("c1", true, 1_000)).unwrap();
            store.set_current_revision("c1").unwrap();
            store.put_ca(&ca).unwrap();
            store.put_certificate(&certificate("s1", "n1")).unwrap();
            store.revoke_node("n1").unwrap();
            store.put_token(&token("t", Some(3), 1_000)).unwrap();
            store.consume_token("t", 0).unwrap();
            store.put_setting("admin", b"x").unwrap();
        }

        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.node("n1").unwrap(), Some(node("n1")));
        assert_eq!(
            store.reports("n1", 10).unwrap(),
            [report("n1", "r1", 1_000)]
        );
        assert_eq!(
            store.put_report(&report("n1", "r1", 9_000)).unwrap(),
            ReportWrite::AlreadyStored
        );
        assert_eq!(
            store.revision("c1").unwrap(),
            Some(revision("c1", true, 1_000))
        );
        assert_eq!(store.current_revision().unwrap().as_deref(), Some("c1"));
        assert_eq!(store.ca().unwrap(), Some(ca));
        assert!(store.is_revoked("s1").unwrap());
        assert_eq!(store.tokens().unwrap(), [token("t", Some(2), 1_000)]);
        assert_eq!(
            store.get_setting("admin").unwrap().as_deref(),
            Some(&b"x"[..])
        );
    }

    #[test]
    fn a_report_is_kept_in_the_report_log_and_sled_holds_a_pointer_to_it() {
        let (_dir, store) = fresh_store();
        store.put_node(&node("n1")).unwrap();
        store.put_report(&report("n1", "r1", 1_000)).unwrap();
        let (_, value) = store.reports.iter().next().unwrap().unwrap();
        assert!(Pointer::from_bytes(&value).is_some(), "{value:?}");
        assert_eq!(
            store.report("n1", "r1").unwrap(),
            Some(report("n1", "r1", 1_000))
        );
    }

    #[test]
    fn a_report_stored_as_json_before_the_report_log_still_reads() {
        let (_dir, store) = fresh_store();
        let old = report("n1", "old", 1_000);
        let key = report_key("n1", 1_000, "old");
        store
            .reports
            .insert(key.as_slice(), serde_json::to_vec(&old).unwrap())
            .unwrap();
        store
            .report_index
            .insert(report_index_key("n1", "old"), key.as_slice())
            .unwrap();
        store.put_report(&report("n1", "new", 2_000)).unwrap();
        assert_eq!(store.report("n1", "old").unwrap(), Some(old.clone()));
        assert_eq!(
            store.reports("n1", 10).unwrap(),
            [report("n1", "new", 2_000), old]
        );
    }

    /// What a crash after a report was acknowledged may lose: sled's
    /// pointer and index entry (written, never flushed); sled's other
    /// writes are flushed, without noting the log's applied point.
    fn lose_sleds_pointer(store: &SledStore, lost: &StoredReport) {
        store
            .reports
            .remove(report_key(
                &lost.node_id,
                lost.received_unix_ms,
                &lost.run_id,
            ))
            .unwrap();
        store
            .report_index
            .remove(report_index_key(&lost.node_id, &lost.run_id))
            .unwrap();
        store.db.flush().unwrap();
    }

    #[test]
    fn a_start_applies_the_logged_reports_sled_lost_and_not_those_removed_since() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = SledStore::open(&path).unwrap();
            store.put_node(&node("n1")).unwrap();
            store.put_node(&node("n2")).unwrap();
            store.put_report(&report("n1", "kept", 1_000)).unwrap();
            store.put_report(&report("n2", "removed", 1_000)).unwrap();
            // Flushed: what the log holds of n2 must not come back.
            assert!(store.remove_node("n2").unwrap());
            // Logged, not flushed into sled.
            store.put_report(&report("n1", "logged", 2_000)).unwrap();
            lose_sleds_pointer(&store, &report("n1", "logged", 2_000));
        }
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            store.reports("n1", 10).unwrap(),
            [report("n1", "logged", 2_000), report("n1", "kept", 1_000)]
        );
        assert_eq!(store.reports("n2", 10).unwrap(), []);
        assert_eq!(store.report("n2", "removed").unwrap(), None);
    }

    #[test]
    fn pruning_and_removing_nodes_free_the_report_log_segments_no_report_points_into() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open_with(&dir.path().join("db"), 1024).unwrap();
        let segments = || std::fs::read_dir(store.report_log.dir()).unwrap().count();
        for node_id in ["old", "kept", "removed"] {
            store.put_node(&node(node_id)).unwrap();
        }
        for run in 0..20u64 {
            store
                .put_report(&report("old", &format!("r{run}"), 1_000 + run))
                .unwrap();
        }
        for run in 0..20u64 {
            store
                .put_report(&report("removed", &format!("r{run}"), 5_000 + run))
                .unwrap();
        }
        for run in 0..20u64 {
            store
                .put_report(&report("kept", &format!("r{run}"), 9_000 + run))
                .unwrap();
        }
        let before = segments();
        assert!(before > 10, "{before} segments");
        assert!(store.remove_node("removed").unwrap());
        assert_eq!(store.prune_reports(2_000).unwrap(), 20);
        let after = segments();
        assert!(
            after < before / 2,
            "{before} segments before, {after} after"
        );
        let kept = store.reports("kept", 100).unwrap();
        assert_eq!(kept.len(), 20);
        assert_eq!(kept[19], report("kept", "r0", 9_000));
        drop(store);
        let store = SledStore::open_with(&dir.path().join("db"), 1024).unwrap();
        assert_eq!(store.reports("kept", 100).unwrap().len(), 20);
        assert_eq!(store.reports("old", 100).unwrap(), []);
        assert_eq!(store.reports("removed", 100).unwrap(), []);
    }

    #[test]
    fn a_log_cut_before_the_applied_point_a_flush_recorded_replays_what_is_written_there_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = SledStore::open(&path).unwrap();
            store.put_node(&node("n1")).unwrap();
            store.put_report(&report("n1", "first", 1_000)).unwrap();
            // A flush counted entries that a failed sync then lost.
            let beyond = Position {
                segment: store.report_log.end().segment,
                offset: 1 << 20,
            };
            store
                .meta
                .insert(REPORT_LOG_APPLIED, &beyond.to_bytes())
                .unwrap();
            store.db.flush().unwrap();
        }
        {
            let store = SledStore::open(&path).unwrap();
            store.put_report(&report("n1", "next", 2_000)).unwrap();
            lose_sleds_pointer(&store, &report("n1", "next", 2_000));
        }
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            store.report("n1", "next").unwrap(),
            Some(report("n1", "next", 2_000))
        );
    }

    #[test]
    fn reopening_at_once_after_a_drop_always_gets_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        for round in 0..100u64 {
            let store =
                SledStore::open(&path).unwrap_or_else(|error| panic!("round {round}: {error}"));
            let run_id = format!("run-{round}");
            store.put_report(&report("n1", &run_id, round)).unwrap();
        }
        assert_eq!(
            SledStore::open(&path)
                .unwrap()
                .reports("n1", 1000)
                .unwrap()
                .len(),
            100
        );
    }

    #[test]
    fn a_store_held_elsewhere_fails_to_open_with_locked() {
        let (dir, _held) = fresh_store();
        let error = open_database(&dir.path().join("db"), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
        assert!(
            error
                .to_string()
                .ends_with("it is locked, most likely by another running server"),
            "{error}"
        );
    }

    #[test]
    fn the_store_directory_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _store) = fresh_store();
        let mode = std::fs::metadata(dir.path().join("db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_corrupt_value_names_its_tree_and_key() {
        let (_dir, store) = fresh_store();
        store.nodes.insert("n1", &b"{not json"[..]).unwrap();
        let error = store.node("n1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "Failed to decode the value in tree `nodes` at key \"n1\""
        );
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn a_store_in_another_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = SledStore::open(&path).unwrap();
            store.meta.insert(FORMAT, &b"2"[..]).unwrap();
            store.flush().unwrap();
        }
        let error = SledStore::open(&path).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("its format is \"2\", this server reads format \"1\""),
            "{error}"
        );
    }

    /// A killed server (or a start on a full disk) leaves the snapshot it
    /// was writing as a truncated `snap.*.generating`, which sled picks as
    /// the newest snapshot and refuses ("Read corrupted data at file offset
    /// None"): the store removes it and opens.
    #[test]
    fn a_leftover_unfinished_snapshot_file_does_not_stop_the_store_from_opening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = SledStore::open(&path).unwrap();
            store.put_node(&node("n1")).unwrap();
        }
        for name in [
            "snap.FFFFFFFFFFFFFFF0.generating",
            "snap.FFFFFFFFFFFFFFFF.generating",
        ] {
            std::fs::write(path.join(name), b"").unwrap();
        }
        let store = SledStore::open(&path).expect("opens despite the leftover");
        assert_eq!(store.node("n1").unwrap(), Some(node("n1")));
        let leftovers: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".generating"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn sleds_copies_of_an_io_error_read_as_the_os_error_again() {
        let copied = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            r#"Os { code: 28, kind: StorageFull, message: "No space left on device" }"#,
        );
        assert_eq!(
            plain_io_error(copied).to_string(),
            "No space left on device (os error 28)"
        );
        let other = std::io::Error::other("odd");
        assert_eq!(plain_io_error(other).to_string(), "odd");
    }

    #[test]
    fn report_keys_parse_back_into_their_parts() {
        let key = report_key("node-1", 1_234, "run\0odd");
        assert_eq!(
            parse_report_key(&key),
            Some((&b"node-1"[..], 1_234, &b"run\0odd"[..]))
        );
        assert_eq!(parse_report_key(b"no-separator"), None);
        assert_eq!(parse_report_key(b"short\0abc"), None);
    }
}
