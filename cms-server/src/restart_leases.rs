//! Restart leases shared by replicas: with the store on PostgreSQL, the
//! leases of `restart_budget` live in the table `cms_restart_leases`
//! (created by this module if missing), and every acquire or release reads
//! them, decides and writes them back in one transaction holding the
//! advisory lock `restart-leases` (`pg_advisory_xact_lock`), so that two
//! replicas never grant the same last place. The decision is the same pure
//! code as for a server alone; only where the leases live changes.
//!
//! Calls block (they are made on blocking threads): the connection lives on
//! a one-thread runtime this module owns, each call is spawned there and
//! waited for on a std channel, so it works from any thread and never
//! nests runtimes. A call that cannot reach the database within
//! [`CALL_TIMEOUT`] fails; an acquire is then refused (a restart waits
//! rather than exceeding its budget), a release is left to expire.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;

/// How long one acquire or release may take, connecting included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    pub id: String,
    pub environment: String,
    pub roles: Vec<String>,
    pub expires_unix_ms: u64,
}

/// The leases table on PostgreSQL.
#[derive(Debug)]
pub struct SharedLeases {
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
    client: std::sync::Arc<AsyncMutex<Option<tokio_postgres::Client>>>,
}

impl SharedLeases {
    /// Leases kept in the database at `url` (connected on first use).
    pub fn new(url: &str) -> std::io::Result<SharedLeases> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cms-restart-leases")
            .enable_all()
            .build()?;
        Ok(SharedLeases {
            url: url.to_string(),
            runtime: Some(runtime),
            client: Default::default(),
        })
    }

    /// Reads every lease, lets `decide` change them, and writes them back,
    /// in one transaction under the lease lock. Blocks.
    pub fn with_leases<T: Send + 'static>(
        &self,
        decide: impl FnOnce(&mut HashMap<String, StoredLease>) -> T + Send + 'static,
    ) -> Result<T, String> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let (sender, receiver) = std::sync::mpsc::channel();
        let (client, url) = (self.client.clone(), self.url.clone());
        runtime.spawn(async move {
            let answer = tokio::time::timeout(CALL_TIMEOUT, transact(&client, &url, decide))
                .await
                .unwrap_or_else(|_| Err("the database did not answer in time".to_string()));
            if answer.is_err() {
                // A broken connection is made anew on the next call.
                *client.lock().await = None;
            }
            let _ = sender.send(answer);
        });
        receiver
            .recv()
            .unwrap_or_else(|_| Err("the lease task ended".to_string()))
    }
}

impl Drop for SharedLeases {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's worker panics; this may
        // run there when the server stops.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

const CREATE: &str = "CREATE TABLE IF NOT EXISTS cms_restart_leases (
    node_id text PRIMARY KEY,
    lease_id text NOT NULL,
    environment text NOT NULL,
    roles text[] NOT NULL,
    expires_unix_ms bigint NOT NULL
)";

async fn transact<T>(
    client: &AsyncMutex<Option<tokio_postgres::Client>>,
    url: &str,
    decide: impl FnOnce(&mut HashMap<String, StoredLease>) -> T,
) -> Result<T, String> {
    let mut guard = client.lock().await;
    if guard.is_none() {
        let (connected, connection) = crate::bus::connect(url)
            .await
            .map_err(|e| format!("Failed to connect to the database: {e}"))?;
        tokio::spawn(crate::bus::drive(connection, |_| {}));
        *guard = Some(connected);
    }
    let client = guard.as_mut().expect("connected above");
    let error = |e: tokio_postgres::Error| e.to_string();
    let transaction = client.transaction().await.map_err(error)?;
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&crate::leader::lock_key("restart-leases")],
        )
        .await
        .map_err(error)?;
    transaction.batch_execute(CREATE).await.map_err(error)?;
    let rows = transaction
        .query(
            "SELECT node_id, lease_id, environment, roles, expires_unix_ms FROM cms_restart_leases",
            &[],
        )
        .await
        .map_err(error)?;
    let mut leases = HashMap::new();
    for row in rows {
        let expires: i64 = row.get(4);
        leases.insert(
            row.get::<_, String>(0),
            StoredLease {
                id: row.get(1),
                environment: row.get(2),
                roles: row.get(3),
                expires_unix_ms: expires.max(0) as u64,
            },
        );
    }
    let before = leases.clone();
    let answer = decide(&mut leases);
    for (node, old) in &before {
        if leases.get(node) != Some(old) {
            transaction
                .execute("DELETE FROM cms_restart_leases WHERE node_id = $1", &[node])
                .await
                .map_err(error)?;
        }
    }
    for (node, lease) in &leases {
        if before.get(node) != Some(lease) {
            let expires = i64::try_from(lease.expires_unix_ms).unwrap_or(i64::MAX);
            transaction
                .execute(
                    "INSERT INTO cms_restart_leases VALUES ($1, $2, $3, $4, $5)",
                    &[node, &lease.id, &lease.environment, &lease.roles, &expires],
                )
                .await
                .map_err(error)?;
        }
    }
    transaction.commit().await.map_err(error)?;
    Ok(answer)
}
