//! The server's storage, as a trait: nodes, run reports, revisions, the
//! CA, certificates, enrollment tokens, fleet triggers, dashboard tokens
//! and sessions, and small settings.
//!
//! Callers hold a [`SharedStore`] (`Arc<dyn Store>`), whose methods take and
//! return plain records (the serde structs below), strings and bytes, and
//! fail with [`StoreError`], whose backend cause is opaque
//! ([`BackendError`]). No caller sees which engine is behind it:
//! [`SledStore`] (`sled.rs`, one embedded sled database in the server's data
//! folder, the default, the only module that names sled types),
//! [`PostgresStore`] (`postgres.rs`, one PostgreSQL database shared by
//! several servers behind one address, `--store postgres://…`) and
//! [`MemoryStore`] (`memory.rs`, for unit tests). [`open_configured`] picks
//! one from the server's [`StoreConfig`]. `conformance.rs` holds the
//! behaviour every engine must show, run against all three.
//!
//! Every method is blocking I/O that can fail: from async code, run writes
//! and bulk work (`nodes`, `prune_reports`, `remove_node`) off the async
//! workers. Every mutating method has made its write durable when it
//! returns, so whatever the server acknowledges to a client survives a
//! restart. Read-modify-write is atomic where the server needs it:
//! `consume_token` never lets concurrent enrollments over-use a token,
//! `update_node` never loses a concurrent change, and `put_report` stores a
//! re-sent (node, run id) once. `record_run` writes a run report and its
//! summary on the node together, in one durable write: one sync per report.
//!
//! # What replicas would share
//!
//! Everything a second server behind the same address must see is here:
//! nodes, reports, revisions and the current revision, the CA (certificate
//! and key), certificates and their revocation, enrollment tokens,
//! dashboard tokens and sessions, and triggers. Two pieces of server state
//! are deliberately not:
//!
//! - the admin credential (`<data>/admin/`) is a file the operator's CLI
//!   reads on the server host. The operator it names is in the store (its
//!   current serial), so on a shared store only the first replica makes the
//!   bootstrap credential (`operators::bootstrap`); the others get the CA
//!   certificate, and the operator uses that credential, or one
//!   `cms-server admin add` made, with any replica;
//! - noted last-seen times are in memory, per process, and written here in
//!   batches.
//!
//! Dashboard tokens and sessions are here: a token made through one
//! replica signs in on all, one revoked on any is refused by all, and
//! signed in on one replica is signed in on all. (Servers before this kept
//! the tokens in `<data>/admin/dashboard-tokens`; a server imports that
//! file into the store at start, see `dashboard_tokens::import_file`.)
//!
//! # Key layout
//!
//! Keys are bytes, values JSON; one keyspace (a sled tree, a SQL table) per
//! kind of record.
//!
//! | keyspace       | key                                                         | value                        |
//! |----------------|-------------------------------------------------------------|------------------------------|
//! | `meta`         | `format`, `current_revision`, `ca`, `report_log_applied`    | `1`, the commit id as a JSON string, `CaRecord`, sled's report log position (segment, offset: 2 × 8 bytes big-endian) |
//! | `nodes`        | node id                                                     | `NodeRecord`                 |
//! | `reports`      | node id, `0x00`, `u64::MAX - received_unix_ms` (8 bytes big-endian), run id | `StoredReport`; in sled, a pointer into its report log (`0x01`, segment, offset, length: 21 bytes), or the JSON of reports stored before it |
//! | `report_index` | node id, `0x00`, run id                                     | the key in `reports`         |
//! | `revisions`    | commit id                                                   | `RevisionRecord`             |
//! | `certificates` | serial                                                      | `CertificateRecord`          |
//! | `tokens`       | token id: sha256 hex of the secret, never the secret        | `TokenRecord`                |
//! | `settings`     | name; `environment/<name>` holds an environment            | raw bytes; `EnvironmentRecord` as JSON |
//! | `triggers`     | trigger id                                                  | `TriggerRecord`              |
//! | `operators`    | operator name                                               | `OperatorRecord`             |
//! | `audit`        | `time_unix_ms` (8 bytes big-endian), a unique sequence number (8 bytes big-endian) | `AuditRecord` |
//! | `dashboard_sessions` | sha256 hex of the session cookie              | its expiry, unix ms (8 bytes big-endian), then the sha256 hex of the token it was opened with |
//! | `dashboard_tokens` | sha256 hex of the token, never the token        | `DashboardTokenRecord`       |
//!
//! A node's reports share the prefix `node id, 0x00`, and the inverted time
//! makes a forward scan of that prefix list them newest first, so "the last
//! 20 runs of a node" reads 20 values. Node ids may therefore not contain a
//! NUL byte. `report_index` makes re-sending a report idempotent: an agent
//! that did not see the acknowledgement sends the same run id again, and the
//! index finds the stored copy without knowing when it was received. The
//! report is written before its index entry, so whoever finds the one finds
//! the other. `prune_reports` decodes the time
//! from the keys alone, without parsing any JSON.
//!
//! # The shared store
//!
//! In PostgreSQL each keyspace is a table with the same key (the schema is
//! in `docs/store.md` and `cms-server/migrations/`): `reports(node_id,
//! run_id)` as the primary key with an index on `(node_id,
//! received_unix_ms DESC)` (the unique key replaces `report_index`),
//! `revisions(commit)` plus a one-row table for the current revision,
//! `certificates(serial)` with an index on `node_id`, `tokens(id)`, where
//! `consume_token` is one `UPDATE … SET uses_left = uses_left - 1 WHERE id =
//! $1 AND expires_unix > $2 AND (uses_left IS NULL OR uses_left > 0)
//! RETURNING …`. The durable write at the end of each method is the commit
//! of a statement or transaction. The CA's private key is encrypted with
//! the operator's [`StoreKey`] before it reaches the database. A database
//! that cannot be reached fails calls with [`StoreError::Unavailable`]
//! within seconds, which the gRPC layer answers with `UNAVAILABLE`.
//! `migrate.rs` copies every record between any two stores
//! (`cms-server store migrate`), using the listing methods (`settings`,
//! `certificates`, `all_reports`, `dashboard_tokens`). Contents are immutable and addressed by
//! hash, so they would fit an object store (S3 and the like) keyed by the
//! same sha256.

#[doc(hidden)]
pub mod conformance;
mod key;
mod memory;
pub mod migrate;
pub mod postgres;
mod reopen;
mod report_log;
mod sled;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cms_proto::report::RunRecord;
use serde::{Deserialize, Serialize};

pub use self::key::{STORE_KEY_BYTES, StoreKey, StoreKeyError};
pub use self::memory::MemoryStore;
pub use self::postgres::{PostgresConfig, PostgresStore};
pub use self::reopen::Reopening;
pub use self::sled::SledStore;

/// How callers hold the store: one handle, shared by every task.
pub type SharedStore = Arc<dyn Store>;

/// Opens the sled store in `dir` (see [`SledStore::open`]),
/// behind [`Reopening`], which reopens it by itself after the disk failed a
/// write (a full disk) and takes writes again.
pub fn open(dir: &Path) -> Result<SharedStore, StoreError> {
    Ok(Arc::new(Reopening::open(dir, |dir| {
        Ok(Arc::new(SledStore::open(dir)?) as SharedStore)
    })?))
}

/// Which store a server uses: `--store` (`CMS_STORE`) as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// sled in this directory (the database itself, `<data>/db` for a
    /// server).
    Sled(PathBuf),
    /// PostgreSQL at this connection URL.
    Postgres(String),
}

impl StoreLocation {
    /// Parses `postgres://…` (or `postgresql://…`) and `sled:DIR`; `DIR`
    /// is a server's data directory, whose store is `DIR/db`.
    pub fn parse(text: &str) -> Result<StoreLocation, StoreError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            postgres::describe_url(text)?;
            return Ok(StoreLocation::Postgres(text.to_string()));
        }
        if let Some(dir) = text.strip_prefix("sled:")
            && !dir.is_empty()
        {
            return Ok(StoreLocation::Sled(Path::new(dir).join("db")));
        }
        Err(StoreError::InvalidUrl {
            problem: format!(
                "{:?} is neither a postgres:// URL nor sled:DIR",
                redact_url(text)
            ),
        })
    }

    /// For messages: the directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sled(dir) => format!("sled:{}", dir.display()),
            StoreLocation::Postgres(url) => {
                postgres::describe_url(url).unwrap_or_else(|_| redact_url(url))
            }
        }
    }
}

/// `text` with anything between `://` and `@` (a password) left out.
fn redact_url(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…{}", &text[..scheme], &text[at..])
        }
        _ => text.to_string(),
    }
}

/// How the server's store is chosen: `--store` and `--store-key-file`.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// `None`: sled in the data directory.
    pub location: Option<StoreLocation>,
    /// The file holding the store key; needed for PostgreSQL.
    pub key_file: Option<PathBuf>,
    /// The PostgreSQL connection pool's size (`None`: the default, 16).
    pub pool_size: Option<usize>,
}

/// Opens the store a server is configured with: sled in `data_dir/db`
/// (see [`open`]) without a location, else the one given. PostgreSQL needs
/// the store key; without it this fails saying how to make one.
pub fn open_configured(data_dir: &Path, config: &StoreConfig) -> Result<SharedStore, StoreError> {
    match &config.location {
        None => open(&data_dir.join("db")),
        Some(StoreLocation::Sled(dir)) => open(dir),
        Some(StoreLocation::Postgres(url)) => {
            let Some(key_file) = &config.key_file else {
                return Err(StoreError::KeyMissing {
                    target: postgres::describe_url(url)?,
                });
            };
            let key = StoreKey::read(key_file)?;
            let mut postgres = PostgresConfig::new(url.clone(), key);
            if let Some(size) = config.pool_size {
                postgres.pool_size = size;
            }
            Ok(Arc::new(PostgresStore::open(&postgres)?))
        }
    }
}

/// An error and its causes on one line, `outer: inner: innermost`, each
/// cause once (a cause whose text its outer one already shows is skipped).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The format of the stored records; a store written in another is refused.
pub(crate) const FORMAT_VERSION: &str = "1";

/// The server's storage; see the module docs for the guarantees every
/// implementation keeps.
pub trait Store: Send + Sync + fmt::Debug {
    // Nodes.

    /// Inserts or replaces a node.
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError>;

    fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError>;

    /// All nodes, ordered by id.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// Changes an existing node atomically: `change` sees the current record
    /// and may run more than once if another writer changed the node
    /// meanwhile. Returns the record as written, or `None` (and writes
    /// nothing) when there is no such node. Callers use
    /// [`update_node`](trait.Store.html#method.update_node) on `dyn Store`,
    /// which takes a closure.
    fn update_node_with(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, StoreError>;

    /// Records an enrollment: the certificate issued and the node record,
    /// together, atomically.
    fn record_enrollment(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
    ) -> Result<(), StoreError>;

    /// Takes a node's name for a new certificate, atomically: writes the
    /// certificate and the node record only if the name is still held as
    /// the caller saw it, `expected_serial` being the certificate serial of
    /// the node record it read (`None`: no record). Otherwise nothing is
    /// written and it fails with [`StoreError::NameClaimed`], so of two
    /// enrollments of one name that both saw it free exactly one wins. With
    /// `clear_history`, the name's old reports are removed with it (a new
    /// instance starts clean), and every other certificate issued under the
    /// name is revoked once the claim is written.
    fn claim_name(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
        expected_serial: Option<&str>,
        clear_history: bool,
    ) -> Result<(), StoreError>;

    /// Records when nodes were last seen, many at once with one durable
    /// write, also replacing the facts of nodes that sent new ones. A time
    /// older than the stored one is ignored; unknown nodes are skipped.
    /// Returns how many nodes changed.
    fn touch_nodes_with_facts(
        &self,
        seen: &[(String, u64, Option<serde_json::Value>)],
    ) -> Result<usize, StoreError>;

    /// Removes a node and all its reports. Returns whether the node existed.
    /// Its certificates stay, so that a revocation outlives the node.
    fn remove_node(&self, id: &str) -> Result<bool, StoreError>;

    // Reports.

    /// Stores a report unless the same (node, run id) is already stored, in
    /// which case the stored copy (and its received time) stays. Either way
    /// the report is durable when this returns, so the caller may
    /// acknowledge it.
    fn put_report(&self, report: &StoredReport) -> Result<ReportWrite, StoreError>;

    /// What the server does with a run report: stores it as
    /// [`put_report`](Store::put_report) does (once per node and run id)
    /// and, in the same atomic, durable write, notes the run on its node:
    /// `last_run` becomes `summary` and the last-seen time moves forward to
    /// the report's received time. The node is noted for a re-sent report
    /// too; an unknown node is skipped and the report still stored. One
    /// write (one transaction, one flush), so a report costs one sync, and
    /// the caller may acknowledge it when this returns.
    fn record_run(
        &self,
        report: &StoredReport,
        summary: &RunSummary,
    ) -> Result<ReportWrite, StoreError>;

    fn report(&self, node_id: &str, run_id: &str) -> Result<Option<StoredReport>, StoreError>;

    /// A node's reports, newest first, at most `limit` of them.
    fn reports(&self, node_id: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError>;

    /// Removes every report received before `older_than_unix_ms`, of all
    /// nodes. Returns how many it removed.
    fn prune_reports(&self, older_than_unix_ms: u64) -> Result<usize, StoreError>;

    // Revisions.

    /// Inserts or replaces the record of a synced commit.
    fn put_revision(&self, revision: &RevisionRecord) -> Result<(), StoreError>;

    fn revision(&self, commit: &str) -> Result<Option<RevisionRecord>, StoreError>;

    /// All recorded revisions, most recently synced first.
    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError>;

    /// Makes `commit` the revision the server serves. Only a recorded,
    /// accepted revision can become current.
    fn set_current_revision(&self, commit: &str) -> Result<(), StoreError>;

    /// The commit last made current: the last good revision.
    fn current_revision(&self) -> Result<Option<String>, StoreError>;

    // The CA and certificates.

    /// Stores the CA, replacing any earlier one.
    fn put_ca(&self, ca: &CaRecord) -> Result<(), StoreError>;

    fn ca(&self) -> Result<Option<CaRecord>, StoreError>;

    /// Inserts or replaces the record of an issued certificate.
    fn put_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError>;

    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError>;

    /// Revokes every certificate issued to `node_id`. Returns the serials
    /// this call revoked (not those revoked before).
    fn revoke_node(&self, node_id: &str) -> Result<Vec<String>, StoreError>;

    /// Whether the certificate with this serial has been revoked. A serial
    /// the store does not know is not revoked; the TLS layer only lets in
    /// certificates our CA signed, and every one of those is recorded
    /// before it is handed out.
    fn is_revoked(&self, serial: &str) -> Result<bool, StoreError> {
        Ok(self
            .certificate(serial)?
            .is_some_and(|certificate| certificate.revoked))
    }

    /// Forgets certificate records that expired before `before_unix`: the
    /// TLS layer refuses an expired certificate by itself, so its record
    /// (revoked or not) is no longer needed.
    fn prune_certificates(&self, before_unix: u64) -> Result<usize, StoreError>;

    // Fleet triggers.

    /// Inserts or replaces a trigger's progress.
    fn put_trigger(&self, trigger: &TriggerRecord) -> Result<(), StoreError>;

    fn trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError>;

    /// All triggers, ordered by id (ids start with their start time).
    fn triggers(&self) -> Result<Vec<TriggerRecord>, StoreError>;

    // Enrollment tokens.

    /// Inserts or replaces a token.
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    /// All tokens, including expired and used-up ones.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Uses the token once: fails if it is unknown, expired at `now_unix`
    /// (seconds) or used up, and otherwise takes one use off a limited token,
    /// atomically, so concurrent enrollments never use it more often than
    /// allowed. Returns the token as it is after this use.
    fn consume_token(&self, id: &str, now_unix: u64) -> Result<TokenRecord, StoreError>;

    /// Removes a token. Returns whether it existed.
    fn remove_token(&self, id: &str) -> Result<bool, StoreError>;

    /// One token by id (the sha256 hex of its secret).
    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;

    // Operators: one admin credential each.

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError>;

    /// All operators, ordered by name, revoked ones included.
    fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError>;

    /// Writes `new` in place of the operator of that name only if the
    /// stored record is still `expected` (`None`: there is none yet),
    /// atomically. Returns whether it wrote; a `false` means another call
    /// changed the operator meanwhile, and the caller reads it again.
    fn swap_operator(
        &self,
        expected: Option<&OperatorRecord>,
        new: &OperatorRecord,
    ) -> Result<bool, StoreError>;

    // The audit log of admin calls.

    /// Appends a record, durably. Records of the same millisecond keep
    /// their order of arrival.
    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;

    /// The last `limit` records, oldest first (newest last).
    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    // Settings: small named values.

    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    // Dashboard sessions: the sha256 of each session cookie, the dashboard
    // token it was opened with and when it expires, so that a session
    // opened on one replica is one on every replica, and revoking a token
    // ends the sessions it opened. Short-lived: `cms-server store migrate`
    // does not carry them.

    /// Records the session `hash`, opened with the dashboard token
    /// `token_hash`, until `expires_unix_ms` (replacing one with the same
    /// hash), and removes the sessions expired at `now_unix_ms`.
    fn open_session(
        &self,
        hash: &str,
        token_hash: &str,
        expires_unix_ms: u64,
        now_unix_ms: u64,
    ) -> Result<(), StoreError>;

    /// Whether the session `hash` is recorded, not expired at
    /// `now_unix_ms`, and the token it was opened with is stored and not
    /// revoked (a session recorded without its token, by an older server,
    /// is not valid: its user signs in again).
    fn session_is_valid(&self, hash: &str, now_unix_ms: u64) -> Result<bool, StoreError>;

    /// Ends the session `hash`: false when there was none.
    fn close_session(&self, hash: &str) -> Result<bool, StoreError>;

    // Dashboard tokens: the sha256 of each login token, when it was made
    // and by whom, and its revocation, so that a token made through one
    // replica signs in on every replica and one revoked on any is refused
    // by all. Credentials: `cms-server store migrate` carries them. Every
    // write is durable when it returns.

    /// Stores `token` as given (a revocation included) unless a token with
    /// its hash is stored already, which then stays as it is: adding never
    /// brings a revoked token back. Returns whether it was stored.
    fn add_dashboard_token(&self, token: &DashboardTokenRecord) -> Result<bool, StoreError>;

    /// Whether the token whose sha256 is `hash` is stored and not revoked.
    fn dashboard_token_is_valid(&self, hash: &str) -> Result<bool, StoreError>;

    /// Every dashboard token, revoked ones included, ordered by hash.
    fn dashboard_tokens(&self) -> Result<Vec<DashboardTokenRecord>, StoreError>;

    /// Revokes the token `hash` at `revoked_unix_ms` on `revoked_by`'s
    /// word, atomically: of two revocations at once one revokes it, and a
    /// revoked token keeps its first revocation.
    fn revoke_dashboard_token(
        &self,
        hash: &str,
        revoked_unix_ms: u64,
        revoked_by: &str,
    ) -> Result<DashboardTokenRevocation, StoreError>;

    // Listings of everything, for `cms-server store migrate`.

    /// Every setting (environments included), ordered by name.
    fn settings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Every certificate record, ordered by serial.
    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Every node's reports ordered by (node id, run id) as bytes, starting
    /// after `after` (a node id and run id), at most `limit`: a page of a
    /// walk through all reports.
    fn all_reports(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredReport>, StoreError>;

    /// Stores `ca` unless a CA is stored already, and returns the stored
    /// one: of servers starting together on a new shared store, the first
    /// CA written wins and every server uses it.
    fn put_ca_if_absent(&self, ca: &CaRecord) -> Result<CaRecord, StoreError> {
        if let Some(stored) = self.ca()? {
            return Ok(stored);
        }
        self.put_ca(ca)?;
        Ok(ca.clone())
    }

    // Environments: one record each, kept as a setting (`environment/<name>`).

    /// An environment's stored state: stable commit, pins, recent rollouts.
    fn environment(&self, name: &str) -> Result<Option<EnvironmentRecord>, StoreError> {
        let Some(bytes) = self.get_setting(&environment_key(name))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::CorruptValue {
                tree: "settings",
                key: environment_key(name),
                source,
            })
    }

    fn put_environment(&self, record: &EnvironmentRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            what: "environment record",
            source,
        })?;
        self.put_setting(&environment_key(&record.name), &bytes)
    }

    // Health.

    /// `Ok` while the store can write. After a write failed for a cause
    /// outside the server (a full disk, an I/O error), tries to recover and
    /// returns the error for as long as it cannot. What `/healthz` asks.
    /// Blocks.
    fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl dyn Store + '_ {
    /// [`Store::update_node_with`] with a closure.
    pub fn update_node(
        &self,
        id: &str,
        mut change: impl FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, StoreError> {
        self.update_node_with(id, &mut change)
    }

    /// [`Store::touch_nodes_with_facts`] for nodes that sent no new facts.
    pub fn touch_nodes(&self, seen: &[(String, u64)]) -> Result<usize, StoreError> {
        let with_facts: Vec<(String, u64, Option<serde_json::Value>)> = seen
            .iter()
            .map(|(id, at)| (id.clone(), *at, None))
            .collect();
        self.touch_nodes_with_facts(&with_facts)
    }
}

/// How [`Store::record_run`] notes a run on its node.
fn note_run(node: &mut NodeRecord, report: &StoredReport, summary: &RunSummary) {
    node.last_seen_unix_ms = node.last_seen_unix_ms.max(report.received_unix_ms);
    node.last_run = Some(summary.clone());
}

/// Node ids are keys with a NUL separator after them (see the key layout).
fn check_node_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.contains('\0') {
        return Err(StoreError::InvalidNodeId { id: id.to_string() });
    }
    Ok(())
}

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
    /// What the server verified itself at enrollment, never reported by the
    /// node: for an attested EC2 instance `instance_id`, `account_id`,
    /// `region`, `availability_zone`, `instance_type`, `image_id`. Empty
    /// for a node that enrolled with a token.
    #[serde(default)]
    pub attested: BTreeMap<String, String>,
    /// The environment the node was bound to at enrollment; empty in a
    /// record stored before environments existed (bound from its tags).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub environment: String,
}

impl NodeRecord {
    /// Notes that the node was seen at `at`, with `facts` when it sent
    /// them: the last-seen time moves forward only, the node is active
    /// again, new facts replace the old. Whether anything changed, so that
    /// a store writes only the nodes that did.
    pub fn note_seen(&mut self, at: u64, facts: Option<&serde_json::Value>) -> bool {
        let new_facts = facts.filter(|f| **f != self.facts);
        if self.last_seen_unix_ms >= at && self.status == NodeStatus::Active && new_facts.is_none()
        {
            return false;
        }
        if let Some(facts) = new_facts {
            self.facts = facts.clone();
        }
        self.last_seen_unix_ms = self.last_seen_unix_ms.max(at);
        self.status = NodeStatus::Active;
        self.gone_since_unix_ms = None;
        true
    }
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
    /// Stored under the name it had when it was untyped JSON, so that
    /// reports stored then still read.
    #[serde(rename = "report_json")]
    pub report: RunRecord,
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
    /// The commit the run's catalog was compiled from; empty when no
    /// report came.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Why no report came, for an `unreachable` node, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

fn environment_key(name: &str) -> String {
    format!("environment/{name}")
}

/// How many finished rollouts an environment record keeps.
/// (A rollout holds each node's outcome: the record of an environment of
/// 10,000 nodes is some megabytes per rollout kept.)
pub const KEPT_ROLLOUTS: usize = 20;

/// An environment's stored state, written whole on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRecord {
    pub name: String,
    /// The commit every node gets unless a rollout moved it or a pin holds
    /// it; empty until a commit validates.
    pub stable: String,
    pub pins: Vec<PinRecord>,
    /// Oldest first; the active one, if any, is the last.
    pub rollouts: Vec<RolloutRecord>,
}

impl EnvironmentRecord {
    /// The rollout in progress (running, baking or paused).
    pub fn active(&self) -> Option<&RolloutRecord> {
        self.rollouts.last().filter(|r| r.is_active())
    }

    pub fn active_mut(&mut self) -> Option<&mut RolloutRecord> {
        self.rollouts.last_mut().filter(|r| r.is_active())
    }

    pub fn rollout(&self, id: &str) -> Option<&RolloutRecord> {
        self.rollouts.iter().find(|r| r.id == id)
    }

    /// Adds a rollout, dropping the oldest finished ones past
    /// [`KEPT_ROLLOUTS`].
    pub fn push_rollout(&mut self, rollout: RolloutRecord) {
        self.rollouts.push(rollout);
        let excess = self.rollouts.len().saturating_sub(KEPT_ROLLOUTS);
        self.rollouts.drain(..excess);
    }
}

/// A pin: the nodes of the environment whose tags match `selector` are
/// held on `commit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    pub selector: BTreeMap<String, String>,
    pub commit: String,
    pub created_unix_ms: u64,
    pub created_by: String,
}

/// The rollout policy it ran with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicyRecord {
    pub canary: u32,
    pub batch: String,
    pub bake_ms: u64,
    pub max_failures: u32,
    pub timeout_ms: u64,
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveRecord {
    /// `canary`, `wave 2`, ... or `promoted`.
    pub name: String,
    pub nodes: Vec<String>,
    #[serde(default)]
    pub outcomes: BTreeMap<String, TriggerOutcome>,
    pub started_unix_ms: Option<u64>,
    pub finished_unix_ms: Option<u64>,
}

/// A commit of an environment going through its fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    pub environment: String,
    pub from: String,
    pub to: String,
    /// `running`, `baking`, `paused`, `rolling_back` (the active ones),
    /// `done`, `promoted`, `rolled_back` or `aborted`.
    pub state: String,
    pub message: String,
    pub policy: RolloutPolicyRecord,
    pub waves: Vec<WaveRecord>,
    /// Waves started.
    pub waves_started: u32,
    /// The nodes on `to` now (those of started waves, and the unchanged
    /// ones, moved at start).
    pub moved: BTreeSet<String>,
    pub unchanged_nodes: u32,
    pub pinned_nodes: Vec<String>,
    pub failures: u32,
    /// The fleet diff, as `cms-server diff` prints it.
    pub diff_summary: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub bake_until_unix_ms: Option<u64>,
    /// The moved nodes' runs back on `from`, after a halt or an abort.
    #[serde(default)]
    pub rollback: BTreeMap<String, TriggerOutcome>,
    /// Operator actions, in order: `pause by alice at <ms>`.
    #[serde(default)]
    pub actions: Vec<String>,
}

impl RolloutRecord {
    pub fn is_active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "baking" | "paused" | "rolling_back"
        )
    }
}

/// An enrollment token. The store never sees the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// sha256 hex of the secret (see `pki::token_id`).
    pub id: String,
    /// The tags a node enrolling with this token may claim; values may be
    /// globs, which the enrollment code interprets.
    pub scope: BTreeMap<String, String>,
    pub expires_unix: u64,
    /// `None` means unlimited.
    pub uses_left: Option<u32>,
    pub created_unix: u64,
}

/// A login token of the fleet dashboard. The store never sees the secret,
/// only its sha256; a revoked token stays listed, and stays revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardTokenRecord {
    /// sha256 hex of the secret, never the secret.
    pub hash: String,
    pub created_unix_ms: u64,
    /// The operator who made it, or [`IMPORTED_DASHBOARD_TOKEN`] for one
    /// imported from a data directory's `admin/dashboard-tokens` file.
    pub created_by: String,
    /// When it was revoked; a revoked token signs no one in.
    pub revoked_unix_ms: Option<u64>,
    /// The operator who revoked it.
    pub revoked_by: Option<String>,
}

/// Who made a dashboard token imported from the file older servers kept:
/// not an operator's name (those never start with a parenthesis).
pub const IMPORTED_DASHBOARD_TOKEN: &str = "(imported)";

/// How many hex digits of its sha256 name a dashboard token in listings,
/// the audit log and `--revoke`.
pub const DASHBOARD_TOKEN_ID_DIGITS: usize = 12;

impl DashboardTokenRecord {
    /// The token's short id: the first [`DASHBOARD_TOKEN_ID_DIGITS`] hex
    /// digits of its sha256.
    pub fn id(&self) -> &str {
        self.hash
            .get(..DASHBOARD_TOKEN_ID_DIGITS)
            .unwrap_or(&self.hash)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_unix_ms.is_some()
    }
}

/// What [`Store::revoke_dashboard_token`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DashboardTokenRevocation {
    /// This call revoked it; the record as stored now.
    Revoked(DashboardTokenRecord),
    /// It was revoked before, and stays as it was.
    AlreadyRevoked(DashboardTokenRecord),
    /// No token has that hash.
    Unknown,
}

/// An operator: a person (or a tool) with an admin credential of its own.
/// Admin calls are accepted from the certificate whose serial is `serial`
/// only, and from none once the operator is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub name: String,
    /// The serial (hex) of the operator's current certificate; renewing
    /// replaces it, and the old certificate is refused from then on.
    pub serial: String,
    pub created_unix: u64,
    /// When the current certificate expires.
    pub not_after_unix: u64,
    /// When it was revoked; a revoked operator's calls are all refused.
    pub revoked_unix: Option<u64>,
    /// Who added it (or last renewed it): an operator's name, or `server`
    /// for the bootstrap credential the server writes itself.
    pub added_by: String,
}

/// One admin call, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time_unix_ms: u64,
    /// The operator whose certificate made the call.
    pub operator: String,
    /// The admin API method, e.g. `CreateToken`.
    pub method: String,
    /// What it acted on (a node, an operator, a token's scope), or empty.
    pub target: String,
    /// `ok`, or the gRPC status code of the refusal or failure
    /// (`permission_denied`, `not_found`, …).
    pub outcome: String,
    /// The error's message when the call did not succeed.
    pub message: String,
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
    #[error("Failed to enroll node {id}: another enrollment took the name meanwhile")]
    NameClaimed { id: String },
    /// The shared database cannot be reached (down, unreachable, failing
    /// over, a read-only standby): the call may succeed when retried.
    #[error(
        "Failed to {action}: the database {target} cannot be reached: {detail}; retry in a few seconds"
    )]
    Unavailable {
        action: String,
        /// Where the database is, without the password.
        target: String,
        detail: String,
    },
    #[error(
        "Failed to read the store URL: {problem}; write postgres://USER:PASSWORD@HOST:PORT/DATABASE, or sled:DIR"
    )]
    InvalidUrl { problem: String },
    #[error(
        "Failed to open the store in {target}: its schema is at version {found}, this server knows versions up to {known}; run the newer cms-server that migrated it"
    )]
    SchemaTooNew {
        target: String,
        found: i32,
        known: i32,
    },
    #[error(
        "Failed to open the store in {target}: the store key {key_file} is not the key its secrets were encrypted with; give every replica the same key file"
    )]
    WrongKey { target: String, key_file: String },
    #[error(
        "Failed to open the store in {target}: it needs a store key to encrypt the CA's private key; make one with `cms-server store keygen > /etc/cms-server/store.key` (then chmod 600 it), and pass it with --store-key-file or CMS_STORE_KEY_FILE, the same file on every replica"
    )]
    KeyMissing { target: String },
    #[error(transparent)]
    Key(#[from] key::StoreKeyError),
    /// The disk under the store refused a write (full, read-only, failing).
    #[error(
        "Failed to {action}: the server's store cannot write: {source} (store at {}); free space there or fix the disk, the store recovers by itself",
        path.display()
    )]
    Unwritable {
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The text of the disk's error when this is one of the medium (the
    /// store cannot write), `None` for every other error.
    pub fn medium_failure(&self) -> Option<String> {
        match self {
            StoreError::Unwritable { source, .. } | StoreError::Sync { source, .. } => {
                Some(source.to_string())
            }
            _ => None,
        }
    }

    /// Whether a retry later may succeed: the disk refused a write (the
    /// store recovers by itself) or the database cannot be reached.
    pub fn is_retryable(&self) -> bool {
        self.medium_failure().is_some() || matches!(self, StoreError::Unavailable { .. })
    }
}

/// An error from the storage engine. It is opaque so that no caller comes
/// to depend on which engine that is; its message and source chain carry
/// the details.
pub struct BackendError(Box<dyn std::error::Error + Send + Sync>);

impl BackendError {
    /// Wraps an engine's error; only an implementation of [`Store`] makes
    /// one.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> BackendError {
        BackendError(Box::new(error))
    }
}

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
        self.0.source()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::conformance::{certificate, node, report, revision, tags, token};

    /// Runs each check against every implementation of the store.
    macro_rules! for_every_store {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[test]
                fn sled() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let store = crate::store::SledStore::open(&dir.path().join("db"))
                        .expect("open store");
                    crate::store::conformance::$name(&store);
                }

                #[test]
                fn memory() {
                    crate::store::conformance::$name(&crate::store::MemoryStore::default());
                }
            }
        )*};
    }

    for_every_store!(
        nodes_round_trip_and_list_in_id_order,
        touching_nodes_moves_last_seen_forward_only_and_makes_a_gone_node_active,
        triggers_round_trip,
        update_node_changes_an_existing_node_and_ignores_an_unknown_one,
        a_node_id_with_a_nul_byte_is_refused,
        reports_list_newest_first_up_to_the_limit,
        a_resent_report_is_stored_once_and_keeps_its_first_copy,
        the_same_run_id_on_two_nodes_is_two_reports,
        recording_a_run_stores_its_report_once_and_notes_it_on_its_node,
        prune_removes_only_older_reports_and_lets_their_run_ids_be_stored_again,
        remove_node_removes_its_reports_and_no_one_elses,
        revisions_round_trip_newest_first_and_only_an_accepted_one_becomes_current,
        ca_and_settings_round_trip_and_the_ca_key_stays_out_of_debug_output,
        revoking_a_node_revokes_all_its_certificates_once,
        a_limited_token_is_used_up_and_then_refused,
        an_unlimited_token_works_until_it_expires,
        an_unknown_token_is_refused_and_a_removed_token_is_unknown,
        concurrent_enrollments_never_use_a_token_more_than_allowed,
        concurrent_claims_of_one_name_let_exactly_one_win,
        a_claim_fails_when_the_name_changed_since_it_was_read,
        a_fresh_claim_clears_the_history_and_revokes_the_old_certificates,
        two_concurrent_uses_of_a_single_use_token_let_exactly_one_win,
        a_token_is_found_by_its_id,
        an_operator_is_written_only_over_the_record_the_writer_read,
        the_audit_log_gives_the_last_records_newest_last,
        settings_certificates_and_reports_list_everything_for_a_migration,
        a_ca_put_if_absent_keeps_the_first_one,
        a_dashboard_session_is_valid_until_it_expires_or_closes_and_expired_ones_are_pruned,
        revoking_a_dashboard_token_ends_the_sessions_it_opened_and_no_others,
        a_dashboard_token_is_valid_until_revoked_and_stays_revoked_when_added_again,
        dashboard_tokens_list_in_hash_order_with_their_revocations,
        concurrent_revocations_of_a_dashboard_token_let_exactly_one_revoke_it,
    );

    /// The macro above lists every check of `conformance::all`.
    #[test]
    fn every_conformance_check_runs_against_sled_and_memory() {
        let listed = [
            "nodes_round_trip_and_list_in_id_order",
            "touching_nodes_moves_last_seen_forward_only_and_makes_a_gone_node_active",
            "triggers_round_trip",
            "update_node_changes_an_existing_node_and_ignores_an_unknown_one",
            "a_node_id_with_a_nul_byte_is_refused",
            "reports_list_newest_first_up_to_the_limit",
            "a_resent_report_is_stored_once_and_keeps_its_first_copy",
            "the_same_run_id_on_two_nodes_is_two_reports",
            "recording_a_run_stores_its_report_once_and_notes_it_on_its_node",
            "prune_removes_only_older_reports_and_lets_their_run_ids_be_stored_again",
            "remove_node_removes_its_reports_and_no_one_elses",
            "revisions_round_trip_newest_first_and_only_an_accepted_one_becomes_current",
            "ca_and_settings_round_trip_and_the_ca_key_stays_out_of_debug_output",
            "revoking_a_node_revokes_all_its_certificates_once",
            "a_limited_token_is_used_up_and_then_refused",
            "an_unlimited_token_works_until_it_expires",
            "an_unknown_token_is_refused_and_a_removed_token_is_unknown",
            "concurrent_enrollments_never_use_a_token_more_than_allowed",
            "concurrent_claims_of_one_name_let_exactly_one_win",
            "a_claim_fails_when_the_name_changed_since_it_was_read",
            "a_fresh_claim_clears_the_history_and_revokes_the_old_certificates",
            "two_concurrent_uses_of_a_single_use_token_let_exactly_one_win",
            "a_token_is_found_by_its_id",
            "an_operator_is_written_only_over_the_record_the_writer_read",
            "the_audit_log_gives_the_last_records_newest_last",
            "settings_certificates_and_reports_list_everything_for_a_migration",
            "a_ca_put_if_absent_keeps_the_first_one",
            "a_dashboard_session_is_valid_until_it_expires_or_closes_and_expired_ones_are_pruned",
            "revoking_a_dashboard_token_ends_the_sessions_it_opened_and_no_others",
            "a_dashboard_token_is_valid_until_revoked_and_stays_revoked_when_added_again",
            "dashboard_tokens_list_in_hash_order_with_their_revocations",
            "concurrent_revocations_of_a_dashboard_token_let_exactly_one_revoke_it",
        ];
        let all: Vec<&str> = conformance::all().iter().map(|(name, _)| *name).collect();
        assert_eq!(all, listed);
    }

    #[test]
    fn a_store_location_is_a_postgres_url_or_sled_and_a_data_directory() {
        assert_eq!(
            StoreLocation::parse("sled:/var/lib/cms-server").unwrap(),
            StoreLocation::Sled(PathBuf::from("/var/lib/cms-server/db"))
        );
        assert_eq!(
            StoreLocation::parse("postgresql://cms@db/cms").unwrap(),
            StoreLocation::Postgres("postgresql://cms@db/cms".into())
        );
        let error = StoreLocation::parse("mysql://cms:pw@db/cms").unwrap_err();
        assert_eq!(
            error.to_string(),
            "Failed to read the store URL: \"mysql://…@db/cms\" is neither a postgres:// URL nor sled:DIR; write postgres://USER:PASSWORD@HOST:PORT/DATABASE, or sled:DIR"
        );
    }

    #[test]
    fn postgres_without_a_store_key_is_refused_saying_how_to_make_one() {
        let config = StoreConfig {
            location: Some(StoreLocation::Postgres(
                "postgres://cms:pw@db.invalid/cms".into(),
            )),
            key_file: None,
            pool_size: None,
        };
        let error = open_configured(Path::new("/nonexistent"), &config).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("postgres://cms@db.invalid:5432/cms"),
            "{text}"
        );
        assert!(!text.contains(":pw@"), "{text}");
        assert!(
            text.contains("cms-server store keygen > /etc/cms-server/store.key"),
            "{text}"
        );
    }

    /// A report as stored before reports were typed (the key was
    /// `report_json`, the value built field by field) still reads.
    #[test]
    fn a_report_stored_as_untyped_json_still_reads() {
        let old = r#"{"node_id":"n1","run_id":"r1","received_unix_ms":9,"report_json":{"run_id":"r1","catalog_id":"c1","revision":"abc","started_at_unix_ms":5,"duration_ms":7,"noop":true,"note":"offline","trigger_id":"t9","resources":[{"reference":"file:/x","status":"failed","diff":"","error":"Failed to write /x","duration_ms":1}]}}"#;
        let stored: StoredReport = serde_json::from_str(old).unwrap();
        assert_eq!(stored.node_id, "n1");
        assert_eq!(stored.received_unix_ms, 9);
        assert_eq!(stored.report.version, 1);
        assert_eq!(stored.report.trigger_id, "t9");
        assert!(stored.report.noop);
        assert_eq!(stored.report.note, "offline");
        assert_eq!(
            stored
                .report
                .count(cms_proto::report::ResourceStatus::Failed),
            1
        );
        assert_eq!(stored.report.resources[0].error, "Failed to write /x");
    }

    #[test]
    fn a_node_record_stored_before_attestation_existed_still_loads() {
        let mut old = serde_json::to_value(node("web-1")).unwrap();
        old.as_object_mut().unwrap().remove("attested");
        let loaded: NodeRecord = serde_json::from_value(old).unwrap();
        assert_eq!(loaded, node("web-1"));
    }
}
