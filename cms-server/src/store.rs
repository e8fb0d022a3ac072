//! The server's storage: nodes, run reports, revisions, the
//! CA, certificates, enrollment tokens and small settings, in one embedded
//! sled database in a directory of the server's data folder.
//!
//! This is the only module that names sled types. Everything above it talks
//! to [`Store`], whose methods take and return plain records (serde structs),
//! strings and bytes, and fail with [`StoreError`], whose backend cause is
//! opaque ([`BackendError`]). That narrow interface is what lets a shared
//! backend replace sled when one server is not enough.
//!
//! # Data layout
//!
//! One sled tree per kind of record. Record values are JSON; keys are bytes.
//!
//! | tree           | key                                                         | value                        |
//! |----------------|-------------------------------------------------------------|------------------------------|
//! | `meta`         | `format`, `current_revision`, `ca`                          | `1`, the commit id as a JSON string, `CaRecord` |
//! | `nodes`        | node id                                                     | `NodeRecord`                 |
//! | `reports`      | node id, `0x00`, `u64::MAX - received_unix_ms` (8 bytes big-endian), run id | `StoredReport` |
//! | `report_index` | node id, `0x00`, run id                                     | the key in `reports`         |
//! | `revisions`    | commit id                                                   | `RevisionRecord`             |
//! | `certificates` | serial                                                      | `CertificateRecord`          |
//! | `tokens`       | token id: sha256 hex of the secret, never the secret        | `TokenRecord`                |
//! | `settings`     | name                                                        | raw bytes                    |
//! | `triggers`     | trigger id                                                  | `TriggerRecord`              |
//!
//! A node's reports share the prefix `node id, 0x00`, and the inverted time
//! makes a forward scan of that prefix list them newest first, so "the last
//! 20 runs of a node" reads 20 values. Node ids may therefore not contain a
//! NUL byte. `report_index` makes re-sending a report idempotent: an agent
//! that did not see the acknowledgement sends the same run id again, and the
//! index finds the stored copy without knowing when it was received. Both
//! trees change together in one sled transaction. `prune_reports` decodes
//! the time from the keys alone, without parsing any JSON.
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
//! per fsync, a slow disk tens. `put_report` is the hot path (one per agent
//! run); if it ever limits a boot storm, the fix is to batch several
//! reports per flush, never to acknowledge before the flush.
//!
//! The database directory is created owner-only (0700) when it does not
//! exist yet, because it holds the CA's private key and the admin
//! credential; an existing directory's permissions are left as they are.
//!
//! # Concurrency
//!
//! `Store` is `Clone` (sled's handles are reference-counted) and
//! `Send + Sync`; clone it into every task that needs it. sled calls are
//! synchronous: a read takes microseconds, a write ends in an fsync that
//! blocks for milliseconds. From async code, run writes and bulk work
//! (`nodes`, `prune_reports`, `remove_node`) in `spawn_blocking`.
//! Read-modify-write is atomic where the server needs it: `consume_token`
//! and `update_node` use compare-and-swap loops, `put_report`,
//! `set_current_revision` and `remove_node` use sled transactions, so two
//! concurrent enrollments cannot over-use a token.
//!
//! # Moving to a shared store
//!
//! When one server is not enough, each tree becomes a table with the same
//! key, and `Store` becomes a trait (or an enum) with this method set; no
//! caller changes, because none sees a sled type and all already treat each
//! call as blocking I/O that can fail. In a SQL database: `nodes(id)`,
//! `reports(node_id, run_id)` as the primary key with an index on
//! `(node_id, received_unix_ms DESC)` (the unique key replaces
//! `report_index`), `revisions(commit)` plus a one-row table for the current
//! revision, `certificates(serial)` with an index on `node_id`,
//! `tokens(id)`, where `consume_token` becomes one
//! `UPDATE … SET uses_left = uses_left - 1 WHERE id = $1 AND expires_unix > $2
//! AND (uses_left IS NULL OR uses_left > 0) RETURNING *`, and `settings`.
//! Contents are immutable and addressed by hash, so they fit an object store
//! (S3 and the like) keyed by the same sha256. The flush at the end of each
//! method becomes the commit of a transaction. The CA's private key would
//! then belong in a secrets manager rather than in the database.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;

/// What the server knows about one enrolled node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// The tags bound at enrollment; the node cannot change them later.
    pub tags: BTreeMap<String, String>,
    /// The facts the node sent with its last catalog request.
    pub facts: serde_json::Value,
    pub certificate_serial: String,
    pub first_seen_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    pub last_run: Option<RunSummary>,
    pub status: NodeStatus,
    /// When the node was marked gone; it is removed `remove_after` later.
    #[serde(default)]
    pub gone_since_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Active,
    Gone,
}

/// The outcome of a node's last run, kept on the node for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub finished_unix_ms: u64,
    pub catalog_id: String,
    /// The commit the catalog was compiled from.
    pub revision: String,
    pub changed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub noop: bool,
}

/// A run report as the server received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReport {
    pub node_id: String,
    pub run_id: String,
    pub received_unix_ms: u64,
    pub report_json: serde_json::Value,
}

/// What `put_report` did: a re-sent report is acknowledged again but not
/// stored twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportWrite {
    Stored,
    AlreadyStored,
}

/// A commit the server has synced, with the result of its validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub commit: String,
    pub accepted: bool,
    /// Why the commit was refused; empty when it was accepted.
    pub errors: Vec<RevisionError>,
    pub synced_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// The server's certificate authority.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl fmt::Debug for CaRecord {
    /// Leaves the private key out, so that a debug log cannot leak it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaRecord")
            .field("certificate_pem", &self.certificate_pem)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

/// A certificate the CA has issued to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    pub serial: String,
    pub node_id: String,
    pub not_after_unix: u64,
    pub revoked: bool,
}

/// A fleet trigger: what was asked, and how far it got. Written after every
/// node's outcome, so `trigger --status` shows it after the CLI has gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRecord {
    pub id: String,
    pub selector: BTreeMap<String, String>,
    /// `25%`, `10`, or empty for all at once.
    pub batch: String,
    pub canary: u32,
    pub noop: bool,
    pub max_failures: u32,
    /// `running`, `done`, `stopped` (failure limit reached) or `interrupted`
    /// (the server stopped while it ran).
    pub state: String,
    /// Why it stopped, for people.
    pub message: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    /// The plan: the canary group first (when there is one), then batches.
    pub batches: Vec<Vec<String>>,
    /// How many batches have been started.
    pub batches_started: u32,
    /// Each node's outcome, once known.
    pub outcomes: BTreeMap<String, TriggerOutcome>,
}

/// What one node did for a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerOutcome {
    /// `changed`, `unchanged`, `failed` or `unreachable`.
    pub result: String,
    pub run_id: String,
    /// References of the resources that failed.
    pub failed_resources: Vec<String>,
}

/// An enrollment token. The store never sees the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// sha256 hex of the secret (see [`TokenRecord::id_for_secret`]).
    pub id: String,
    /// The tags a node enrolling with this token may claim; values may be
    /// globs, which the enrollment code interprets.
    pub scope: BTreeMap<String, String>,
    pub expires_unix: u64,
    /// `None` means unlimited.
    pub uses_left: Option<u32>,
    pub created_unix: u64,
}

impl TokenRecord {
    /// The id under which the token with this secret is stored.
    pub fn id_for_secret(secret: &str) -> String {
        sha256_hex(secret.as_bytes())
    }
}

/// The sha256 of `bytes` as 64 lowercase hex digits, the form token ids
/// take.
pub fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Failed to create the store directory {}", path.display())]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to open the store at {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error(
        "Failed to open the store at {}: it is locked, most likely by another running server",
        path.display()
    )]
    Locked {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error(
        "Failed to open the store at {}: its format is {found:?}, this server reads format {expected:?}",
        path.display(),
        expected = FORMAT_VERSION
    )]
    UnsupportedFormat { path: PathBuf, found: String },
    #[error("Failed to make the writes to the store at {} durable (fsync)", path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to {action}")]
    Backend {
        action: String,
        #[source]
        source: BackendError,
    },
    #[error("Failed to decode the value in tree `{tree}` at key \"{key}\"")]
    CorruptValue {
        tree: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Failed to parse the key \"{key}\" in tree `{tree}`")]
    CorruptKey { tree: &'static str, key: String },
    #[error("Failed to encode a {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("Failed to use {id:?} as a node id: it must be non-empty and contain no NUL byte")]
    InvalidNodeId { id: String },
    #[error("Failed to make revision {commit} current: it has not been recorded")]
    RevisionUnknown { commit: String },
    #[error("Failed to make revision {commit} current: its validation refused it")]
    RevisionRefused { commit: String },
    #[error("Failed to consume the enrollment token: there is no such token")]
    TokenUnknown,
    #[error("Failed to consume the enrollment token: it expired at {expires_unix} (unix time)")]
    TokenExpired { expires_unix: u64 },
    #[error("Failed to consume the enrollment token: it has no uses left")]
    TokenUsedUp,
}

/// An error from the storage engine. It is opaque so that no caller comes
/// to depend on which engine that is; its message and source chain carry
/// the details.
pub struct BackendError(sled::Error);

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// The server's storage. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    path: Arc<Path>,
    db: sled::Db,
    durability: Arc<Durability>,
    flushes: Arc<GroupCommit>,
    meta: sled::Tree,
    nodes: sled::Tree,
    reports: sled::Tree,
    report_index: sled::Tree,
    revisions: sled::Tree,
    certificates: sled::Tree,
    tokens: sled::Tree,
    settings: sled::Tree,
    triggers: sled::Tree,
}

impl fmt::Debug for Store {
    /// Only the path: sled's own `Debug` walks every page of a tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database in `dir`, creating it (owner-only) if needed.
    /// Only one process can hold a database open at a time: while another
    /// does, this waits a few seconds (see `LOCK_WAIT`) and then fails with
    /// `StoreError::Locked`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        create_private_directory(dir)?;
        let db = open_database(dir, LOCK_WAIT)?;
        let durability = Durability::open(dir).map_err(|source| StoreError::Sync {
            path: dir.to_path_buf(),
            source,
        })?;
        let open_error = |source| StoreError::Open {
            path: dir.to_path_buf(),
            source: BackendError(source),
        };
        let tree = |name: &str| db.open_tree(name).map_err(open_error);
        let store = Store {
            path: Arc::from(dir),
            meta: tree(META)?,
            nodes: tree(NODES)?,
            reports: tree(REPORTS)?,
            report_index: tree(REPORT_INDEX)?,
            revisions: tree(REVISIONS)?,
            certificates: tree(CERTIFICATES)?,
            tokens: tree(TOKENS)?,
            settings: tree(SETTINGS)?,
            triggers: tree(TRIGGERS)?,
            db,
            durability: Arc::new(durability),
            flushes: Arc::new(GroupCommit::default()),
        };
        store.check_format()?;
        Ok(store)
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    // Nodes.

    /// Inserts or replaces a node.
    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        insert_record(&self.nodes, "node record", "node", &node.id, node)?;
        self.flush()
    }

    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        get_record(&self.nodes, NODES, "node", id)
    }

    /// All nodes, ordered by id.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        list_records(&self.nodes, NODES, "nodes")
    }

    /// Changes an existing node atomically: `change` sees the current record
    /// and may run more than once if another writer changed the node
    /// meanwhile. Returns the record as written, or `None` (and writes
    /// nothing) when there is no such node.
    pub fn update_node(
        &self,
        id: &str,
        mut change: impl FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, StoreError> {
        loop {
            let current = self
                .nodes
                .get(id.as_bytes())
                .map_err(|e| backend(format!("read node {id}"), e))?;
            let Some(current) = current else {
                return Ok(None);
            };
            let mut node: NodeRecord = decode(NODES, id.as_bytes(), &current)?;
            change(&mut node);
            // The id is the key: a change cannot move the record elsewhere.
            node.id = id.to_string();
            let value = encode("node record", &node)?;
            let swapped = self
                .nodes
                .compare_and_swap(id.as_bytes(), Some(&current), Some(value))
                .map_err(|e| backend(format!("write node {id}"), e))?;
            if swapped.is_ok() {
                self.flush()?;
                return Ok(Some(node));
            }
        }
    }

    /// Records an enrollment: the certificate issued and the node record,
    /// together in one transaction and one flush.
    pub fn record_enrollment(
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

    /// Records when nodes were last seen, many at once with one flush: the
    /// server notes a node's calls in memory and writes them here every few
    /// seconds, so a `GetCatalog` that changes nothing costs no fsync. A
    /// time older than the stored one is ignored; unknown nodes are skipped.
    pub fn touch_nodes(&self, seen: &[(String, u64)]) -> Result<usize, StoreError> {
        let with_facts: Vec<(String, u64, Option<serde_json::Value>)> = seen
            .iter()
            .map(|(id, at)| (id.clone(), *at, None))
            .collect();
        self.touch_nodes_with_facts(&with_facts)
    }

    /// The same, also replacing the facts of nodes that sent new ones (the
    /// facts are informational: catalogs are compiled from the facts of
    /// each request, so they may wait for the batch like last-seen times).
    pub fn touch_nodes_with_facts(
        &self,
        seen: &[(String, u64, Option<serde_json::Value>)],
    ) -> Result<usize, StoreError> {
        let mut touched = 0;
        for (id, at, facts) in seen {
            loop {
                let Some(current) = self
                    .nodes
                    .get(id.as_bytes())
                    .map_err(|e| backend(format!("read node {id}"), e))?
                else {
                    break;
                };
                let mut node: NodeRecord = decode(NODES, id.as_bytes(), &current)?;
                let new_facts = facts.as_ref().filter(|f| **f != node.facts);
                if node.last_seen_unix_ms >= *at
                    && node.status == NodeStatus::Active
                    && new_facts.is_none()
                {
                    break;
                }
                if let Some(facts) = new_facts {
                    node.facts = facts.clone();
                }
                node.last_seen_unix_ms = node.last_seen_unix_ms.max(*at);
                node.status = NodeStatus::Active;
                node.gone_since_unix_ms = None;
                let value = encode("node record", &node)?;
                let swapped = self
                    .nodes
                    .compare_and_swap(id.as_bytes(), Some(&current), Some(value))
                    .map_err(|e| backend(format!("write node {id}"), e))?;
                if swapped.is_ok() {
                    touched += 1;
                    break;
                }
            }
        }
        if touched > 0 {
            self.flush()?;
        }
        Ok(touched)
    }

    /// Removes a node and all its reports. Returns whether the node existed.
    /// Its certificates stay, so that a revocation outlives the node.
    pub fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
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
    pub fn put_report(&self, report: &StoredReport) -> Result<ReportWrite, StoreError> {
        check_node_id(&report.node_id)?;
        let key = report_key(&report.node_id, report.received_unix_ms, &report.run_id);
        let index_key = report_index_key(&report.node_id, &report.run_id);
        let value = encode("report", report)?;
        let write = (&self.reports, &self.report_index)
            .transaction(|(reports, index)| {
                if let Some(existing) = index.get(&index_key)?
                    && reports.get(&existing)?.is_some()
                {
                    return Ok(ReportWrite::AlreadyStored);
                }
                reports.insert(key.as_slice(), value.as_slice())?;
                index.insert(index_key.as_slice(), key.as_slice())?;
                Ok::<_, TxError>(ReportWrite::Stored)
            })
            .map_err(|e| {
                transaction_error(
                    format!("write report {} of node {}", report.run_id, report.node_id),
                    e,
                )
            })?;
        // Flushed even when already stored: the first attempt may have
        // failed at its flush, and this one acknowledges the report.
        self.flush()?;
        Ok(write)
    }

    pub fn report(&self, node_id: &str, run_id: &str) -> Result<Option<StoredReport>, StoreError> {
        check_node_id(node_id)?;
        let read_error = |e| backend(format!("read report {run_id} of node {node_id}"), e);
        let index_key = report_index_key(node_id, run_id);
        let Some(key) = self.report_index.get(&index_key).map_err(read_error)? else {
            return Ok(None);
        };
        let value = self.reports.get(&key).map_err(read_error)?;
        value.map(|value| decode(REPORTS, &key, &value)).transpose()
    }

    /// A node's reports, newest first, at most `limit` of them.
    pub fn reports(&self, node_id: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        check_node_id(node_id)?;
        self.reports
            .scan_prefix(node_prefix(node_id))
            .take(limit)
            .map(|entry| {
                let (key, value) =
                    entry.map_err(|e| backend(format!("list the reports of node {node_id}"), e))?;
                decode(REPORTS, &key, &value)
            })
            .collect()
    }

    /// Removes every report received before `older_than_unix_ms`, of all
    /// nodes. Returns how many it removed.
    pub fn prune_reports(&self, older_than_unix_ms: u64) -> Result<usize, StoreError> {
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
        Ok(expired.len())
    }

    // Revisions.

    /// Inserts or replaces the record of a synced commit.
    pub fn put_revision(&self, revision: &RevisionRecord) -> Result<(), StoreError> {
        insert_record(
            &self.revisions,
            "revision record",
            "revision",
            &revision.commit,
            revision,
        )?;
        self.flush()
    }

    pub fn revision(&self, commit: &str) -> Result<Option<RevisionRecord>, StoreError> {
        get_record(&self.revisions, REVISIONS, "revision", commit)
    }

    /// All recorded revisions, most recently synced first.
    pub fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        let mut revisions: Vec<RevisionRecord> =
            list_records(&self.revisions, REVISIONS, "revisions")?;
        revisions.sort_by(|a, b| (b.synced_unix_ms, &a.commit).cmp(&(a.synced_unix_ms, &b.commit)));
        Ok(revisions)
    }

    /// Makes `commit` the revision the server serves. Only a recorded,
    /// accepted revision can become current.
    pub fn set_current_revision(&self, commit: &str) -> Result<(), StoreError> {
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
    pub fn current_revision(&self) -> Result<Option<String>, StoreError> {
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
    pub fn put_ca(&self, ca: &CaRecord) -> Result<(), StoreError> {
        let value = encode("CA record", ca)?;
        self.meta
            .insert(CA, value)
            .map_err(|e| backend("write the CA".into(), e))?;
        self.flush()
    }

    pub fn ca(&self) -> Result<Option<CaRecord>, StoreError> {
        let value = self
            .meta
            .get(CA)
            .map_err(|e| backend("read the CA".into(), e))?;
        value.map(|value| decode(META, CA, &value)).transpose()
    }

    /// Inserts or replaces the record of an issued certificate.
    pub fn put_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
        insert_record(
            &self.certificates,
            "certificate record",
            "certificate",
            &certificate.serial,
            certificate,
        )?;
        self.flush()
    }

    pub fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        get_record(&self.certificates, CERTIFICATES, "certificate", serial)
    }

    /// Revokes every certificate issued to `node_id`. Returns the serials
    /// this call revoked (not those revoked before). It scans all
    /// certificates: revocation is rare, and a few thousand records scan in
    /// milliseconds.
    pub fn revoke_node(&self, node_id: &str) -> Result<Vec<String>, StoreError> {
        let mut revoked = Vec::new();
        for entry in self.certificates.iter() {
            let (key, mut value) = entry.map_err(|e| backend("list certificates".into(), e))?;
            loop {
                let mut certificate: CertificateRecord = decode(CERTIFICATES, &key, &value)?;
                if certificate.node_id != node_id || certificate.revoked {
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
        self.flush()?;
        Ok(revoked)
    }

    /// Whether the certificate with this serial has been revoked. A serial
    /// the store does not know is not revoked; the TLS layer only lets in
    /// certificates our CA signed, and every one of those is recorded
    /// before it is handed out.
    pub fn is_revoked(&self, serial: &str) -> Result<bool, StoreError> {
        Ok(self
            .certificate(serial)?
            .is_some_and(|certificate| certificate.revoked))
    }

    /// Forgets certificate records that expired before `before_unix`: the
    /// TLS layer refuses an expired certificate by itself, so its record
    /// (revoked or not) is no longer needed.
    pub fn prune_certificates(&self, before_unix: u64) -> Result<usize, StoreError> {
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
    pub fn put_trigger(&self, trigger: &TriggerRecord) -> Result<(), StoreError> {
        insert_record(
            &self.triggers,
            "trigger record",
            "trigger",
            &trigger.id,
            trigger,
        )?;
        self.flush()
    }

    pub fn trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError> {
        get_record(&self.triggers, TRIGGERS, "trigger", id)
    }

    /// All triggers, ordered by id (ids start with their start time).
    pub fn triggers(&self) -> Result<Vec<TriggerRecord>, StoreError> {
        list_records(&self.triggers, TRIGGERS, "triggers")
    }

    // Enrollment tokens.

    /// Inserts or replaces a token.
    pub fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let value = encode("token record", token)?;
        self.tokens
            .insert(token.id.as_bytes(), value)
            .map_err(|e| backend("write an enrollment token".into(), e))?;
        self.flush()
    }

    /// All tokens, including expired and used-up ones.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        list_records(&self.tokens, TOKENS, "enrollment tokens")
    }

    /// Uses the token once: fails if it is unknown, expired at `now_unix`
    /// (seconds) or used up, and otherwise takes one use off a limited token,
    /// atomically, so concurrent enrollments never use it more often than
    /// allowed. Returns the token as it is after this use.
    pub fn consume_token(&self, id: &str, now_unix: u64) -> Result<TokenRecord, StoreError> {
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
    pub fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self
            .tokens
            .remove(id.as_bytes())
            .map_err(|e| backend("remove an enrollment token".into(), e))?
            .is_some();
        self.flush()?;
        Ok(existed)
    }

    // Settings: small named values such as the admin credential.

    pub fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.settings
            .insert(name.as_bytes(), value)
            .map_err(|e| backend(format!("write setting {name}"), e))?;
        self.flush()
    }

    pub fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .settings
            .get(name.as_bytes())
            .map_err(|e| backend(format!("read setting {name}"), e))?;
        Ok(value.map(|value| value.to_vec()))
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
    /// out (see the module docs).
    fn flush_now(&self) -> Result<(), StoreError> {
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
}

const FORMAT_VERSION: &str = "1";

const META: &str = "meta";
const NODES: &str = "nodes";
const REPORTS: &str = "reports";
const REPORT_INDEX: &str = "report_index";
const REVISIONS: &str = "revisions";
const CERTIFICATES: &str = "certificates";
const TOKENS: &str = "tokens";
const SETTINGS: &str = "settings";
const TRIGGERS: &str = "triggers";

const FORMAT: &[u8] = b"format";
const CURRENT_REVISION: &[u8] = b"current_revision";
const CA: &[u8] = b"ca";

/// The error type of our transaction closures: they abort with a
/// `StoreError` when a check fails.
type TxError = sled::transaction::ConflictableTransactionError<StoreError>;

fn abort<T>(error: StoreError) -> Result<T, TxError> {
    Err(sled::transaction::ConflictableTransactionError::Abort(
        error,
    ))
}

fn transaction_error(
    action: String,
    error: sled::transaction::TransactionError<StoreError>,
) -> StoreError {
    match error {
        sled::transaction::TransactionError::Abort(error) => error,
        sled::transaction::TransactionError::Storage(source) => backend(action, source),
    }
}

fn backend(action: String, source: sled::Error) -> StoreError {
    StoreError::Backend {
        action,
        source: BackendError(source),
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
            state = self.finished.wait(state).expect("group commit lock");
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

fn open_database(dir: &Path, lock_wait: Duration) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + lock_wait;
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(source) if is_lock_contention(&source) => {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        path: dir.to_path_buf(),
                        source: BackendError(source),
                    });
                }
                // sled offers nothing to wait on, so poll.
                std::thread::sleep(LOCK_RETRY_INTERVAL);
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: dir.to_path_buf(),
                    source: BackendError(source),
                });
            }
        }
    }
}

/// sled reports a held lock only as an `Other` I/O error with this text.
fn is_lock_contention(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other
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
    tree: &sled::Tree,
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
    tree: &sled::Tree,
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
    tree: &sled::Tree,
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

fn check_node_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.contains('\0') {
        return Err(StoreError::InvalidNodeId { id: id.to_string() });
    }
    Ok(())
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
    #[test]
    fn writers_flushing_together_share_flushes_and_each_waits_for_one_started_after_it() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let group = Arc::new(super::GroupCommit::default());
        let flushes = Arc::new(AtomicU64::new(0));
        let flush = {
            let flushes = flushes.clone();
            move || {
                flushes.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            }
        };
        // One writer starts a flush; eight more arrive while it runs.
        let first = {
            let (group, flush) = (group.clone(), flush.clone());
            std::thread::spawn(move || group.run(flush))
        };
        std::thread::sleep(Duration::from_millis(30));
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

    use super::*;

    use std::sync::Barrier;

    fn fresh_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("open store");
        (dir, store)
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.to_string(),
            tags: tags(&[("role", "api"), ("env", "prod")]),
            facts: serde_json::json!({"os": "debian", "memory_mb": 2048}),
            certificate_serial: format!("serial-{id}"),
            first_seen_unix_ms: 1_000,
            last_seen_unix_ms: 2_000,
            last_run: Some(RunSummary {
                run_id: "run-1".to_string(),
                finished_unix_ms: 1_900,
                catalog_id: "catalog-abc".to_string(),
                revision: "0123abcd".to_string(),
                changed: 3,
                failed: 0,
                skipped: 1,
                noop: false,
            }),
            status: NodeStatus::Active,
            gone_since_unix_ms: None,
        }
    }

    fn report(node_id: &str, run_id: &str, received_unix_ms: u64) -> StoredReport {
        StoredReport {
            node_id: node_id.to_string(),
            run_id: run_id.to_string(),
            received_unix_ms,
            report_json: serde_json::json!({"run_id": run_id, "changed": 1}),
        }
    }

    fn run_ids(reports: &[StoredReport]) -> Vec<&str> {
        reports.iter().map(|r| r.run_id.as_str()).collect()
    }

    fn revision(commit: &str, accepted: bool, synced_unix_ms: u64) -> RevisionRecord {
        RevisionRecord {
            commit: commit.to_string(),
            accepted,
            errors: if accepted {
                Vec::new()
            } else {
                vec![RevisionError {
                    file: "roles/api.toml".to_string(),
                    line: 3,
                    column: 7,
                    message: "unknown key `pakage`".to_string(),
                }]
            },
            synced_unix_ms,
        }
    }

    fn token(id: &str, uses_left: Option<u32>, expires_unix: u64) -> TokenRecord {
        TokenRecord {
            id: id.to_string(),
            scope: tags(&[("env", "staging"), ("role", "*")]),
            expires_unix,
            uses_left,
            created_unix: 100,
        }
    }

    fn certificate(serial: &str, node_id: &str) -> CertificateRecord {
        CertificateRecord {
            serial: serial.to_string(),
            node_id: node_id.to_string(),
            not_after_unix: 9_999_999_999,
            revoked: false,
        }
    }

    #[test]
    fn store_is_cheap_to_share_between_threads() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<Store>();
    }

    #[test]
    fn nodes_round_trip_and_list_in_id_order() {
        let (_dir, store) = fresh_store();
        store.put_node(&node("b")).unwrap();
        store.put_node(&node("a")).unwrap();
        assert_eq!(store.node("a").unwrap(), Some(node("a")));
        assert_eq!(store.node("missing").unwrap(), None);
        let ids: Vec<String> = store.nodes().unwrap().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn touching_nodes_moves_last_seen_forward_only_and_makes_a_gone_node_active() {
        let (_dir, store) = fresh_store();
        store.put_node(&node("a")).unwrap();
        let mut gone = node("b");
        gone.status = NodeStatus::Gone;
        gone.gone_since_unix_ms = Some(2_500);
        store.put_node(&gone).unwrap();
        let touched = store
            .touch_nodes(&[
                ("a".into(), 1_500),
                ("b".into(), 3_000),
                ("unknown".into(), 9_000),
            ])
            .unwrap();
        assert_eq!(touched, 1, "a's stored time is newer; unknown is skipped");
        assert_eq!(store.node("a").unwrap().unwrap().last_seen_unix_ms, 2_000);
        let b = store.node("b").unwrap().unwrap();
        assert_eq!(
            (b.last_seen_unix_ms, b.status, b.gone_since_unix_ms),
            (3_000, NodeStatus::Active, None)
        );
        assert!(store.node("unknown").unwrap().is_none());
    }

    #[test]
    fn triggers_round_trip() {
        let (_dir, store) = fresh_store();
        let trigger = TriggerRecord {
            id: "t1".into(),
            selector: tags(&[("role", "web")]),
            batch: "50%".into(),
            canary: 1,
            noop: false,
            max_failures: 0,
            state: "running".into(),
            message: String::new(),
            started_unix_ms: 1,
            finished_unix_ms: None,
            batches: vec![vec!["web-1".into()], vec!["web-2".into()]],
            batches_started: 1,
            outcomes: BTreeMap::new(),
        };
        store.put_trigger(&trigger).unwrap();
        assert_eq!(store.trigger("t1").unwrap(), Some(trigger.clone()));
        assert_eq!(store.triggers().unwrap(), vec![trigger]);
        assert_eq!(store.trigger("t2").unwrap(), None);
    }

    #[test]
    fn update_node_changes_an_existing_node_and_ignores_an_unknown_one() {
        let (_dir, store) = fresh_store();
        store.put_node(&node("a")).unwrap();
        let updated = store
            .update_node("a", |node| node.last_seen_unix_ms = 5_000)
            .unwrap()
            .expect("node exists");
        assert_eq!(updated.last_seen_unix_ms, 5_000);
        assert_eq!(store.node("a").unwrap(), Some(updated));
        assert_eq!(store.update_node("nobody", |_| {}).unwrap(), None);
        assert_eq!(store.node("nobody").unwrap(), None);
    }

    #[test]
    fn a_node_id_with_a_nul_byte_is_refused() {
        let (_dir, store) = fresh_store();
        let error = store.put_node(&node("a\0b")).unwrap_err();
        assert!(matches!(error, StoreError::InvalidNodeId { .. }), "{error}");
    }

    #[test]
    fn reports_list_newest_first_up_to_the_limit() {
        let (_dir, store) = fresh_store();
        store.put_report(&report("n1", "old", 1_000)).unwrap();
        store.put_report(&report("n1", "newest", 3_000)).unwrap();
        store.put_report(&report("n1", "middle", 2_000)).unwrap();
        // Another node whose id extends n1's must not leak into n1's list.
        store.put_report(&report("n10", "other", 2_500)).unwrap();

        assert_eq!(
            run_ids(&store.reports("n1", 10).unwrap()),
            ["newest", "middle", "old"]
        );
        assert_eq!(
            run_ids(&store.reports("n1", 2).unwrap()),
            ["newest", "middle"]
        );
        assert_eq!(run_ids(&store.reports("n10", 10).unwrap()), ["other"]);
        assert_eq!(
            store.report("n1", "middle").unwrap(),
            Some(report("n1", "middle", 2_000))
        );
    }

    #[test]
    fn a_resent_report_is_stored_once_and_keeps_its_first_copy() {
        let (_dir, store) = fresh_store();
        let first = report("n1", "run-7", 1_000);
        assert_eq!(store.put_report(&first).unwrap(), ReportWrite::Stored);
        let resent = StoredReport {
            received_unix_ms: 5_000,
            ..first.clone()
        };
        assert_eq!(
            store.put_report(&resent).unwrap(),
            ReportWrite::AlreadyStored
        );
        assert_eq!(store.reports("n1", 10).unwrap(), [first]);
    }

    #[test]
    fn the_same_run_id_on_two_nodes_is_two_reports() {
        let (_dir, store) = fresh_store();
        assert_eq!(
            store.put_report(&report("n1", "run-1", 1_000)).unwrap(),
            ReportWrite::Stored
        );
        assert_eq!(
            store.put_report(&report("n2", "run-1", 1_000)).unwrap(),
            ReportWrite::Stored
        );
        assert_eq!(store.reports("n1", 10).unwrap().len(), 1);
        assert_eq!(store.reports("n2", 10).unwrap().len(), 1);
    }

    #[test]
    fn prune_removes_only_older_reports_and_lets_their_run_ids_be_stored_again() {
        let (_dir, store) = fresh_store();
        store.put_report(&report("n1", "a", 1_000)).unwrap();
        store.put_report(&report("n1", "b", 2_000)).unwrap();
        store.put_report(&report("n2", "c", 1_500)).unwrap();
        store.put_report(&report("n2", "d", 3_000)).unwrap();

        assert_eq!(store.prune_reports(2_000).unwrap(), 2);
        assert_eq!(run_ids(&store.reports("n1", 10).unwrap()), ["b"]);
        assert_eq!(run_ids(&store.reports("n2", 10).unwrap()), ["d"]);
        assert_eq!(store.report("n1", "a").unwrap(), None);
        assert_eq!(
            store.put_report(&report("n1", "a", 4_000)).unwrap(),
            ReportWrite::Stored
        );
    }

    #[test]
    fn remove_node_removes_its_reports_and_no_one_elses() {
        let (_dir, store) = fresh_store();
        store.put_node(&node("n1")).unwrap();
        store.put_node(&node("n10")).unwrap();
        store.put_report(&report("n1", "a", 1_000)).unwrap();
        store.put_report(&report("n1", "b", 2_000)).unwrap();
        store.put_report(&report("n10", "c", 1_000)).unwrap();

        assert!(store.remove_node("n1").unwrap());
        assert_eq!(store.node("n1").unwrap(), None);
        assert!(store.reports("n1", 10).unwrap().is_empty());
        assert_eq!(store.report("n1", "a").unwrap(), None);
        assert_eq!(run_ids(&store.reports("n10", 10).unwrap()), ["c"]);
        assert!(store.node("n10").unwrap().is_some());
        assert!(!store.remove_node("n1").unwrap());
    }

    #[test]
    fn revisions_round_trip_newest_first_and_only_an_accepted_one_becomes_current() {
        let (_dir, store) = fresh_store();
        assert_eq!(store.current_revision().unwrap(), None);
        store.put_revision(&revision("good1", true, 1_000)).unwrap();
        store.put_revision(&revision("bad", false, 2_000)).unwrap();

        assert_eq!(
            store.revision("bad").unwrap(),
            Some(revision("bad", false, 2_000))
        );
        let commits: Vec<String> = store
            .revisions()
            .unwrap()
            .into_iter()
            .map(|r| r.commit)
            .collect();
        assert_eq!(commits, ["bad", "good1"]);

        store.set_current_revision("good1").unwrap();
        let refused = store.set_current_revision("bad").unwrap_err();
        assert!(
            matches!(refused, StoreError::RevisionRefused { .. }),
            "{refused}"
        );
        let unknown = store.set_current_revision("never-synced").unwrap_err();
        assert!(
            matches!(unknown, StoreError::RevisionUnknown { .. }),
            "{unknown}"
        );
        assert_eq!(store.current_revision().unwrap().as_deref(), Some("good1"));
    }

    #[test]
    fn sha256_hex_matches_the_known_digest_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ca_and_settings_round_trip_and_the_ca_key_stays_out_of_debug_output() {
        let (_dir, store) = fresh_store();
        assert_eq!(store.ca().unwrap(), None);
        let ca = CaRecord {
            certificate_pem: "-----BEGIN CERTIFICATE-----".to_string(),
            private_key_pem: "-----BEGIN PRIVATE KEY----- secret".to_string(),
        };
        store.put_ca(&ca).unwrap();
        assert_eq!(store.ca().unwrap(), Some(ca.clone()));
        assert!(!format!("{ca:?}").contains("secret"));

        store.put_setting("admin_credential", b"hash").unwrap();
        assert_eq!(
            store.get_setting("admin_credential").unwrap().as_deref(),
            Some(&b"hash"[..])
        );
        assert_eq!(store.get_setting("absent").unwrap(), None);
    }

    #[test]
    fn revoking_a_node_revokes_all_its_certificates_once() {
        let (_dir, store) = fresh_store();
        store.put_certificate(&certificate("s1", "n1")).unwrap();
        store.put_certificate(&certificate("s2", "n1")).unwrap();
        store.put_certificate(&certificate("s3", "n2")).unwrap();

        let mut revoked = store.revoke_node("n1").unwrap();
        revoked.sort();
        assert_eq!(revoked, ["s1", "s2"]);
        assert!(store.is_revoked("s1").unwrap());
        assert!(store.is_revoked("s2").unwrap());
        assert!(!store.is_revoked("s3").unwrap());
        assert!(!store.is_revoked("unknown").unwrap());
        assert_eq!(store.revoke_node("n1").unwrap(), Vec::<String>::new());
        assert!(store.certificate("s1").unwrap().expect("recorded").revoked);
    }

    #[test]
    fn a_limited_token_is_used_up_and_then_refused() {
        let (_dir, store) = fresh_store();
        let id = TokenRecord::id_for_secret("secret");
        store.put_token(&token(&id, Some(2), 1_000)).unwrap();

        assert_eq!(store.consume_token(&id, 500).unwrap().uses_left, Some(1));
        assert_eq!(store.consume_token(&id, 500).unwrap().uses_left, Some(0));
        let error = store.consume_token(&id, 500).unwrap_err();
        assert!(matches!(error, StoreError::TokenUsedUp), "{error}");
        assert_eq!(store.tokens().unwrap(), [token(&id, Some(0), 1_000)]);
    }

    #[test]
    fn an_unlimited_token_works_until_it_expires() {
        let (_dir, store) = fresh_store();
        store.put_token(&token("t", None, 1_000)).unwrap();
        for _ in 0..3 {
            assert_eq!(store.consume_token("t", 999).unwrap().uses_left, None);
        }
        let error = store.consume_token("t", 1_000).unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::TokenExpired {
                    expires_unix: 1_000
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_token_is_refused_and_a_removed_token_is_unknown() {
        let (_dir, store) = fresh_store();
        let error = store.consume_token("nope", 0).unwrap_err();
        assert!(matches!(error, StoreError::TokenUnknown), "{error}");

        store.put_token(&token("t", Some(5), 1_000)).unwrap();
        assert!(store.remove_token("t").unwrap());
        let error = store.consume_token("t", 0).unwrap_err();
        assert!(matches!(error, StoreError::TokenUnknown), "{error}");
    }

    #[test]
    fn concurrent_enrollments_never_use_a_token_more_than_allowed() {
        const USES: u32 = 5;
        const THREADS: usize = 8;
        const ATTEMPTS_PER_THREAD: usize = 4;
        let (_dir, store) = fresh_store();
        store.put_token(&token("t", Some(USES), 1_000)).unwrap();

        let barrier = Barrier::new(THREADS);
        let outcomes: Vec<Result<TokenRecord, StoreError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let store = store.clone();
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        (0..ATTEMPTS_PER_THREAD)
                            .map(|_| store.consume_token("t", 10))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("thread"))
                .collect()
        });

        let mut uses_left_after_each_success: Vec<u32> = outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().ok())
            .map(|token| token.uses_left.expect("limited"))
            .collect();
        uses_left_after_each_success.sort();
        assert_eq!(uses_left_after_each_success, [0, 1, 2, 3, 4]);
        for outcome in &outcomes {
            if let Err(error) = outcome {
                assert!(matches!(error, StoreError::TokenUsedUp), "{error}");
            }
        }
        assert_eq!(
            store.consume_token("t", 10).unwrap_err().to_string(),
            "Failed to consume the enrollment token: it has no uses left"
        );
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
            let store = Store::open(&path).unwrap();
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

        let store = Store::open(&path).unwrap();
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
    fn reopening_at_once_after_a_drop_always_gets_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        for round in 0..100u64 {
            let store = Store::open(&path).unwrap_or_else(|error| panic!("round {round}: {error}"));
            let run_id = format!("run-{round}");
            store.put_report(&report("n1", &run_id, round)).unwrap();
        }
        assert_eq!(
            Store::open(&path)
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
            let store = Store::open(&path).unwrap();
            store.meta.insert(FORMAT, &b"2"[..]).unwrap();
            store.flush().unwrap();
        }
        let error = Store::open(&path).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("its format is \"2\", this server reads format \"1\""),
            "{error}"
        );
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
