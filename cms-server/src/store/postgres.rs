//! The store in PostgreSQL, shared by every replica of the server: one
//! table per keyspace of the key layout (see the parent module and
//! `docs/store.md`), the records as JSONB beside the key columns the
//! queries need. The schema is created and migrated at open (`schema`).
//!
//! # Threads
//!
//! The [`Store`] trait is synchronous, and callers use it from blocking
//! threads and now and then straight from an async task of the server's
//! runtime, where `Handle::block_on` would panic. So the store owns a small
//! tokio runtime of its own (two worker threads, `cms-postgres`), on which
//! the connection pool (deadpool-postgres) and its connections live. Each
//! method spawns its work there as one future and waits for the result on
//! a `std::sync::mpsc` channel: it works from any thread, and a blocked
//! caller holds a thread, never a connection it cannot give back.
//!
//! # Guarantees
//!
//! Every write is a committed statement or transaction when the method
//! returns. The atomic read-modify-writes are single conditional
//! statements or transactions with row locks: `consume_token` is one
//! `UPDATE … WHERE uses_left > 0 … RETURNING`; `put_report` is one
//! `INSERT … ON CONFLICT DO NOTHING` on the key (node id, run id);
//! `claim_name` inserts or updates the node only where it still holds the
//! expected serial, in the transaction that writes the certificate;
//! `update_node_with` compares and swaps the node's `version` column;
//! `swap_operator` reads the operator `FOR UPDATE`; `revoke_dashboard_token`
//! is one `UPDATE … WHERE revoked_unix_ms IS NULL … RETURNING`.
//!
//! # The database unreachable
//!
//! Connecting gives up after `connect_timeout` (5 s by default), waiting
//! for a pooled connection after 5 s, and every call after
//! [`CALL_TIMEOUT`] (bulk work after [`BULK_TIMEOUT`]): the caller gets
//! [`StoreError::Unavailable`], which the gRPC layer answers with
//! `UNAVAILABLE` and a hint to retry. Broken connections are dropped by
//! the pool and new ones made on the next call, so the store works again
//! once the database is back, without a restart.
//!
//! # The CA's private key
//!
//! Sealed with the operator's [`StoreKey`] (AES-256-GCM) before it is
//! written; the database holds only ciphertext. `store_key_check` holds a
//! value sealed with the key that first opened the database, so a server
//! given another key is refused at start, not when it first needs the CA.

mod connection;
mod schema;

use std::future::Future;
use std::str::FromStr as _;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::key::StoreKey;
use super::{
    AuditRecord, BackendError, CaRecord, CertificateRecord, DashboardTokenRecord,
    DashboardTokenRevocation, NodeRecord, OperatorRecord, ReportWrite, RevisionRecord, Store,
    StoreError, StoredReport, TokenRecord, TriggerRecord, check_node_id,
};
pub use connection::{
    ConnectError, ConnectionSettings, HandshakeError, PostgresConnection, PostgresTls,
    PostgresTlsStream, TlsMode,
};

/// How many connections a store keeps at most, by default.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// How long connecting to the database may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call may take before it fails as unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for bulk work: pruning, listing everything, migrating.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a call waits for a free connection of the pool.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// The purposes values are sealed for (the associated data of the AEAD).
const CA_KEY_PURPOSE: &str = "cms-server ca private key";
const KEY_CHECK_PURPOSE: &str = "cms-server store key check";

/// How to reach the database, and the key for its secrets.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (or libpq's
    /// `key=value` form).
    pub url: String,
    pub key: StoreKey,
    pub pool_size: usize,
    pub connect_timeout: Duration,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>, key: StoreKey) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            key,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Where a connection URL points, for messages: `postgres://USER@HOST:PORT/DB`,
/// never the password. `Err` says why the URL does not parse.
pub fn describe_url(url: &str) -> Result<String, StoreError> {
    parse_url(url).map(|config| describe(&config))
}

/// The URL's settings for tokio-postgres, without the TLS parameters
/// (`sslmode`, `sslrootcert`) that [`ConnectionSettings`] reads.
fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let (rest, _) = connection::split_tls_parameters(url)?;
    tokio_postgres::Config::from_str(&rest).map_err(|error| StoreError::InvalidUrl {
        problem: super::error_chain(&error),
    })
}

fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = config
        .get_user()
        .map(|user| format!("{user}@"))
        .unwrap_or_default();
    format!(
        "postgres://{user}{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The server's storage in PostgreSQL. See the module docs.
pub struct PostgresStore {
    pool: Pool,
    /// Where the database is, for messages (no password).
    target: String,
    key: StoreKey,
    handle: tokio::runtime::Handle,
    /// Owned here so the pool's connections live as long as the store;
    /// shut down in the background on drop, which is allowed anywhere.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.pool.close();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PostgresStore {
    /// Connects, applies the schema's missing migrations (under an advisory
    /// lock, so replicas starting together apply each once) and checks the
    /// store key. Fails with a one-line error naming the database (never
    /// its password) when it cannot be reached.
    pub fn open(config: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let ConnectionSettings {
            config: mut pg_config,
            tls,
        } = ConnectionSettings::from_url(&config.url)?;
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(config.connect_timeout);
        }
        pg_config.application_name("cms-server");
        // A database that vanished from the network (no RST: a failover,
        // a black-holed route) is noticed in seconds, not after the
        // kernel's default of minutes: an idle connection after 30 s and
        // three unanswered probes 5 s apart, a sent request after 10 s.
        pg_config.keepalives_idle(Duration::from_secs(30));
        pg_config.keepalives_interval(Duration::from_secs(5));
        pg_config.keepalives_retries(3);
        pg_config.tcp_user_timeout(Duration::from_secs(10));
        let target = describe(&pg_config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cms-postgres")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Backend {
                action: "start the threads of the PostgreSQL store".into(),
                source: BackendError::new(source),
            })?;
        let manager = Manager::from_config(
            pg_config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|source| StoreError::Backend {
                action: format!("make a connection pool for {target}"),
                source: BackendError::new(source),
            })?;
        let store = PostgresStore {
            pool,
            target,
            key: config.key.clone(),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        };
        let applied = store.call("open the store", BULK_TIMEOUT, {
            let (pool, target) = (store.pool.clone(), store.target.clone());
            schema::migrate(pool, target)
        })?;
        if !applied.is_empty() {
            tracing::info!(
                "applied the store's schema migrations {applied:?} to {}",
                store.target
            );
        }
        store.check_key()?;
        Ok(store)
    }

    /// Where the database is (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `work` on the store's runtime and waits for it here, failing as
    /// unavailable after `limit`.
    fn call<T: Send + 'static>(
        &self,
        action: impl Into<String>,
        limit: Duration,
        work: impl Future<Output = Result<T, Failure>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let outcome = match tokio::time::timeout(limit, work).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Failure::TimedOut(limit)),
            };
            let _ = sender.send(outcome);
        });
        let outcome = receiver.recv().unwrap_or(Err(Failure::Stopped));
        outcome.map_err(|failure| failure.into_store_error(action.into(), &self.target))
    }

    /// [`call`](Self::call) for work in a transaction: `work` makes the
    /// attempt, and an attempt that PostgreSQL ended as a serialization
    /// failure (40001) or a deadlock victim (40P01) is made again, after a
    /// short, growing, jittered pause, up to [`CONFLICT_ATTEMPTS`] times,
    /// all within `limit`. Such an attempt was rolled back whole, so making
    /// it again is what the caller would do.
    fn call_retrying<T, F, Fut>(
        &self,
        action: impl Into<String>,
        limit: Duration,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let action = action.into();
        let described = action.clone();
        self.call(action, limit, async move {
            let mut attempt = 1;
            loop {
                match work().await {
                    Err(failure) if failure.is_conflict() && attempt < CONFLICT_ATTEMPTS => {
                        tracing::debug!(
                            "{described}: attempt {attempt} ended by a conflict ({failure:?}); trying again"
                        );
                        tokio::time::sleep(conflict_pause(attempt)).await;
                        attempt += 1;
                    }
                    outcome => return outcome,
                }
            }
        })
    }

    fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Seals a check value with the key of the first open, and refuses
    /// any other key later.
    fn check_key(&self) -> Result<(), StoreError> {
        let pool = self.pool();
        let fresh = self
            .key
            .seal(KEY_CHECK_PURPOSE, KEY_CHECK_PURPOSE.as_bytes());
        let stored: Vec<u8> = self.call("check the store key", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO store_key_check (sealed) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&fresh],
                )
                .await?;
            let row = client
                .query_one("SELECT sealed FROM store_key_check", &[])
                .await?;
            Ok(row.get(0))
        })?;
        if self.key.open(KEY_CHECK_PURPOSE, &stored).is_none() {
            return Err(StoreError::WrongKey {
                target: self.target.clone(),
                key_file: self.key.source().display().to_string(),
            });
        }
        Ok(())
    }

    /// Every node's reports in (node id, run id) order, after `after`.
    fn list_reports_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredReport>, StoreError> {
        let pool = self.pool();
        let (node_id, run_id) = after.unwrap_or(("", ""));
        let (node_id, run_id) = (node_id.to_string(), run_id.to_string());
        let first = after.is_none();
        let limit = to_db(limit as u64);
        self.call("list reports", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached(
                    "SELECT node_id, run_id, record FROM reports
                     WHERE $1 OR (node_id, run_id) > ($2, $3)
                     ORDER BY node_id, run_id LIMIT $4",
                )
                .await?;
            let rows = client
                .query(&statement, &[&first, &node_id, &run_id, &limit])
                .await?;
            rows.iter()
                .map(|row| {
                    let key = format!("{}/{}", row.get::<_, &str>(0), row.get::<_, &str>(1));
                    decode("reports", &key, row.get(2))
                })
                .collect()
        })
    }
}

/// What went wrong inside a call, before it is named for the caller.
#[derive(Debug)]
pub(crate) enum Failure {
    Pool(deadpool_postgres::PoolError),
    Database(tokio_postgres::Error),
    Store(StoreError),
    TimedOut(Duration),
    /// The store's runtime is gone (the store is being dropped).
    Stopped,
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(error: deadpool_postgres::PoolError) -> Failure {
        Failure::Pool(error)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Failure {
        Failure::Database(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

/// How many times a transaction ended by a conflict is attempted.
pub(crate) const CONFLICT_ATTEMPTS: u32 = 8;

/// The pause before attempt `attempt + 1`: 5 ms doubled each time, up to
/// 320 ms, with up to half again of jitter so that the two sides of a
/// deadlock do not meet again in step.
fn conflict_pause(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(6);
    // A fresh RandomState is seeded anew each time: random enough for
    // jitter, without a clock or a dependency.
    let noise = {
        use std::hash::BuildHasher as _;
        std::collections::hash_map::RandomState::new().hash_one(attempt)
    };
    Duration::from_millis(base + noise % (base / 2 + 1))
}

impl Failure {
    /// Whether PostgreSQL ended the transaction because it conflicted with
    /// another (serialization failure, deadlock), so that trying it again
    /// can succeed.
    pub(crate) fn is_conflict(&self) -> bool {
        let Failure::Database(error) = self else {
            return false;
        };
        error.code().is_some_and(|code| {
            *code == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                || *code == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
        })
    }

    fn into_store_error(self, action: String, target: &str) -> StoreError {
        let unavailable = |detail: String| StoreError::Unavailable {
            action: action.clone(),
            target: target.to_string(),
            detail,
        };
        match self {
            Failure::Store(error) => error,
            Failure::TimedOut(limit) => unavailable(format!(
                "no answer within {} s",
                limit.as_secs_f64().round()
            )),
            Failure::Stopped => unavailable("the store is shutting down".into()),
            Failure::Pool(deadpool_postgres::PoolError::Timeout(kind)) => unavailable(match kind {
                deadpool_postgres::TimeoutType::Wait => {
                    "every pooled connection stayed busy".to_string()
                }
                _ => "connecting timed out".to_string(),
            }),
            Failure::Pool(deadpool_postgres::PoolError::Backend(error))
            | Failure::Database(error)
                if connection::is_tls_failure(&error) =>
            {
                StoreError::Backend {
                    action: format!("{action} in {target}"),
                    source: connection::explain_tls_failure(error),
                }
            }
            Failure::Pool(deadpool_postgres::PoolError::Backend(error))
            | Failure::Database(error) => match unreachable_detail(&error) {
                Some(detail) => unavailable(detail),
                None => StoreError::Backend {
                    action,
                    source: BackendError::new(error),
                },
            },
            Failure::Pool(deadpool_postgres::PoolError::Closed) => {
                unavailable("the connection pool is closed".into())
            }
            Failure::Pool(other) => StoreError::Backend {
                action,
                source: BackendError::new(std::io::Error::other(other.to_string())),
            },
        }
    }
}

/// Why the database cannot be reached, when that is what `error` means
/// (no connection, a closed one, a server shutting down or starting, a
/// read-only standby), as one line; `None` for every other error.
fn unreachable_detail(error: &tokio_postgres::Error) -> Option<String> {
    let text = super::error_chain(error);
    if error.is_closed() {
        return Some(text);
    }
    match error.code() {
        Some(state) => {
            let code = state.code();
            let unavailable = code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03" | "25006" | "53300");
            unavailable.then_some(text)
        }
        None => {
            let io = std::error::Error::source(error)
                .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
            let kind = error.to_string();
            (io || kind.starts_with("error connecting")
                || kind.starts_with("timeout")
                || kind.starts_with("error communicating"))
            .then_some(text)
        }
    }
}

fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|source| StoreError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    value: serde_json::Value,
) -> Result<T, Failure> {
    serde_json::from_value(value).map_err(|source| {
        Failure::Store(StoreError::CorruptValue {
            tree: table,
            key: key.to_string(),
            source,
        })
    })
}

/// The columns of `dashboard_tokens`, in the order
/// [`dashboard_token_from_row`] reads them.
const DASHBOARD_TOKEN_COLUMNS: &str =
    "hash, created_unix_ms, created_by, revoked_unix_ms, revoked_by";

fn dashboard_token_from_row(row: &tokio_postgres::Row) -> DashboardTokenRecord {
    let revoked_unix_ms: Option<i64> = row.get("revoked_unix_ms");
    DashboardTokenRecord {
        hash: row.get("hash"),
        created_unix_ms: from_db(row.get("created_unix_ms")),
        created_by: row.get("created_by"),
        revoked_unix_ms: revoked_unix_ms.map(from_db),
        revoked_by: row.get("revoked_by"),
    }
}

fn token_from_row(row: &tokio_postgres::Row) -> Result<TokenRecord, Failure> {
    let id: String = row.get("id");
    let scope = decode("tokens", &id, row.get("scope"))?;
    let uses_left: Option<i64> = row.get("uses_left");
    Ok(TokenRecord {
        scope,
        expires_unix: from_db(row.get("expires_unix")),
        uses_left: uses_left.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        created_unix: from_db(row.get("created_unix")),
        id,
    })
}

fn certificate_from_row(row: &tokio_postgres::Row) -> CertificateRecord {
    CertificateRecord {
        serial: row.get("serial"),
        node_id: row.get("node_id"),
        not_after_unix: from_db(row.get("not_after_unix")),
        revoked: row.get("revoked"),
    }
}

const UPSERT_CERTIFICATE: &str =
    "INSERT INTO certificates (serial, node_id, not_after_unix, revoked)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (serial) DO UPDATE SET node_id = EXCLUDED.node_id,
         not_after_unix = EXCLUDED.not_after_unix, revoked = EXCLUDED.revoked";

const UPSERT_NODE: &str = "INSERT INTO nodes (id, record) VALUES ($1, $2)
     ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, version = nodes.version + 1";

/// A certificate's columns, owned, for a future.
#[derive(Clone)]
struct CertificateRow(String, String, i64, bool);

impl CertificateRow {
    fn of(certificate: &CertificateRecord) -> CertificateRow {
        CertificateRow(
            certificate.serial.clone(),
            certificate.node_id.clone(),
            to_db(certificate.not_after_unix),
            certificate.revoked,
        )
    }

    async fn upsert(&self, client: &impl deadpool_postgres::GenericClient) -> Result<(), Failure> {
        let statement = client.prepare_cached(UPSERT_CERTIFICATE).await?;
        client
            .execute(&statement, &[&self.0, &self.1, &self.2, &self.3])
            .await?;
        Ok(())
    }
}

impl Store for PostgresStore {
    // Nodes.

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        let (pool, id, record) = (self.pool(), node.id.clone(), encode("node record", node)?);
        self.call(
            format!("write node {}", node.id),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                let statement = client.prepare_cached(UPSERT_NODE).await?;
                client.execute(&statement, &[&id, &record]).await?;
                Ok(())
            },
        )
    }

    fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let (pool, id_owned) = (self.pool(), id.to_string());
        self.call(format!("read node {id}"), CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached("SELECT record FROM nodes WHERE id = $1")
                .await?;
            let row = client.query_opt(&statement, &[&id_owned]).await?;
            row.map(|row| decode("nodes", &id_owned, row.get(0)))
                .transpose()
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let pool = self.pool();
        self.call("list nodes", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query("SELECT id, record FROM nodes ORDER BY id", &[])
                .await?;
            rows.iter()
                .map(|row| decode("nodes", row.get(0), row.get(1)))
                .collect()
        })
    }

    /// Compare-and-swap on the node's `version`: read, change here, write
    /// only if no one wrote meanwhile, else read again.
    fn update_node_with(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, StoreError> {
        loop {
            let (pool, id_owned) = (self.pool(), id.to_string());
            let current = self.call(format!("read node {id}"), CALL_TIMEOUT, async move {
                let client = pool.get().await?;
                let statement = client
                    .prepare_cached("SELECT record, version FROM nodes WHERE id = $1")
                    .await?;
                let row = client.query_opt(&statement, &[&id_owned]).await?;
                row.map(|row| {
                    let node: NodeRecord = decode("nodes", &id_owned, row.get(0))?;
                    Ok((node, row.get::<_, i64>(1)))
                })
                .transpose()
            })?;
            let Some((mut node, version)) = current else {
                return Ok(None);
            };
            change(&mut node);
            // The id is the key: a change cannot move the record elsewhere.
            node.id = id.to_string();
            let (pool, id_owned, record) =
                (self.pool(), id.to_string(), encode("node record", &node)?);
            let swapped = self.call(format!("write node {id}"), CALL_TIMEOUT, async move {
                let client = pool.get().await?;
                let statement = client
                    .prepare_cached(
                        "UPDATE nodes SET record = $2, version = version + 1
                         WHERE id = $1 AND version = $3",
                    )
                    .await?;
                Ok(client
                    .execute(&statement, &[&id_owned, &record, &version])
                    .await?
                    == 1)
            })?;
            if swapped {
                return Ok(Some(node));
            }
        }
    }

    fn record_enrollment(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
    ) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        let pool = self.pool();
        let certificate = CertificateRow::of(certificate);
        let (id, record) = (node.id.clone(), encode("node record", node)?);
        self.call_retrying(
            format!("record the enrollment of {}", node.id),
            CALL_TIMEOUT,
            move || {
                let (pool, id, record, certificate) = (
                    pool.clone(),
                    id.clone(),
                    record.clone(),
                    certificate.clone(),
                );
                async move {
                    let mut client = pool.get().await?;
                    let transaction = client.transaction().await?;
                    // The node row first, then the certificate: the order
                    // claim_name locks them in, so the two cannot deadlock.
                    let statement = transaction.prepare_cached(UPSERT_NODE).await?;
                    transaction.execute(&statement, &[&id, &record]).await?;
                    certificate.upsert(&transaction).await?;
                    transaction.commit().await?;
                    Ok(())
                }
            },
        )
    }

    /// The node row is written only where it still holds the expected
    /// serial (an insert that finds a row, or an update that finds another
    /// serial, writes nothing), first in the transaction: a second claim
    /// waits for the first's row lock, then finds the name taken.
    fn claim_name(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
        expected_serial: Option<&str>,
        clear_history: bool,
    ) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        let pool = self.pool();
        let certificate = CertificateRow::of(certificate);
        let (id, record) = (node.id.clone(), encode("node record", node)?);
        let expected = expected_serial.map(str::to_string);
        self.call_retrying(
            format!("record the enrollment of {}", node.id),
            CALL_TIMEOUT,
            move || {
                let (pool, id, record, expected, certificate) = (
                    pool.clone(),
                    id.clone(),
                    record.clone(),
                    expected.clone(),
                    certificate.clone(),
                );
                async move {
                    let mut client = pool.get().await?;
                    let transaction = client.transaction().await?;
                    let written = match &expected {
                        None => {
                            transaction
                                .execute(
                                    "INSERT INTO nodes (id, record) VALUES ($1, $2)
                                 ON CONFLICT (id) DO NOTHING",
                                    &[&id, &record],
                                )
                                .await?
                        }
                        Some(serial) => {
                            transaction
                                .execute(
                                    "UPDATE nodes SET record = $2, version = version + 1
                                 WHERE id = $1 AND record->>'certificate_serial' = $3",
                                    &[&id, &record, serial],
                                )
                                .await?
                        }
                    };
                    if written != 1 {
                        transaction.rollback().await?;
                        return Err(Failure::Store(StoreError::NameClaimed { id }));
                    }
                    certificate.upsert(&transaction).await?;
                    if clear_history {
                        transaction
                            .execute("DELETE FROM reports WHERE node_id = $1", &[&id])
                            .await?;
                        transaction
                            .execute(
                                "UPDATE certificates SET revoked = true
                             WHERE node_id = $1 AND serial <> $2 AND NOT revoked",
                                &[&id, &certificate.0],
                            )
                            .await?;
                    }
                    transaction.commit().await?;
                    Ok(())
                }
            },
        )
    }

    /// One transaction: the named nodes are read `FOR UPDATE` in id order
    /// (so concurrent batches cannot deadlock), changed here, written back.
    fn touch_nodes_with_facts(
        &self,
        seen: &[(String, u64, Option<serde_json::Value>)],
    ) -> Result<usize, StoreError> {
        if seen.is_empty() {
            return Ok(0);
        }
        let pool = self.pool();
        let seen = seen.to_vec();
        self.call_retrying(
            "record when nodes were last seen",
            CALL_TIMEOUT,
            move || {
                let (pool, seen) = (pool.clone(), seen.clone());
                async move {
                    let mut ids: Vec<String> = seen.iter().map(|(id, _, _)| id.clone()).collect();
                    ids.sort();
                    ids.dedup();
                    let mut client = pool.get().await?;
                    let transaction = client.transaction().await?;
                    let rows = transaction
                    .query(
                        "SELECT id, record FROM nodes WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                        &[&ids],
                    )
                    .await?;
                    let mut nodes = std::collections::BTreeMap::new();
                    for row in &rows {
                        let id: String = row.get(0);
                        let node: NodeRecord = decode("nodes", &id, row.get(1))?;
                        nodes.insert(id, node);
                    }
                    let mut changed = std::collections::BTreeSet::new();
                    let mut touched = 0;
                    for (id, at, facts) in &seen {
                        let Some(node) = nodes.get_mut(id) else {
                            continue;
                        };
                        if !node.note_seen(*at, facts.as_ref()) {
                            continue;
                        }
                        changed.insert(id.clone());
                        touched += 1;
                    }
                    if !changed.is_empty() {
                        let mut changed_ids = Vec::new();
                        let mut records = Vec::new();
                        for id in changed {
                            records.push(encode("node record", &nodes[&id])?);
                            changed_ids.push(id);
                        }
                        transaction
                        .execute(
                            "UPDATE nodes SET record = changed.record, version = nodes.version + 1
                         FROM unnest($1::text[], $2::jsonb[]) AS changed(id, record)
                         WHERE nodes.id = changed.id",
                            &[&changed_ids, &records],
                        )
                        .await?;
                    }
                    transaction.commit().await?;
                    Ok(touched)
                }
            },
        )
    }

    fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
        check_node_id(id)?;
        let (pool, id_owned) = (self.pool(), id.to_string());
        self.call_retrying(format!("remove node {id}"), BULK_TIMEOUT, move || {
            let (pool, id_owned) = (pool.clone(), id_owned.clone());
            async move {
                let mut client = pool.get().await?;
                let transaction = client.transaction().await?;
                transaction
                    .execute("DELETE FROM reports WHERE node_id = $1", &[&id_owned])
                    .await?;
                let removed = transaction
                    .execute("DELETE FROM nodes WHERE id = $1", &[&id_owned])
                    .await?;
                transaction.commit().await?;
                Ok(removed == 1)
            }
        })
    }

    // Reports.

    /// One `INSERT … ON CONFLICT DO NOTHING`: committed when it returns,
    /// whether it stored the report or found the first copy.
    fn put_report(&self, report: &StoredReport) -> Result<ReportWrite, StoreError> {
        check_node_id(&report.node_id)?;
        let pool = self.pool();
        let (node_id, run_id) = (report.node_id.clone(), report.run_id.clone());
        let received = to_db(report.received_unix_ms);
        let record = encode("report", report)?;
        self.call(
            format!("write report {} of node {}", report.run_id, report.node_id),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                let statement = client
                    .prepare_cached(
                        "INSERT INTO reports (node_id, run_id, received_unix_ms, record)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (node_id, run_id) DO NOTHING",
                    )
                    .await?;
                let inserted = client
                    .execute(&statement, &[&node_id, &run_id, &received, &record])
                    .await?;
                Ok(if inserted == 1 {
                    ReportWrite::Stored
                } else {
                    ReportWrite::AlreadyStored
                })
            },
        )
    }

    /// The report and the node's summary in one transaction: the node row
    /// is locked (`FOR UPDATE`) while its record changes, so a concurrent
    /// `update_node` waits rather than being lost; its commit is the one
    /// durable write.
    fn record_run(
        &self,
        report: &StoredReport,
        summary: &super::RunSummary,
    ) -> Result<ReportWrite, StoreError> {
        check_node_id(&report.node_id)?;
        let pool = self.pool();
        let (node_id, run_id) = (report.node_id.clone(), report.run_id.clone());
        let received = to_db(report.received_unix_ms);
        let record = encode("report", report)?;
        let (noted, summary) = (report.clone(), summary.clone());
        self.call_retrying(
            format!("write report {} of node {}", report.run_id, report.node_id),
            CALL_TIMEOUT,
            move || {
                let (pool, node_id, run_id, record, noted, summary) = (
                    pool.clone(),
                    node_id.clone(),
                    run_id.clone(),
                    record.clone(),
                    noted.clone(),
                    summary.clone(),
                );
                async move {
                    let mut client = pool.get().await?;
                    let transaction = client.transaction().await?;
                    let statement = transaction
                        .prepare_cached(
                            "INSERT INTO reports (node_id, run_id, received_unix_ms, record)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (node_id, run_id) DO NOTHING",
                        )
                        .await?;
                    let inserted = transaction
                        .execute(&statement, &[&node_id, &run_id, &received, &record])
                        .await?;
                    let statement = transaction
                        .prepare_cached("SELECT record FROM nodes WHERE id = $1 FOR UPDATE")
                        .await?;
                    if let Some(row) = transaction.query_opt(&statement, &[&node_id]).await? {
                        let mut node: NodeRecord = decode("nodes", &node_id, row.get(0))?;
                        super::note_run(&mut node, &noted, &summary);
                        let node = encode("node record", &node)?;
                        let statement = transaction
                            .prepare_cached(
                                "UPDATE nodes SET record = $2, version = version + 1 WHERE id = $1",
                            )
                            .await?;
                        transaction.execute(&statement, &[&node_id, &node]).await?;
                    }
                    transaction.commit().await?;
                    Ok(if inserted == 1 {
                        ReportWrite::Stored
                    } else {
                        ReportWrite::AlreadyStored
                    })
                }
            },
        )
    }

    fn report(&self, node_id: &str, run_id: &str) -> Result<Option<StoredReport>, StoreError> {
        check_node_id(node_id)?;
        let pool = self.pool();
        let (node, run) = (node_id.to_string(), run_id.to_string());
        self.call(
            format!("read report {run_id} of node {node_id}"),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                let statement = client
                    .prepare_cached("SELECT record FROM reports WHERE node_id = $1 AND run_id = $2")
                    .await?;
                let row = client.query_opt(&statement, &[&node, &run]).await?;
                row.map(|row| decode("reports", &format!("{node}/{run}"), row.get(0)))
                    .transpose()
            },
        )
    }

    fn reports(&self, node_id: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        check_node_id(node_id)?;
        let (pool, node) = (self.pool(), node_id.to_string());
        let limit = to_db(limit as u64);
        self.call(
            format!("list the reports of node {node_id}"),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                let statement = client
                    .prepare_cached(
                        "SELECT run_id, record FROM reports WHERE node_id = $1
                         ORDER BY received_unix_ms DESC, run_id LIMIT $2",
                    )
                    .await?;
                let rows = client.query(&statement, &[&node, &limit]).await?;
                rows.iter()
                    .map(|row| {
                        decode(
                            "reports",
                            &format!("{node}/{}", row.get::<_, &str>(0)),
                            row.get(1),
                        )
                    })
                    .collect()
            },
        )
    }

    fn prune_reports(&self, older_than_unix_ms: u64) -> Result<usize, StoreError> {
        let (pool, older_than) = (self.pool(), to_db(older_than_unix_ms));
        self.call("prune reports", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let removed = client
                .execute(
                    "DELETE FROM reports WHERE received_unix_ms < $1",
                    &[&older_than],
                )
                .await?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }

    fn all_reports(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredReport>, StoreError> {
        self.list_reports_after(after, limit)
    }

    // Revisions.

    fn put_revision(&self, revision: &RevisionRecord) -> Result<(), StoreError> {
        let pool = self.pool();
        let commit = revision.commit.clone();
        let synced = to_db(revision.synced_unix_ms);
        let record = encode("revision record", revision)?;
        self.call(
            format!("write revision {}", revision.commit),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                client
                    .execute(
                        "INSERT INTO revisions (commit, synced_unix_ms, record) VALUES ($1, $2, $3)
                         ON CONFLICT (commit) DO UPDATE SET synced_unix_ms = EXCLUDED.synced_unix_ms,
                             record = EXCLUDED.record",
                        &[&commit, &synced, &record],
                    )
                    .await?;
                Ok(())
            },
        )
    }

    fn revision(&self, commit: &str) -> Result<Option<RevisionRecord>, StoreError> {
        let (pool, commit_owned) = (self.pool(), commit.to_string());
        self.call(
            format!("read revision {commit}"),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                let statement = client
                    .prepare_cached("SELECT record FROM revisions WHERE commit = $1")
                    .await?;
                let row = client.query_opt(&statement, &[&commit_owned]).await?;
                row.map(|row| decode("revisions", &commit_owned, row.get(0)))
                    .transpose()
            },
        )
    }

    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        let pool = self.pool();
        self.call("list revisions", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT commit, record FROM revisions ORDER BY synced_unix_ms DESC, commit",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| decode("revisions", row.get(0), row.get(1)))
                .collect()
        })
    }

    fn set_current_revision(&self, commit: &str) -> Result<(), StoreError> {
        let (pool, commit_owned) = (self.pool(), commit.to_string());
        self.call_retrying(
            format!("make revision {commit} current"),
            CALL_TIMEOUT,
            move || {
                let (pool, commit_owned) = (pool.clone(), commit_owned.clone());
                async move {
                    let mut client = pool.get().await?;
                    let transaction = client.transaction().await?;
                    let row = transaction
                        .query_opt(
                            "SELECT record FROM revisions WHERE commit = $1 FOR SHARE",
                            &[&commit_owned],
                        )
                        .await?;
                    let Some(row) = row else {
                        return Err(Failure::Store(StoreError::RevisionUnknown {
                            commit: commit_owned,
                        }));
                    };
                    let revision: RevisionRecord = decode("revisions", &commit_owned, row.get(0))?;
                    if !revision.accepted {
                        return Err(Failure::Store(StoreError::RevisionRefused {
                            commit: commit_owned,
                        }));
                    }
                    transaction
                        .execute(
                            "INSERT INTO current_revision (commit) VALUES ($1)
                         ON CONFLICT (singleton) DO UPDATE SET commit = EXCLUDED.commit",
                            &[&commit_owned],
                        )
                        .await?;
                    transaction.commit().await?;
                    Ok(())
                }
            },
        )
    }

    fn current_revision(&self) -> Result<Option<String>, StoreError> {
        let pool = self.pool();
        self.call("read the current revision", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let row = client
                .query_opt("SELECT commit FROM current_revision", &[])
                .await?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    // The CA and certificates.

    /// The private key is sealed with the store key before it leaves.
    fn put_ca(&self, ca: &CaRecord) -> Result<(), StoreError> {
        let pool = self.pool();
        let certificate = ca.certificate_pem.clone();
        let sealed = self.key.seal(CA_KEY_PURPOSE, ca.private_key_pem.as_bytes());
        self.call("write the CA", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO ca (certificate_pem, private_key_sealed) VALUES ($1, $2)
                     ON CONFLICT (singleton) DO UPDATE SET certificate_pem = EXCLUDED.certificate_pem,
                         private_key_sealed = EXCLUDED.private_key_sealed",
                    &[&certificate, &sealed],
                )
                .await?;
            Ok(())
        })
    }

    /// One insert that does nothing when a CA is there: of replicas
    /// starting together on a new database, the first CA wins and the
    /// others read it back.
    fn put_ca_if_absent(&self, ca: &CaRecord) -> Result<CaRecord, StoreError> {
        let pool = self.pool();
        let certificate = ca.certificate_pem.clone();
        let sealed = self.key.seal(CA_KEY_PURPOSE, ca.private_key_pem.as_bytes());
        self.call("write the CA", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO ca (certificate_pem, private_key_sealed) VALUES ($1, $2)
                     ON CONFLICT (singleton) DO NOTHING",
                    &[&certificate, &sealed],
                )
                .await?;
            Ok(())
        })?;
        self.ca()?.ok_or_else(|| StoreError::Backend {
            action: "read back the CA".into(),
            source: BackendError::new(std::io::Error::other("the CA row is missing")),
        })
    }

    fn ca(&self) -> Result<Option<CaRecord>, StoreError> {
        let pool = self.pool();
        let row: Option<(String, Vec<u8>)> =
            self.call("read the CA", CALL_TIMEOUT, async move {
                let client = pool.get().await?;
                let row = client
                    .query_opt("SELECT certificate_pem, private_key_sealed FROM ca", &[])
                    .await?;
                Ok(row.map(|row| (row.get(0), row.get(1))))
            })?;
        let Some((certificate_pem, sealed)) = row else {
            return Ok(None);
        };
        let private_key =
            self.key
                .open(CA_KEY_PURPOSE, &sealed)
                .ok_or_else(|| StoreError::WrongKey {
                    target: self.target.clone(),
                    key_file: self.key.source().display().to_string(),
                })?;
        let private_key_pem = String::from_utf8(private_key).map_err(|_| StoreError::WrongKey {
            target: self.target.clone(),
            key_file: self.key.source().display().to_string(),
        })?;
        Ok(Some(CaRecord {
            certificate_pem,
            private_key_pem,
        }))
    }

    fn put_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
        let (pool, row) = (self.pool(), CertificateRow::of(certificate));
        self.call(
            format!("write certificate {}", certificate.serial),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                row.upsert(&client).await
            },
        )
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let (pool, serial_owned) = (self.pool(), serial.to_string());
        self.call(
            format!("read certificate {serial}"),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                let statement = client
                    .prepare_cached(
                        "SELECT serial, node_id, not_after_unix, revoked FROM certificates
                         WHERE serial = $1",
                    )
                    .await?;
                let row = client.query_opt(&statement, &[&serial_owned]).await?;
                Ok(row.as_ref().map(certificate_from_row))
            },
        )
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        let pool = self.pool();
        self.call("list certificates", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT serial, node_id, not_after_unix, revoked FROM certificates
                     ORDER BY serial",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(certificate_from_row).collect())
        })
    }

    fn revoke_node(&self, node_id: &str) -> Result<Vec<String>, StoreError> {
        let (pool, node) = (self.pool(), node_id.to_string());
        self.call(
            format!("revoke the certificates of node {node_id}"),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                let rows = client
                    .query(
                        "UPDATE certificates SET revoked = true
                         WHERE node_id = $1 AND NOT revoked RETURNING serial",
                        &[&node],
                    )
                    .await?;
                Ok(rows.iter().map(|row| row.get(0)).collect())
            },
        )
    }

    fn prune_certificates(&self, before_unix: u64) -> Result<usize, StoreError> {
        let (pool, before) = (self.pool(), to_db(before_unix));
        self.call("prune expired certificates", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let removed = client
                .execute(
                    "DELETE FROM certificates WHERE not_after_unix < $1",
                    &[&before],
                )
                .await?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }

    // Fleet triggers.

    fn put_trigger(&self, trigger: &TriggerRecord) -> Result<(), StoreError> {
        let pool = self.pool();
        let (id, record) = (trigger.id.clone(), encode("trigger record", trigger)?);
        self.call(
            format!("write trigger {}", trigger.id),
            CALL_TIMEOUT,
            async move {
                let client = pool.get().await?;
                client
                    .execute(
                        "INSERT INTO triggers (id, record) VALUES ($1, $2)
                         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                        &[&id, &record],
                    )
                    .await?;
                Ok(())
            },
        )
    }

    fn trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError> {
        let (pool, id_owned) = (self.pool(), id.to_string());
        self.call(format!("read trigger {id}"), CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let row = client
                .query_opt("SELECT record FROM triggers WHERE id = $1", &[&id_owned])
                .await?;
            row.map(|row| decode("triggers", &id_owned, row.get(0)))
                .transpose()
        })
    }

    fn triggers(&self) -> Result<Vec<TriggerRecord>, StoreError> {
        let pool = self.pool();
        self.call("list triggers", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query("SELECT id, record FROM triggers ORDER BY id", &[])
                .await?;
            rows.iter()
                .map(|row| decode("triggers", row.get(0), row.get(1)))
                .collect()
        })
    }

    // Enrollment tokens.

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let pool = self.pool();
        let id = token.id.clone();
        let scope = encode("token scope", &token.scope)?;
        let expires = to_db(token.expires_unix);
        let uses_left = token.uses_left.map(i64::from);
        let created = to_db(token.created_unix);
        self.call("write an enrollment token", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO tokens (id, scope, expires_unix, uses_left, created_unix)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO UPDATE SET scope = EXCLUDED.scope,
                         expires_unix = EXCLUDED.expires_unix, uses_left = EXCLUDED.uses_left,
                         created_unix = EXCLUDED.created_unix",
                    &[&id, &scope, &expires, &uses_left, &created],
                )
                .await?;
            Ok(())
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let pool = self.pool();
        self.call("list enrollment tokens", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT id, scope, expires_unix, uses_left, created_unix FROM tokens ORDER BY id",
                    &[],
                )
                .await?;
            rows.iter().map(token_from_row).collect()
        })
    }

    /// One conditional `UPDATE … RETURNING`: of concurrent uses, on any
    /// replica, only as many as the token has left find a row to update.
    /// When it updates nothing, a read says why.
    fn consume_token(&self, id: &str, now_unix: u64) -> Result<TokenRecord, StoreError> {
        let (pool, id_owned, now) = (self.pool(), id.to_string(), to_db(now_unix));
        self.call("use an enrollment token", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached(
                    "UPDATE tokens SET uses_left = uses_left - 1
                     WHERE id = $1 AND expires_unix > $2 AND (uses_left IS NULL OR uses_left > 0)
                     RETURNING id, scope, expires_unix, uses_left, created_unix",
                )
                .await?;
            if let Some(row) = client.query_opt(&statement, &[&id_owned, &now]).await? {
                return token_from_row(&row);
            }
            let row = client
                .query_opt(
                    "SELECT id, scope, expires_unix, uses_left, created_unix FROM tokens WHERE id = $1",
                    &[&id_owned],
                )
                .await?;
            let Some(row) = row else {
                return Err(Failure::Store(StoreError::TokenUnknown));
            };
            let token = token_from_row(&row)?;
            Err(Failure::Store(if to_db(token.expires_unix) <= now {
                StoreError::TokenExpired {
                    expires_unix: token.expires_unix,
                }
            } else {
                StoreError::TokenUsedUp
            }))
        })
    }

    fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        let (pool, id_owned) = (self.pool(), id.to_string());
        self.call("remove an enrollment token", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            Ok(client
                .execute("DELETE FROM tokens WHERE id = $1", &[&id_owned])
                .await?
                == 1)
        })
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let (pool, id_owned) = (self.pool(), id.to_string());
        self.call("read an enrollment token", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let row = client
                .query_opt(
                    "SELECT id, scope, expires_unix, uses_left, created_unix FROM tokens WHERE id = $1",
                    &[&id_owned],
                )
                .await?;
            row.as_ref().map(token_from_row).transpose()
        })
    }

    // Operators.

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let (pool, name_owned) = (self.pool(), name.to_string());
        self.call(format!("read operator {name}"), CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached("SELECT record FROM operators WHERE name = $1")
                .await?;
            let row = client.query_opt(&statement, &[&name_owned]).await?;
            row.map(|row| decode("operators", &name_owned, row.get(0)))
                .transpose()
        })
    }

    fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let pool = self.pool();
        self.call("list operators", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query("SELECT name, record FROM operators ORDER BY name", &[])
                .await?;
            rows.iter()
                .map(|row| decode("operators", row.get(0), row.get(1)))
                .collect()
        })
    }

    /// In a transaction: the stored record is read `FOR UPDATE` (or, when
    /// none is expected, the insert does nothing on a conflict) and written
    /// only if it is the expected one.
    fn swap_operator(
        &self,
        expected: Option<&OperatorRecord>,
        new: &OperatorRecord,
    ) -> Result<bool, StoreError> {
        let pool = self.pool();
        let expected = expected.cloned();
        let (name, record) = (new.name.clone(), encode("operator record", new)?);
        self.call_retrying(
            format!("write operator {}", new.name),
            CALL_TIMEOUT,
            move || {
                let (pool, expected, name, record) =
                    (pool.clone(), expected.clone(), name.clone(), record.clone());
                async move {
                    let mut client = pool.get().await?;
                    let transaction = client.transaction().await?;
                    let Some(expected) = expected else {
                        let inserted = transaction
                            .execute(
                                "INSERT INTO operators (name, record) VALUES ($1, $2)
                             ON CONFLICT (name) DO NOTHING",
                                &[&name, &record],
                            )
                            .await?;
                        transaction.commit().await?;
                        return Ok(inserted == 1);
                    };
                    let row = transaction
                        .query_opt(
                            "SELECT record FROM operators WHERE name = $1 FOR UPDATE",
                            &[&name],
                        )
                        .await?;
                    let stored: Option<OperatorRecord> = row
                        .map(|row| decode("operators", &name, row.get(0)))
                        .transpose()?;
                    if stored.as_ref() != Some(&expected) {
                        transaction.rollback().await?;
                        return Ok(false);
                    }
                    transaction
                        .execute(
                            "UPDATE operators SET record = $2 WHERE name = $1",
                            &[&name, &record],
                        )
                        .await?;
                    transaction.commit().await?;
                    Ok(true)
                }
            },
        )
    }

    // The audit log.

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let pool = self.pool();
        let (time, value) = (to_db(record.time_unix_ms), encode("audit record", record)?);
        self.call("write an audit record", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached("INSERT INTO audit (time_unix_ms, record) VALUES ($1, $2)")
                .await?;
            client.execute(&statement, &[&time, &value]).await?;
            Ok(())
        })
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let (pool, limit) = (self.pool(), to_db(limit as u64));
        self.call("list the audit log", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT sequence, record FROM (
                         SELECT sequence, time_unix_ms, record FROM audit
                         ORDER BY time_unix_ms DESC, sequence DESC LIMIT $1
                     ) AS last ORDER BY time_unix_ms, sequence",
                    &[&limit],
                )
                .await?;
            rows.iter()
                .map(|row| decode("audit", &row.get::<_, i64>(0).to_string(), row.get(1)))
                .collect()
        })
    }

    // Settings.

    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let (pool, name_owned, value) = (self.pool(), name.to_string(), value.to_vec());
        self.call(format!("write setting {name}"), CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO settings (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[&name_owned, &value],
                )
                .await?;
            Ok(())
        })
    }

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (pool, name_owned) = (self.pool(), name.to_string());
        self.call(format!("read setting {name}"), CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached("SELECT value FROM settings WHERE name = $1")
                .await?;
            let row = client.query_opt(&statement, &[&name_owned]).await?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    // Dashboard sessions (the table `dashboard_sessions`, migrations 0002
    // and 0004).

    fn open_session(
        &self,
        hash: &str,
        token_hash: &str,
        expires_unix_ms: u64,
        now_unix_ms: u64,
    ) -> Result<(), StoreError> {
        let (pool, hash) = (self.pool(), hash.to_string());
        let token_hash = token_hash.to_string();
        let (expires, now) = (expires_unix_ms as i64, now_unix_ms as i64);
        self.call("write a dashboard session", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            client
                .execute(
                    "DELETE FROM dashboard_sessions WHERE expires_unix_ms <= $1",
                    &[&now],
                )
                .await?;
            client
                .execute(
                    "INSERT INTO dashboard_sessions (hash, expires_unix_ms, token_hash)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (hash) DO UPDATE SET expires_unix_ms = EXCLUDED.expires_unix_ms,
                         token_hash = EXCLUDED.token_hash",
                    &[&hash, &expires, &token_hash],
                )
                .await?;
            Ok(())
        })
    }

    fn session_is_valid(&self, hash: &str, now_unix_ms: u64) -> Result<bool, StoreError> {
        let (pool, hash, now) = (self.pool(), hash.to_string(), now_unix_ms as i64);
        self.call("read a dashboard session", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let row = client
                .query_opt(
                    "SELECT 1 FROM dashboard_sessions s
                     JOIN dashboard_tokens t ON t.hash = s.token_hash
                     WHERE s.hash = $1 AND s.expires_unix_ms > $2 AND t.revoked_unix_ms IS NULL",
                    &[&hash, &now],
                )
                .await?;
            Ok(row.is_some())
        })
    }

    fn close_session(&self, hash: &str) -> Result<bool, StoreError> {
        let (pool, hash) = (self.pool(), hash.to_string());
        self.call("remove a dashboard session", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let removed = client
                .execute("DELETE FROM dashboard_sessions WHERE hash = $1", &[&hash])
                .await?;
            Ok(removed > 0)
        })
    }

    // Dashboard tokens (the table `dashboard_tokens`, migration 0003).

    /// One `INSERT … ON CONFLICT DO NOTHING`: a stored token, revoked or
    /// not, stays as it is.
    fn add_dashboard_token(&self, token: &DashboardTokenRecord) -> Result<bool, StoreError> {
        let pool = self.pool();
        let token = token.clone();
        self.call("write a dashboard token", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let inserted = client
                .execute(
                    "INSERT INTO dashboard_tokens
                         (hash, created_unix_ms, created_by, revoked_unix_ms, revoked_by)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (hash) DO NOTHING",
                    &[
                        &token.hash,
                        &to_db(token.created_unix_ms),
                        &token.created_by,
                        &token.revoked_unix_ms.map(to_db),
                        &token.revoked_by,
                    ],
                )
                .await?;
            Ok(inserted == 1)
        })
    }

    fn dashboard_token_is_valid(&self, hash: &str) -> Result<bool, StoreError> {
        let (pool, hash) = (self.pool(), hash.to_string());
        self.call("read a dashboard token", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached(
                    "SELECT 1 FROM dashboard_tokens WHERE hash = $1 AND revoked_unix_ms IS NULL",
                )
                .await?;
            Ok(client.query_opt(&statement, &[&hash]).await?.is_some())
        })
    }

    fn dashboard_tokens(&self) -> Result<Vec<DashboardTokenRecord>, StoreError> {
        let pool = self.pool();
        self.call("list dashboard tokens", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {DASHBOARD_TOKEN_COLUMNS} FROM dashboard_tokens ORDER BY hash"
                    ),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(dashboard_token_from_row).collect())
        })
    }

    /// One conditional `UPDATE … WHERE revoked_unix_ms IS NULL RETURNING`:
    /// of revocations at once, on any replica, one finds the row to
    /// update. When it updates nothing, a read says why (rows are never
    /// deleted, so the token is then either revoked or unknown).
    fn revoke_dashboard_token(
        &self,
        hash: &str,
        revoked_unix_ms: u64,
        revoked_by: &str,
    ) -> Result<DashboardTokenRevocation, StoreError> {
        let (pool, hash) = (self.pool(), hash.to_string());
        let (at, by) = (to_db(revoked_unix_ms), revoked_by.to_string());
        self.call("revoke a dashboard token", CALL_TIMEOUT, async move {
            let client = pool.get().await?;
            let revoked = client
                .query_opt(
                    &format!(
                        "UPDATE dashboard_tokens SET revoked_unix_ms = $2, revoked_by = $3
                         WHERE hash = $1 AND revoked_unix_ms IS NULL
                         RETURNING {DASHBOARD_TOKEN_COLUMNS}"
                    ),
                    &[&hash, &at, &by],
                )
                .await?;
            if let Some(row) = revoked {
                return Ok(DashboardTokenRevocation::Revoked(dashboard_token_from_row(
                    &row,
                )));
            }
            let stored = client
                .query_opt(
                    &format!(
                        "SELECT {DASHBOARD_TOKEN_COLUMNS} FROM dashboard_tokens WHERE hash = $1"
                    ),
                    &[&hash],
                )
                .await?;
            Ok(match stored {
                Some(row) => {
                    DashboardTokenRevocation::AlreadyRevoked(dashboard_token_from_row(&row))
                }
                None => DashboardTokenRevocation::Unknown,
            })
        })
    }

    fn settings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let pool = self.pool();
        self.call("list settings", BULK_TIMEOUT, async move {
            let client = pool.get().await?;
            let rows = client
                .query("SELECT name, value FROM settings ORDER BY name", &[])
                .await?;
            Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }

    // Health.

    /// The database answers, and takes writes (it is not a standby that a
    /// failover left this replica pointing at).
    fn check_writable(&self) -> Result<(), StoreError> {
        let pool = self.pool();
        let standby = self.call("check the database", Duration::from_secs(5), async move {
            let client = pool.get().await?;
            let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await?;
            Ok(row.get::<_, bool>(0))
        })?;
        if standby {
            return Err(StoreError::Unavailable {
                action: "check the database".into(),
                target: self.target.clone(),
                detail: "it is a read-only standby".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StoreKey {
        StoreKey::parse(&StoreKey::generate_text()).unwrap()
    }

    #[test]
    fn a_url_is_described_with_host_port_and_database_but_never_the_password() {
        assert_eq!(
            describe_url("postgres://cms:s3cret@db.internal:6432/fleet?connect_timeout=2").unwrap(),
            "postgres://cms@db.internal:6432/fleet"
        );
        assert_eq!(
            describe_url("postgres://db.internal/fleet").unwrap(),
            "postgres://db.internal:5432/fleet"
        );
        let error = describe_url("postgres://cms:s3cret@db:port/fleet").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("Failed to read the store URL"),
            "{error}"
        );
    }

    #[test]
    fn a_url_with_tls_parameters_is_described_without_them() {
        assert_eq!(
            describe_url("postgres://cms:s3cret@db.internal/fleet?sslmode=verify-full&sslrootcert=/etc/rds-ca.pem")
                .unwrap(),
            "postgres://cms@db.internal:5432/fleet"
        );
    }

    #[test]
    fn the_store_key_stays_out_of_the_stores_debug_output() {
        let config = PostgresConfig::new("postgres://cms@db.invalid/cms", key());
        assert!(format!("{config:?}").contains("<redacted>"));
    }
}
