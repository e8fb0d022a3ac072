//! Fleet messages between the replicas of one installation: a converge-now
//! for a node whose watch channel another replica holds, the answer that it
//! was delivered, a report that answers a trigger run by another replica,
//! a revocation whose channels every replica must close, "this
//! environment's record changed, read it again", and an operator's rollout
//! command (pause, resume, abort, promote, pin, unpin) given to a replica
//! that does not lead, which the leader runs and answers.
//!
//! [`Bus::local`] is the bus of a server alone (sled): there is no one to
//! tell, publishing does nothing and costs nothing. [`Bus::postgres`]
//! carries the messages over PostgreSQL's LISTEN/NOTIFY on one dedicated
//! connection per replica (not one of the store's pool: a pooled
//! connection is handed back and would stop listening), opened from the
//! store's URL. Every replica listens on [`CHANNEL`]; each message names
//! its sender (a replica hears its own notifications and skips them).
//! Payloads carry ids only (NOTIFY takes at most 8000 bytes): the rest is
//! read from the store.
//!
//! When the connection drops, the bus reconnects with backoff (100 ms
//! doubling to 5 s) and LISTENs again; what was published meanwhile and is
//! younger than [`STALE_AFTER`] is sent once connected, older messages are
//! dropped (whoever waited for an answer gave up). Notifications sent by
//! others while this replica was disconnected are lost: after each
//! reconnection the bus hands its reader [`Message::Reconnected`], so
//! that whatever is cached is read again from the store.
//!
//! The messages are acted on by `fleet::serve_bus` (rollout commands and
//! environment changes by `rollouts::Rollouts::bus_message`); this module
//! only carries them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The LISTEN/NOTIFY channel of fleet messages.
pub const CHANNEL: &str = "cms_fleet";
/// A message not sent within this long (the database was unreachable) is
/// dropped rather than sent late.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// The largest payload PostgreSQL's NOTIFY takes is 8000 bytes; ours stay
/// far below (ids only), and a larger one is dropped with a warning.
pub const MAX_PAYLOAD: usize = 7900;

/// One fleet message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case")]
pub enum Message {
    /// Converge `node` now for `trigger`; the replica holding its channel
    /// answers [`Message::Delivered`] to `from` with `ask`.
    ConvergeNow {
        from: String,
        ask: u64,
        node: String,
        trigger: String,
        noop: bool,
    },
    /// The converge-now `ask` of replica `to` reached the node's channel.
    Delivered { to: String, ask: u64 },
    /// A report of `node` for `trigger` was stored as run `run`.
    ReportArrived {
        trigger: String,
        node: String,
        run: String,
    },
    /// `node` was revoked: every replica closes its channels.
    CloseWatches { node: String },
    /// The stored record of `environment` changed (stable revision, rollout
    /// or pins): read it again.
    EnvironmentChanged { environment: String },
    /// An operator's rollout command given to replica `from`, which does
    /// not lead: only the leader runs it (as if given to it), and answers
    /// [`Message::RolloutCommandDone`] to `from` with `request`.
    RolloutCommand {
        from: String,
        request: u64,
        environment: String,
        command: RolloutCommand,
        /// Who gave it, as the audit log and the rollout's actions name them.
        operator: String,
    },
    /// The leader ran the rollout command `request` of replica `to`.
    RolloutCommandDone {
        to: String,
        request: u64,
        outcome: CommandOutcome,
    },
    /// Not sent: the bus reconnected and may have missed messages.
    Reconnected,
}

/// A rollout command forwarded to the leader (ids and names only: the
/// leader reads the rest from its own state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RolloutCommand {
    /// `pause`, `resume`, `abort` or `promote` rollout `rollout_id` (empty:
    /// the active one).
    Control { rollout_id: String, action: String },
    /// Pin the nodes matching `selector` to `revision` (empty: the stable one).
    Pin {
        selector: BTreeMap<String, String>,
        revision: String,
    },
    /// Release the pin with exactly `selector`.
    Unpin { selector: BTreeMap<String, String> },
}

/// What the leader answers to a forwarded rollout command: small, since
/// the asking replica reads the record the leader wrote from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// Done: the rollout's id (control), the pinned commit (pin), or
    /// nothing (unpin).
    Done { answer: String },
    /// Refused or failed: the gRPC status code the leader would have
    /// answered, and its message.
    Failed { code: i32, message: String },
}

/// The sending half of the bus, shared by the server's tasks.
#[derive(Debug, Clone)]
pub struct Bus {
    replica: Arc<str>,
    outgoing: Option<mpsc::UnboundedSender<(tokio::time::Instant, Message)>>,
}

impl Default for Bus {
    fn default() -> Bus {
        Bus::local()
    }
}

/// The receiving half: the messages of the other replicas.
pub type Incoming = mpsc::UnboundedReceiver<Message>;

impl Bus {
    /// The bus of a server alone: publishing does nothing.
    pub fn local() -> Bus {
        Bus {
            replica: Arc::from("local"),
            outgoing: None,
        }
    }

    /// A bus over PostgreSQL at `url`: a task keeps one connection
    /// listening (reconnecting with backoff) until `stop` is true.
    pub fn postgres(url: &str, stop: tokio::sync::watch::Receiver<bool>) -> (Bus, Incoming) {
        let replica: Arc<str> = Arc::from(new_replica_id());
        let (outgoing, outgoing_receiver) = mpsc::unbounded_channel();
        let (incoming_sender, incoming) = mpsc::unbounded_channel();
        tokio::spawn(run_connection(
            url.to_string(),
            replica.clone(),
            outgoing_receiver,
            incoming_sender,
            stop,
        ));
        (
            Bus {
                replica,
                outgoing: Some(outgoing),
            },
            incoming,
        )
    }

    /// Whether other replicas may hear this bus (false for a server alone).
    pub fn is_shared(&self) -> bool {
        self.outgoing.is_some()
    }

    /// This replica's name on the bus: unique per process.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Sends `message` to the other replicas, without waiting.
    pub fn publish(&self, message: Message) {
        if let Some(outgoing) = &self.outgoing {
            let _ = outgoing.send((tokio::time::Instant::now(), message));
        }
    }
}

/// A name unique to this process among the replicas: its process id, its
/// start time and a count (tests run several buses in one process).
fn new_replica_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{}-{:x}-{count}",
        std::process::id(),
        crate::clock::now_unix_ms()
    )
}

/// Keeps one listening connection until `stop`, reconnecting with backoff.
async fn run_connection(
    url: String,
    replica: Arc<str>,
    mut outgoing: mpsc::UnboundedReceiver<(tokio::time::Instant, Message)>,
    incoming: mpsc::UnboundedSender<Message>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    // Messages read from `outgoing` but not sent yet (the connection
    // dropped): sent first on the next connection unless stale.
    let mut unsent: VecDeque<(tokio::time::Instant, Message)> = VecDeque::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let attempt = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            attempt = connect_and_listen(&url) => attempt,
        };
        match attempt {
            Ok((client, mut notifications)) => {
                backoff = Duration::from_millis(100);
                if connected_before {
                    tracing::info!("the fleet message bus reconnected to PostgreSQL");
                    let _ = incoming.send(Message::Reconnected);
                }
                connected_before = true;
                loop {
                    if let Some((at, message)) = unsent.pop_front() {
                        if at.elapsed() > STALE_AFTER {
                            continue;
                        }
                        if let Err(error) = notify(&client, &replica, &message).await {
                            tracing::warn!("Failed to send a fleet message: {error}");
                            unsent.push_front((at, message));
                            break;
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = stop.wait_for(|stopped| *stopped) => return,
                        next = outgoing.recv() => match next {
                            Some(message) => unsent.push_back(message),
                            None => return,
                        },
                        note = notifications.recv() => match note {
                            Some((from, message)) => {
                                if from != *replica {
                                    let _ = incoming.send(message);
                                }
                            }
                            None => {
                                tracing::warn!("the fleet message bus lost its PostgreSQL connection: reconnecting");
                                break;
                            }
                        },
                    }
                }
            }
            Err(error) => {
                tracing::warn!(
                    "Failed to connect the fleet message bus to PostgreSQL (again in {backoff:?}): {error}"
                );
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What is sent on the wire: the sender and the message.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The sending replica (not `from`, a field of some messages).
    by: String,
    #[serde(flatten)]
    message: Message,
}

async fn notify(
    client: &tokio_postgres::Client,
    replica: &str,
    message: &Message,
) -> Result<(), tokio_postgres::Error> {
    let payload = serde_json::to_string(&Envelope {
        by: replica.to_string(),
        message: message.clone(),
    })
    .expect("a fleet message serializes");
    if payload.len() > MAX_PAYLOAD {
        tracing::warn!(
            "a fleet message of {} bytes is more than NOTIFY takes: dropped",
            payload.len()
        );
        return Ok(());
    }
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map(drop)
}

/// Connects, starts listening, and returns the client with the stream of
/// notifications (sender, message); the stream ends when the connection
/// does.
async fn connect_and_listen(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        mpsc::UnboundedReceiver<(String, Message)>,
    ),
    crate::store::postgres::ConnectError,
> {
    let (client, connection) = connect(url).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(drive(
        connection,
        move |payload| match serde_json::from_str::<Envelope>(payload) {
            Ok(envelope) => {
                let _ = sender.send((envelope.by, envelope.message));
            }
            Err(error) => tracing::warn!("an unreadable fleet message was skipped: {error}"),
        },
    ));
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, receiver))
}

/// A connection that gives up after 5 s and notices a dead peer by TCP
/// keepalive, with the store URL's TLS settings (as every connection:
/// `store::postgres::ConnectionSettings`).
pub(crate) async fn connect(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        crate::store::postgres::PostgresConnection,
    ),
    crate::store::postgres::ConnectError,
> {
    let mut settings = crate::store::postgres::ConnectionSettings::from_url(url)?;
    settings
        .config
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .application_name("cms-server replica");
    settings.connect().await
}

/// Polls `connection` until it ends, handing each notification's payload
/// on our channel to `on_notification`.
pub(crate) async fn drive(
    mut connection: crate::store::postgres::PostgresConnection,
    mut on_notification: impl FnMut(&str) + Send + 'static,
) {
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
        match message {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(note))) => {
                if note.channel() == CHANNEL {
                    on_notification(note.payload());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::debug!("a replica connection to PostgreSQL ended: {error}");
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_ids_only_and_read_back_as_written() {
        let message = Message::ConvergeNow {
            from: "a".into(),
            ask: 7,
            node: "web-1".into(),
            trigger: "t1".into(),
            noop: false,
        };
        let text = serde_json::to_string(&Envelope {
            by: "replica-a".into(),
            message: message.clone(),
        })
        .unwrap();
        assert!(text.len() < 200, "{text}");
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!((back.by.as_str(), back.message), ("replica-a", message));
    }

    #[test]
    fn a_forwarded_rollout_command_and_its_answer_read_back_as_written() {
        let command = Message::RolloutCommand {
            from: "replica-b".into(),
            request: 3,
            environment: "production".into(),
            command: RolloutCommand::Pin {
                selector: BTreeMap::from([("role".to_string(), "web".to_string())]),
                revision: "abc123".into(),
            },
            operator: "alice".into(),
        };
        let done = Message::RolloutCommandDone {
            to: "replica-b".into(),
            request: 3,
            outcome: CommandOutcome::Failed {
                code: 9,
                message: "rollout r1 is paused: it cannot pause".into(),
            },
        };
        for message in [command, done] {
            let text = serde_json::to_string(&Envelope {
                by: "replica-a".into(),
                message: message.clone(),
            })
            .unwrap();
            assert!(text.len() < 400, "{text}");
            let back: Envelope = serde_json::from_str(&text).unwrap();
            assert_eq!(back.message, message);
        }
    }

    #[test]
    fn a_local_bus_is_not_shared_and_publishing_on_it_does_nothing() {
        let bus = Bus::local();
        assert!(!bus.is_shared());
        bus.publish(Message::CloseWatches {
            node: "web-1".into(),
        });
    }
}
