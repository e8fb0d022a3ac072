//! One replica at a time: PostgreSQL session advisory locks held on one
//! dedicated connection per replica.
//!
//! The **leader** lock decides which replica does the work that must not
//! run twice at once (`nodes::lifecycle_loop`: marking nodes gone and
//! removing them; finding triggers left running by a replica that died).
//! Every replica tries `pg_try_advisory_lock` every [`LEADER_RETRY`]; the
//! one that gets it leads for as long as its session lives. When the
//! leader dies, its session ends, PostgreSQL frees the lock and the next
//! try of another replica takes it. The leader checks its connection
//! every [`LEADER_RETRY`] (`SELECT 1`, at most [`HEALTH_TIMEOUT`]): on a
//! failure it stops leading at once and reconnects with backoff. A leader
//! cut off from the database can go on working for up to that check while
//! another replica already leads: the lifecycle work it does then is
//! repeated, never contradicted (marking gone, removing a node are the
//! same whoever does them).
//!
//! **Named claims** ([`Locks::claim`]) say "this replica is running this
//! now", e.g. a trigger: a replica that finds a trigger recorded as
//! running and can claim its name knows no live replica runs it. Claims
//! are kept across reconnections (claimed again when connected).
//!
//! A server alone (sled) uses [`Locks::local`]: it always leads and every
//! claim succeeds; it costs nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

/// How often a replica that does not lead tries to, and how often the
/// leader checks its connection.
pub const LEADER_RETRY: Duration = Duration::from_secs(2);
/// How long the leader's check of its connection may take.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock key of a name: FNV-1a over `cms:` and the name, so
/// that keys of other applications sharing the database are unlikely to
/// collide.
pub fn lock_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"cms:".iter().chain(name.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// The name of the leader lock.
pub const LEADER: &str = "leader";

enum Command {
    Claim(i64, oneshot::Sender<bool>),
    Release(i64),
}

/// A replica's locks: whether it leads, and its named claims.
#[derive(Debug, Clone)]
pub struct Locks {
    commands: Option<mpsc::UnboundedSender<Command>>,
    leader: watch::Receiver<bool>,
    /// True once the first try for the leader lock was made (or failed).
    settled: watch::Receiver<bool>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Claim(key, _) => write!(f, "Claim({key})"),
            Command::Release(key) => write!(f, "Release({key})"),
        }
    }
}

impl Locks {
    /// A server alone: it always leads, every claim succeeds.
    pub fn local() -> Locks {
        let (sender, leader) = watch::channel(true);
        let (settled_sender, settled) = watch::channel(true);
        // The receivers keep their last value when the senders go.
        drop((sender, settled_sender));
        Locks {
            commands: None,
            leader,
            settled,
        }
    }

    /// Locks on PostgreSQL at `url`, held by a task on one connection
    /// until `stop` is true (then the session ends and they are free).
    pub fn postgres(url: &str, stop: watch::Receiver<bool>) -> Locks {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (leader_sender, leader) = watch::channel(false);
        let (settled_sender, settled) = watch::channel(false);
        tokio::spawn(run_locks(
            url.to_string(),
            receiver,
            leader_sender,
            settled_sender,
            stop,
        ));
        Locks {
            commands: Some(commands),
            leader,
            settled,
        }
    }

    /// Waits (at most `limit`) until this replica has tried once for the
    /// leader lock, so that work done at start (the first sync) is done
    /// by the leader.
    pub async fn settled(&self, limit: Duration) {
        let mut settled = self.settled.clone();
        let _ = tokio::time::timeout(limit, settled.wait_for(|settled| *settled)).await;
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Follows whether this replica leads.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Whether this replica is alone (no other replica can hold a lock).
    pub fn is_local(&self) -> bool {
        self.commands.is_none()
    }

    /// Claims `name` for this replica until [`Locks::release`]: true when
    /// no other live replica holds it. While the database is unreachable
    /// the answer is false and the claim is made once connected.
    pub async fn claim(&self, name: &str) -> bool {
        let Some(commands) = &self.commands else {
            return true;
        };
        let (answer, receiver) = oneshot::channel();
        if commands
            .send(Command::Claim(lock_key(name), answer))
            .is_err()
        {
            return false;
        }
        receiver.await.unwrap_or(false)
    }

    /// Frees a claim of `name`.
    pub fn release(&self, name: &str) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Release(lock_key(name)));
        }
    }
}

async fn run_locks(
    url: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
    leader: watch::Sender<bool>,
    settled: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let leader_key = lock_key(LEADER);
    let mut held: BTreeSet<i64> = BTreeSet::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        leader.send_replace(false);
        let connected = tokio::select! {
            _ = stopped(&mut stop) => return,
            connected = crate::bus::connect(&url) => connected,
        };
        let (client, connection) = match connected {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(
                    "Failed to connect the replica locks to PostgreSQL (again in {backoff:?}): {error}"
                );
                settled.send_replace(true);
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = stopped(&mut stop) => return,
                        _ = &mut sleep => break,
                        command = commands.recv() => match command {
                            Some(Command::Claim(key, answer)) => {
                                held.insert(key);
                                let _ = answer.send(false);
                            }
                            Some(Command::Release(key)) => {
                                held.remove(&key);
                            }
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut driver = tokio::spawn(crate::bus::drive(connection, |_| {}));
        for key in held.clone() {
            if !try_lock(&client, key).await.unwrap_or(false) {
                tracing::warn!(
                    key,
                    "a claim held before the reconnection is now another replica's"
                );
            }
        }
        let mut tick = tokio::time::interval(LEADER_RETRY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
                    leader.send_replace(false);
                    driver.abort();
                    return;
                }
                _ = &mut driver => {
                    tracing::warn!("the replica locks lost their PostgreSQL connection: reconnecting");
                    break;
                }
                _ = tick.tick() => {
                    let leading = *leader.borrow();
                    if leading {
                        let check = tokio::time::timeout(HEALTH_TIMEOUT, client.simple_query("SELECT 1")).await;
                        if !matches!(check, Ok(Ok(_))) {
                            tracing::warn!("the leader's PostgreSQL connection does not answer: it stops leading");
                            break;
                        }
                    } else {
                        let tried = try_lock(&client, leader_key).await;
                        settled.send_replace(true);
                        match tried {
                            Ok(true) => {
                                tracing::info!("this replica leads the lifecycle work");
                                leader.send_replace(true);
                            }
                            Ok(false) => {}
                            Err(error) => {
                                tracing::warn!("Failed to try the leader lock: {error}");
                                break;
                            }
                        }
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Claim(key, answer)) => {
                        let got = try_lock(&client, key).await.unwrap_or(false);
                        if got {
                            held.insert(key);
                        }
                        let _ = answer.send(got);
                    }
                    Some(Command::Release(key)) => {
                        if held.remove(&key) {
                            let _ = client
                                .execute("SELECT pg_advisory_unlock($1)", &[&key])
                                .await;
                        }
                    }
                    None => return,
                },
            }
        }
        leader.send_replace(false);
        driver.abort();
    }
}

/// Completes when `stop` is true (a future whose output holds no guard,
/// so that a `select!` over it may await in its other branches).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn try_lock(
    client: &tokio_postgres::Client,
    key: i64,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?;
    row.try_get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_by_name_and_stay_the_same_across_builds() {
        assert_ne!(lock_key(LEADER), lock_key("trigger:t1"));
        // A replica of the next release must agree with this one.
        assert_eq!(lock_key(LEADER), lock_key("leader"));
        assert_eq!(lock_key(""), 2_173_284_311_721_109_888);
    }

    #[tokio::test]
    async fn a_server_alone_always_leads_and_every_claim_succeeds() {
        let locks = Locks::local();
        assert!(locks.is_leader());
        assert!(locks.claim("trigger:t1").await);
        assert!(locks.claim("trigger:t1").await);
        locks.release("trigger:t1");
        assert!(locks.is_local());
    }
}
