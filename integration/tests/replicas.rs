//! Replicas of cms-server sharing one PostgreSQL: fleet messages cross
//! between them over LISTEN/NOTIFY (`cms_server::bus`), one of them leads
//! at a time under an advisory lock (`cms_server::leader`), and the lock
//! passes on when its holder's session ends. A real PostgreSQL
//! (`PostgresServer`), no mock.
//! Restart places are counted alike by every replica.

use std::sync::Arc;
use std::time::Duration;

use cms_integration::PostgresServer;
use cms_server::bus::{Bus, Message};
use cms_server::fleet::{Fleet, WatchSlot};
use cms_server::leader::Locks;
use cms_server::metrics::FleetCounters;
use cms_server::store::{MemoryStore, SharedStore, StoredReport};
use tokio::sync::watch;

fn database() -> String {
    PostgresServer::shared()
        .expect("start PostgreSQL (Debian's postgresql package)")
        .create_database()
        .expect("create a database")
}

/// Waits up to `limit` for `condition`.
async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

/// A replica's fleet on `url`, acting on the others' messages, with the
/// store `store` the replicas share.
fn replica_fleet(url: &str, store: &SharedStore, stop: &watch::Receiver<bool>) -> Arc<Fleet> {
    let (bus, incoming) = Bus::postgres(url, stop.clone());
    let fleet = Arc::new(Fleet::with_bus(FleetCounters::default(), bus));
    tokio::spawn(cms_server::fleet::serve_bus(
        fleet.clone(),
        store.clone(),
        incoming,
        |_| {},
    ));
    fleet
}

/// Until both buses listen, a message may go unheard: one is sent from
/// `a` to `b` until it arrives.
async fn wait_until_listening(a: &Arc<Fleet>, b: &Arc<Fleet>) {
    let slot = Arc::new(WatchSlot::default());
    let _guard = b.register_watch("probe", slot.clone());
    let heard = async { while !a.deliver_converge_now("probe", "probe", true).await {} };
    tokio::time::timeout(Duration::from_secs(20), heard)
        .await
        .expect("the two buses hear each other within 20 s");
    slot.take();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_buses_on_one_database_hear_each_others_messages_but_not_their_own() {
    let url = database();
    let (_stop_sender, stop) = watch::channel(false);
    let (a, mut heard_by_a) = Bus::postgres(&url, stop.clone());
    let (b, mut heard_by_b) = Bus::postgres(&url, stop.clone());
    assert_ne!(a.replica(), b.replica());
    let message = Message::CloseWatches {
        node: "web-1".into(),
    };
    // Sent until heard: the second bus may not listen yet.
    let received = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            a.publish(message.clone());
            if let Ok(Some(got)) =
                tokio::time::timeout(Duration::from_millis(200), heard_by_b.recv()).await
            {
                return got;
            }
        }
    })
    .await
    .expect("b hears a within 20 s");
    assert_eq!(received, message);
    b.publish(Message::EnvironmentChanged {
        environment: "production".into(),
    });
    let at_a = tokio::time::timeout(Duration::from_secs(5), heard_by_a.recv())
        .await
        .expect("a hears b")
        .expect("a's bus is open");
    assert_eq!(
        at_a,
        Message::EnvironmentChanged {
            environment: "production".into()
        },
        "a hears b's message and none of its own"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_converge_now_reaches_a_channel_held_by_another_replica_and_its_report_comes_back() {
    let url = database();
    let store: SharedStore = Arc::new(MemoryStore::default());
    let (_stop_sender, stop) = watch::channel(false);
    let a = replica_fleet(&url, &store, &stop);
    let b = replica_fleet(&url, &store, &stop);
    wait_until_listening(&a, &b).await;

    // web-1's channel is held by b; a runs the trigger.
    let slot = Arc::new(WatchSlot::default());
    let _guard = b.register_watch("web-1", slot.clone());
    assert!(!a.is_connected("web-1"));
    let report_waited = a.clone();
    let waiting = tokio::spawn(async move {
        let receiver = {
            // Registered before the command goes, as triggers do.
            let fleet = report_waited.clone();
            fleet.wait_for_report("t1", "web-1")
        };
        receiver.await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        a.deliver_converge_now("web-1", "t1", false).await,
        "b says it delivered the command"
    );
    let commands = slot.take();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].trigger_id, "t1");

    // The node's report arrives at b (as through a load balancer): it is
    // stored, and b announces it.
    let report = cms_proto::v1::RunReport {
        run_id: "run-1".into(),
        trigger_id: "t1".into(),
        revision: "abc".into(),
        ..Default::default()
    };
    let record = cms_proto::report::RunRecord::from(&report);
    store
        .put_report(&StoredReport {
            node_id: "web-1".into(),
            run_id: "run-1".into(),
            received_unix_ms: 1,
            report: record.clone(),
        })
        .expect("store the report");
    b.report_arrived("t1", "web-1", cms_server::fleet::outcome_of(&record));
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a hears of the report within 5 s")
        .expect("the waiting task ends")
        .expect("the outcome is sent");
    assert_eq!(
        (outcome.result.as_str(), outcome.run_id.as_str()),
        ("unchanged", "run-1")
    );

    // A node no replica holds is unreachable after the answer timeout.
    let started = tokio::time::Instant::now();
    assert!(!a.deliver_converge_now("web-2", "t1", false).await);
    assert!(started.elapsed() >= cms_server::fleet::PEER_ANSWER_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_closes_the_channels_another_replica_holds() {
    let url = database();
    let store: SharedStore = Arc::new(MemoryStore::default());
    let (_stop_sender, stop) = watch::channel(false);
    let a = replica_fleet(&url, &store, &stop);
    let b = replica_fleet(&url, &store, &stop);
    wait_until_listening(&a, &b).await;
    let slot = Arc::new(WatchSlot::default());
    let _guard = b.register_watch("web-1", slot.clone());
    a.close_watches("web-1");
    assert!(
        eventually(Duration::from_secs(5), || slot.is_closing()).await,
        "b's channel of web-1 is told to check its certificate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_lock_passes_to_another_replica_when_its_holders_session_ends() {
    let url = database();
    let (stop_a, stopped_a) = watch::channel(false);
    let (_stop_b, stopped_b) = watch::channel(false);
    let a = Locks::postgres(&url, stopped_a);
    assert!(
        eventually(Duration::from_secs(10), || a.is_leader()).await,
        "the first replica leads"
    );
    let b = Locks::postgres(&url, stopped_b);
    b.settled(Duration::from_secs(10)).await;
    assert!(!b.is_leader(), "one leader at a time");
    assert!(a.claim("trigger:t1").await);
    assert!(
        !b.claim("trigger:t1").await,
        "a claim is held by one replica"
    );

    // The holder's process dies: its session ends.
    stop_a.send_replace(true);
    assert!(
        eventually(Duration::from_secs(10), || b.is_leader()).await,
        "the other replica leads once the holder's session ended"
    );
    assert!(
        b.claim("trigger:t1").await,
        "a dead replica's claims are free"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_connection_is_killed_stops_leading_and_one_replica_leads_again() {
    let url = database();
    let server = PostgresServer::shared().expect("postgres");
    let (_stop_a, stopped_a) = watch::channel(false);
    let (_stop_b, stopped_b) = watch::channel(false);
    let a = Locks::postgres(&url, stopped_a);
    assert!(eventually(Duration::from_secs(10), || a.is_leader()).await);
    let b = Locks::postgres(&url, stopped_b);
    b.settled(Duration::from_secs(10)).await;
    let mut a_leads = a.leader();
    server
        .sql(
            PostgresServer::database_of(&url),
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        )
        .expect("terminate the leader's session");
    tokio::time::timeout(Duration::from_secs(10), a_leads.wait_for(|leads| !*leads))
        .await
        .expect("the old leader notices within 10 s")
        .expect("a's locks run");
    assert!(
        eventually(Duration::from_secs(10), || a.is_leader() != b.is_leader()).await,
        "exactly one replica leads again"
    );
}

#[test]
fn replicas_count_the_same_restart_places_and_one_freed_on_one_is_free_on_the_other() {
    use cms_server::restart_budget::{Answer, Ask, BudgetedGroup, RestartBudget};
    let url = database();
    let clock = cms_server::clock::system();
    let one = RestartBudget::shared(clock.clone(), &url).expect("replica one's leases");
    let two = RestartBudget::shared(clock, &url).expect("replica two's leases");
    let ask = |node: &str| Ask {
        node_id: node.to_string(),
        environment: "production".into(),
        unit: "nginx.service".into(),
        hold_seconds: 60,
        groups: vec![BudgetedGroup {
            role: "web".into(),
            max_restarting: cms_roles::MaxRestarting::Count(1),
            size: 3,
        }],
    };
    let Answer::Granted { lease_id, .. } = one.acquire(&ask("web-1")) else {
        panic!("the first place is free");
    };
    assert!(
        matches!(two.acquire(&ask("web-2")), Answer::Refused { ref reason, .. } if reason.contains("1 of 1 places taken")),
        "the other replica sees the place taken"
    );
    assert_eq!(
        two.release("web-1", &lease_id),
        cms_server::restart_budget::Released::Released,
        "a lease is released on any replica"
    );
    assert!(matches!(one.acquire(&ask("web-2")), Answer::Granted { .. }));
}
