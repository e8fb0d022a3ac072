//! Replicas of cms-server sharing one PostgreSQL: fleet messages cross
//! between them over LISTEN/NOTIFY (`cms_server::bus`), one of them leads
//! at a time under an advisory lock (`cms_server::leader`), and the lock
//! passes on when its holder's session ends. A real PostgreSQL
//! (`PostgresServer`), no mock.
//! Restart places are counted alike by every replica.
//!
//! Then the real thing: three `cms-server serve` processes on one database
//! behind a TCP load balancer (`TcpProxy`), with `cms-agent run` daemons on
//! this host that reach them only through it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cms_integration::{
    AdminCli, AgentDaemon, GitRepo, HostAgent, PostgresServer, ServerProcess, TcpProxy,
    build_workspace_binary, wait_until_polling_every,
};
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
            // pg_locks is the whole server's: without the database, this
            // killed other tests' replicas (one while it migrated its
            // schema under its lock).
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())",
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

// ---- three `cms-server serve` replicas behind a TCP load balancer ----

/// Three replicas on one database behind a [`TcpProxy`], and `agents` host
/// agents (`role=web`) running as daemons that reach the server only
/// through the proxy.
struct Cluster {
    replicas: Vec<Option<ServerProcess>>,
    /// The data directory holding the bootstrap admin credential in force.
    credential: std::path::PathBuf,
    proxy: TcpProxy,
    binary: std::path::PathBuf,
    /// The roles repository every replica follows.
    git: GitRepo,
    /// Where the `web` role writes.
    converged: std::path::PathBuf,
    _daemons: Vec<AgentDaemon>,
    dir: tempfile::TempDir,
}

const AGENTS: usize = 6;

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        Cluster::start_with_settings("")
    }

    /// [`Cluster::start`] with `settings` (e.g. a `[rollout]` table) added
    /// to the repository's `cms.toml`.
    fn start_with_settings(settings: &str) -> anyhow::Result<Cluster> {
        Cluster::start_with(settings, &[])
    }

    /// [`Cluster::start_with_settings`], the replicas given `flags` too.
    fn start_with(settings: &str, flags: &[&str]) -> anyhow::Result<Cluster> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let url = database();
        let git = GitRepo::init(&dir.path().join("roles"))?;
        let converged = dir.path().join("converged");
        git.commit(
            &[
                (
                    "cms.toml",
                    &format!("[hierarchy]\nlayers = [\"common\"]\n\n{settings}"),
                ),
                ("roles/web.toml", &web_role(&converged, "")),
            ],
            "roles",
        )?;
        std::fs::create_dir_all(&converged)?;
        let binary = build_workspace_binary("cms-server", "cms-server")?;
        let replicas = start_replicas(&binary, dir.path(), &url, git.path(), 3, flags)?
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>();
        let proxy = TcpProxy::start(
            replicas
                .iter()
                .flatten()
                .map(|replica| replica.grpc)
                .collect(),
        )?;
        let credential = dir.path().join("replica-1");
        let mut cluster = Cluster {
            replicas,
            credential,
            proxy,
            binary,
            git,
            converged,
            _daemons: Vec::new(),
            dir,
        };
        let agent_binary = build_workspace_binary("cms-agent", "cms-agent")?;
        let server = cluster.proxy.address().to_string();
        for index in 1..=AGENTS {
            let node = format!("web-{index}");
            let token = cluster
                .admin(0)
                .json(&["token", "create", "--tags", "role=web"])?["token"]
                .as_str()
                .context("a token")?
                .to_string();
            let agent = HostAgent::in_directory(&agent_binary, cluster.dir.path(), &node)?;
            let enrolled = agent.enroll(&server, &token, &node, "role=web")?;
            anyhow::ensure!(
                enrolled.status.success(),
                "enroll {node} through the proxy: {}",
                String::from_utf8_lossy(&enrolled.stderr)
            );
            agent.write_config(&format!(
                "server = \"{server}\"\ninterval = \"1h\"\nsplay = \"0s\"\nmetadata_endpoint = \"127.0.0.1:1\"\n"
            ))?;
            let log = cluster.dir.path().join(format!("{node}.log"));
            cluster._daemons.push(agent.start_daemon(&log)?);
        }
        Ok(cluster)
    }

    /// The admin commands, sent to replica `index` itself (not through
    /// the proxy), with the first replica's bootstrap credential.
    fn admin(&self, index: usize) -> AdminCli {
        let replica = self.replicas[index].as_ref().expect("a live replica");
        AdminCli::new(
            self.binary.clone(),
            &replica.grpc.to_string(),
            &self.credential,
        )
    }

    /// How many watch channels each replica holds (0 for a dead one).
    fn watch_channels(&self) -> Vec<usize> {
        self.replicas
            .iter()
            .map(|replica| {
                replica
                    .as_ref()
                    .and_then(|replica| replica.get("/metrics", &[]).ok())
                    .and_then(|(_, text)| {
                        text.lines().find_map(|line| {
                            line.strip_prefix("cms_watch_streams ")?.trim().parse().ok()
                        })
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Waits until the live replicas hold a channel of every agent.
    fn wait_for_every_channel(&self) -> anyhow::Result<Vec<usize>> {
        let mut held = Vec::new();
        wait_until_polling_every(
            Duration::from_millis(200),
            Duration::from_secs(90),
            "every agent to hold a watch channel with a live replica",
            || {
                held = self.watch_channels();
                Ok((held.iter().sum::<usize>() >= AGENTS).then_some(()))
            },
        )
        .with_context(|| format!("held: {:?}\n{}", self.watch_channels(), self.logs()))?;
        Ok(held)
    }

    /// Runs a trigger of every `role=web` node on replica `index`: its
    /// exit code and the results by node.
    fn trigger_on(&self, index: usize) -> anyhow::Result<(Option<i32>, Vec<String>, String)> {
        let admin = self.admin(index);
        let (code, stdout, stderr) =
            admin.run(&["trigger", "--select", "role=web", "--timeout", "60s"])?;
        let id = stdout
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("trigger "))
            .and_then(|rest| rest.split(':').next())
            .with_context(|| format!("no trigger id in:\n{stdout}{stderr}"))?
            .to_string();
        let status = admin.json(&["trigger", "--status", &id])?;
        let mut results: Vec<String> = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|node| node["result"].as_str().unwrap_or("").to_string())
            .collect();
        results.sort();
        Ok((code, results, format!("{stdout}{stderr}")))
    }

    /// The replica that leads (its log says so) and the two others.
    fn leader_and_followers(&self) -> anyhow::Result<(usize, Vec<usize>)> {
        let leading = |index: usize| {
            self.replicas[index]
                .as_ref()
                .is_some_and(|replica| replica.log_text().contains("this replica leads"))
        };
        let mut leader = None;
        wait_until_polling_every(
            Duration::from_millis(200),
            Duration::from_secs(30),
            "one replica to lead",
            || {
                leader = (0..self.replicas.len()).find(|index| leading(*index));
                Ok(leader.map(drop))
            },
        )
        .with_context(|| self.logs())?;
        let leader = leader.context("a leader")?;
        let followers = (0..self.replicas.len())
            .filter(|index| *index != leader)
            .collect();
        Ok((leader, followers))
    }

    /// `cms-server rollout status` on replica `index`, as JSON.
    fn rollout_status(&self, index: usize) -> anyhow::Result<serde_json::Value> {
        self.admin(index).json(&["rollout", "status"])
    }

    /// Polls replica `index` until the rollout's state is one of `states`.
    fn wait_for_rollout(&self, index: usize, states: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut last = serde_json::Value::Null;
        wait_until_polling_every(
            Duration::from_millis(200),
            Duration::from_secs(120),
            &format!("the rollout to be {states:?} on replica {}", index + 1),
            || {
                let Ok((Some(0), status)) = self.admin(index).json_and_code(&["rollout", "status"])
                else {
                    return Ok(None);
                };
                last = status;
                Ok(states
                    .contains(&last["state"].as_str().unwrap_or(""))
                    .then_some(()))
            },
        )
        .with_context(|| format!("the last status: {last:#}\n{}", self.logs()))?;
        Ok(last)
    }

    fn logs(&self) -> String {
        let mut text: Vec<String> = self
            .replicas
            .iter()
            .flatten()
            .map(ServerProcess::log_text)
            .collect();
        for index in 1..=AGENTS {
            let log = self.dir.path().join(format!("web-{index}.log"));
            text.push(format!(
                "web-{index}'s daemon:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        text.join("\n")
    }
}

/// `count` replicas `serve` on the database at `url` and the repository
/// `repo`, with data directories `dir/replica-N` and `extra` flags (a sync
/// every second unless `extra` gives `--sync-interval`). One
/// after another: the first replica makes the bootstrap admin credential
/// (the others, on the shared store, make none), and that one is used with
/// every replica.
fn start_replicas(
    binary: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
    repo: &std::path::Path,
    count: usize,
    extra: &[&str],
) -> anyhow::Result<Vec<ServerProcess>> {
    let key = dir.join("store.key");
    let keygen = std::process::Command::new(binary)
        .args(["store", "keygen"])
        .output()?;
    anyhow::ensure!(keygen.status.success(), "cms-server store keygen failed");
    std::fs::write(&key, &keygen.stdout)?;
    let key_text = key.to_str().context("utf-8")?.to_string();
    let mut flags = vec!["--store", url, "--store-key-file", &key_text];
    if !extra.contains(&"--sync-interval") {
        flags.extend(["--sync-interval", "1s"]);
    }
    flags.extend_from_slice(extra);
    (1..=count)
        .map(|index| {
            ServerProcess::start(binary, &dir.join(format!("replica-{index}")), repo, &flags)
        })
        .collect()
}

/// The `web` role: a directory `converged/NODE`, and with a non-empty
/// `content` a file `converged/NODE/version` holding it.
fn web_role(converged: &std::path::Path, content: &str) -> String {
    let mut role = format!(
        "[match]\nrole = \"web\"\n\n[[directory]]\npath = \"{}/{{{{node.id}}}}\"\n",
        converged.display()
    );
    if !content.is_empty() {
        role.push_str(&format!(
            "\n[[file]]\npath = \"{}/{{{{node.id}}}}/version\"\ncontent = \"{content}\"\n",
            converged.display()
        ));
    }
    role
}

/// A trigger's results when every node ran and changed nothing, or
/// changed its directory on its first run.
fn all_ran(results: &[String]) -> bool {
    results.len() == AGENTS
        && results
            .iter()
            .all(|result| result == "unchanged" || result == "changed")
}

#[test]
fn a_trigger_given_to_one_replica_reaches_agents_held_by_the_other_two_and_their_outcomes_come_back()
-> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let held = cluster.wait_for_every_channel()?;
    // The trigger goes to the replica holding the fewest channels: the
    // others hold at least the rest.
    let (giver, _) = held
        .iter()
        .enumerate()
        .min_by_key(|(_, count)| **count)
        .expect("three replicas");
    anyhow::ensure!(
        held.iter().sum::<usize>() - held[giver] >= AGENTS / 2,
        "the proxy spread the channels: {held:?}"
    );
    let (code, results, output) = cluster.trigger_on(giver)?;
    anyhow::ensure!(
        code == Some(0) && all_ran(&results),
        "every node ran, {} of them through another replica (held {held:?}): exit {code:?}, {results:?}\n{output}\n{}",
        AGENTS - held[giver],
        cluster.logs()
    );
    Ok(())
}

#[test]
fn a_trigger_right_after_a_commit_only_the_leader_fetched_gets_that_commit_on_every_replica()
-> anyhow::Result<()> {
    // Replicas that fetch once an hour: only the leader, told to sync,
    // has the new commit when it makes it stable and triggers the fleet.
    let cluster = Cluster::start_with("", &["--sync-interval", "1h"])?;
    cluster.wait_for_every_channel()?;
    let (leader, _) = cluster.leader_and_followers()?;
    cluster.git.commit(
        &[("roles/web.toml", &web_role(&cluster.converged, "v2"))],
        "v2",
    )?;
    let (code, stdout, stderr) = cluster.admin(leader).run(&["sync"])?;
    anyhow::ensure!(
        code == Some(0),
        "sync on the leader: exit {code:?}\n{stdout}{stderr}"
    );
    let commit = cluster.git.head()?;
    let (code, results, output) = cluster.trigger_on(leader)?;
    anyhow::ensure!(
        code == Some(0) && results.iter().all(|result| result == "changed"),
        "every node ran and changed (its version file): exit {code:?}, {results:?}\n{output}\n{}",
        cluster.logs()
    );
    // Each node's run went through the proxy to any replica: every one
    // served the commit the leader made stable, none the one before.
    for index in 1..=AGENTS {
        let version = cluster.converged.join(format!("web-{index}/version"));
        let content = std::fs::read_to_string(&version).unwrap_or_default();
        anyhow::ensure!(
            content == "v2",
            "web-{index} converged commit {commit}'s role: {version:?} holds {content:?}\n{}",
            cluster.logs()
        );
    }
    Ok(())
}

/// How many waves of a rollout (as `rollout status --format json` shows it)
/// have started.
fn waves_started(status: &serde_json::Value) -> usize {
    status["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|wave| wave["started_unix_ms"].as_u64().unwrap_or(0) > 0)
        .count()
}

#[test]
fn rollout_commands_given_to_replicas_that_do_not_lead_reach_the_leaders_rollout_and_a_pin_holds()
-> anyhow::Result<()> {
    // One node per wave and a bake between waves: the rollout lasts long
    // enough to be paused half-way.
    let cluster = Cluster::start_with_settings(
        "[rollout]\ncanary = 1\nbatch = \"1\"\nbake = \"6s\"\ntimeout = \"60s\"\n",
    )?;
    cluster.wait_for_every_channel()?;
    let (leader, followers) = cluster.leader_and_followers()?;
    cluster.git.commit(
        &[("roles/web.toml", &web_role(&cluster.converged, "v2"))],
        "v2",
    )?;
    cluster.wait_for_rollout(leader, &["running", "baking"])?;

    // Paused through a replica that does not lead: the leader's rollout
    // stops advancing.
    let (code, stdout, stderr) = cluster.admin(followers[0]).run(&["rollout", "pause"])?;
    anyhow::ensure!(
        code == Some(0),
        "pause through replica {}: exit {code:?}\n{stdout}{stderr}",
        followers[0] + 1
    );
    let paused = cluster.wait_for_rollout(leader, &["paused"])?;
    anyhow::ensure!(
        paused["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|action| action.as_str().unwrap_or("").starts_with("pause by admin")),
        "the rollout names who paused it: {paused:#}"
    );
    // A wave in flight finishes; none starts after it, though the bake is
    // long over.
    std::thread::sleep(Duration::from_secs(3));
    let before = waves_started(&cluster.rollout_status(leader)?);
    std::thread::sleep(Duration::from_secs(8));
    let still = cluster.rollout_status(leader)?;
    anyhow::ensure!(
        still["state"] == "paused" && waves_started(&still) == before,
        "the leader's rollout stays paused at {before} waves: {still:#}\n{}",
        cluster.logs()
    );

    // A pin given to another replica that does not lead, while the
    // rollout is paused, then resumed there: the rollout completes and
    // the pin is still in force (the leader's writes kept it).
    let (code, stdout, stderr) =
        cluster
            .admin(followers[1])
            .run(&["pin", "--select", "role=web,hold=yes"])?;
    anyhow::ensure!(
        code == Some(0),
        "pin through replica {}: exit {code:?}\n{stdout}{stderr}",
        followers[1] + 1
    );
    let (code, stdout, stderr) = cluster.admin(followers[1]).run(&["rollout", "resume"])?;
    anyhow::ensure!(
        code == Some(0),
        "resume through replica {}: exit {code:?}\n{stdout}{stderr}",
        followers[1] + 1
    );
    let done = cluster.wait_for_rollout(leader, &["done"])?;
    anyhow::ensure!(
        waves_started(&done) > before,
        "the resumed rollout went on: {done:#}"
    );
    for index in [leader, followers[0], followers[1]] {
        let environments = cluster.admin(index).json(&["environments"])?;
        let pins = &environments[0]["pins"];
        anyhow::ensure!(
            pins.as_array().map(Vec::len) == Some(1)
                && pins[0]["selector"]["hold"] == "yes"
                && pins[0]["created_by"] == "admin",
            "replica {} shows the pin given to replica {}: {environments:#}",
            index + 1,
            followers[1] + 1
        );
    }
    Ok(())
}

/// Signs in to the dashboard of `replica` with `token`: the session cookie
/// (`cms_session=…`) it sets.
fn dashboard_login(replica: &ServerProcess, token: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new("curl")
        .args(["--silent", "--insecure", "--include", "--max-time", "30"])
        .args(["--data", &format!("token={token}")])
        .arg(format!("https://{}/dashboard/login", replica.http))
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    text.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            if !name.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let cookie = value.trim().split(';').next()?;
            cookie
                .starts_with("cms_session=")
                .then(|| cookie.to_string())
        })
        .with_context(|| format!("no session cookie in the login's answer:\n{text}"))
}

#[test]
fn a_dashboard_session_opened_on_one_replica_is_valid_on_another_until_logged_out_on_either()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = database();
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n")],
        "roles",
    )?;
    let binary = build_workspace_binary("cms-server", "cms-server")?;
    let replicas = start_replicas(&binary, dir.path(), &url, git.path(), 2, &["--http-tls"])?;
    let (one, two) = (&replicas[0], &replicas[1]);
    let token = one.dashboard_token()?;
    let cookie = dashboard_login(one, &token)?;
    let page = |replica: &ServerProcess| -> anyhow::Result<u16> {
        Ok(replica.get("/dashboard", &[("Cookie", cookie.as_str())])?.0)
    };
    anyhow::ensure!(page(one)? == 200, "the session works where it was opened");
    anyhow::ensure!(
        page(two)? == 200,
        "the session opened on replica 1 works on replica 2\n{}",
        two.log_text()
    );
    let (status, _) = two.post("/dashboard/logout", &[("Cookie", cookie.as_str())], b"")?;
    anyhow::ensure!(status == 303, "logout on replica 2 answered {status}");
    anyhow::ensure!(
        page(one)? == 401 && page(two)? == 401,
        "a logout on replica 2 ends the session on both"
    );
    Ok(())
}

/// Two `--http-tls` replicas on a new database, the first holding the
/// bootstrap admin credential; the database's URL.
fn dashboard_replicas(dir: &std::path::Path) -> anyhow::Result<(Vec<ServerProcess>, String)> {
    let url = database();
    let git = GitRepo::init(&dir.join("roles"))?;
    git.commit(
        &[("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n")],
        "roles",
    )?;
    let binary = build_workspace_binary("cms-server", "cms-server")?;
    let replicas = start_replicas(&binary, dir, &url, git.path(), 2, &["--http-tls"])?;
    Ok((replicas, url))
}

/// `cms-server ARGS` sent to `replica` with the bootstrap credential of
/// `credential` (a data directory): exit code, stdout, stderr.
fn cms_server_on(
    replica: &ServerProcess,
    credential: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<(Option<i32>, String, String)> {
    let binary = build_workspace_binary("cms-server", "cms-server")?;
    AdminCli::new(binary, &replica.grpc.to_string(), credential).run(args)
}

/// `POST /dashboard/login` on `replica` with `token`: 303 signs in, 401
/// refuses.
fn login_status(replica: &ServerProcess, token: &str) -> anyhow::Result<u16> {
    Ok(replica
        .post("/dashboard/login", &[], format!("token={token}").as_bytes())?
        .0)
}

/// Every row of every table of the database at `url`, as text (a bytea
/// column as hex): what a dump of the database would show.
fn every_row_of(url: &str) -> anyhow::Result<String> {
    let server = PostgresServer::shared()?;
    let database = PostgresServer::database_of(url);
    let tables = server.sql(
        database,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )?;
    let mut text = String::new();
    for table in tables.lines() {
        text.push_str(&server.sql(
            database,
            &format!("SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} AS t"),
        )?);
        text.push('\n');
    }
    Ok(text)
}

#[test]
fn a_dashboard_token_made_through_one_replica_signs_in_on_another_and_the_database_holds_only_its_hash()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (replicas, url) = dashboard_replicas(dir.path())?;
    let (one, two) = (&replicas[0], &replicas[1]);
    // The documented command, through replica 1.
    let (code, stdout, stderr) = cms_server_on(one, &one.data, &["dashboard-token"])?;
    anyhow::ensure!(code == Some(0), "dashboard-token on replica 1: {stderr}");
    let token = stdout.trim().to_string();
    anyhow::ensure!(token.starts_with("cmsd_"), "{stdout}");
    anyhow::ensure!(
        login_status(two, &token)? == 303,
        "the token made through replica 1 signs in on replica 2\n{}",
        two.log_text()
    );
    let cookie = dashboard_login(two, &token)?;
    let page = two.get("/dashboard", &[("Cookie", cookie.as_str())])?.0;
    anyhow::ensure!(page == 200, "the fleet page answered {page}");

    let hash = cms_roles::digest::sha256_hex(token.as_bytes());
    let rows = every_row_of(&url)?;
    let secret_hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    anyhow::ensure!(
        !rows.contains(token.trim_start_matches("cmsd_")) && !rows.contains(&secret_hex),
        "the database holds the token:\n{rows}"
    );
    let stored = PostgresServer::shared()?.sql(
        PostgresServer::database_of(&url),
        "SELECT hash || ' ' || created_by || ' ' || (revoked_unix_ms IS NULL) FROM dashboard_tokens",
    )?;
    anyhow::ensure!(
        stored == format!("{hash} admin true"),
        "the table holds the hash and its maker: {stored}"
    );
    Ok(())
}

#[test]
fn a_dashboard_token_revoked_through_one_replica_signs_in_on_none_and_its_sessions_end_on_all()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (replicas, _url) = dashboard_replicas(dir.path())?;
    let (one, two) = (&replicas[0], &replicas[1]);
    let credential = one.data.clone();
    let token = one.dashboard_token()?;
    let kept = one.dashboard_token()?;
    for replica in [one, two] {
        anyhow::ensure!(login_status(replica, &token)? == 303, "signs in before");
    }
    // A session the token opened on replica 1, and one of the other token.
    let session = dashboard_login(one, &token)?;
    let kept_session = dashboard_login(one, &kept)?;
    let page = |replica: &ServerProcess, cookie: &str| -> anyhow::Result<u16> {
        Ok(replica.get("/dashboard", &[("Cookie", cookie)])?.0)
    };
    // Listed and revoked through replica 2, by the id it lists.
    let id = cms_roles::digest::sha256_hex(token.as_bytes())[..12].to_string();
    let (code, listed, stderr) = cms_server_on(
        two,
        &credential,
        &["dashboard-token", "--list", "--format", "json"],
    )?;
    anyhow::ensure!(code == Some(0), "--list on replica 2: {stderr}");
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    anyhow::ensure!(
        listed.as_array().map(Vec::len) == Some(2)
            && listed
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["id"] == id.as_str()),
        "replica 2 lists both tokens: {listed:#}"
    );
    let (code, stdout, stderr) =
        cms_server_on(two, &credential, &["dashboard-token", "--revoke", &id])?;
    anyhow::ensure!(code == Some(0), "--revoke on replica 2: {stdout}{stderr}");
    for (index, replica) in [one, two].into_iter().enumerate() {
        anyhow::ensure!(
            login_status(replica, &token)? == 401,
            "the revoked token is refused by replica {}",
            index + 1
        );
        anyhow::ensure!(
            login_status(replica, &kept)? == 303,
            "the other token still signs in on replica {}",
            index + 1
        );
        anyhow::ensure!(
            page(replica, &session)? == 401,
            "the session the revoked token opened is over on replica {}",
            index + 1
        );
        anyhow::ensure!(
            page(replica, &kept_session)? == 200,
            "the other token's session goes on on replica {}",
            index + 1
        );
    }
    let (_, listed, _) = cms_server_on(
        one,
        &credential,
        &["dashboard-token", "--list", "--format", "json"],
    )?;
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    let revoked = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["id"] == id.as_str())
        .context("listed on replica 1")?;
    anyhow::ensure!(
        revoked["revoked_by"] == "admin",
        "replica 1 shows the revocation: {revoked:#}"
    );
    Ok(())
}
