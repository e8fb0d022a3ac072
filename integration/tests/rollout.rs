//! Environments, rollouts and pins end to end: an in-process server with
//! real `cms-agent run` daemons on this host, driven through the Admin
//! gRPC API as `cms-server rollout`, `pin` and `environments` drive it.
//! Roles write one file per node under the test's folder
//! (`out/{{node.id}}.conf`), so what each node runs can be read on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cms_integration::{
    AgentDaemon, GitRepo, HostAgent, TestServer, build_workspace_binary, wait_until_polling_every,
};
use cms_proto::v1 as pb;
use cms_server::environments::{EnvironmentSpec, EnvironmentsConfig};

/// The rollout states after which nothing more happens.
const ENDED: [&str; 4] = ["done", "promoted", "rolled_back", "aborted"];

/// How long a rollout of a handful of nodes on this host may take: each
/// node's run is quick, but the machine is shared.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(120);

/// A server following a roles repository whose `web` role writes
/// `out/NODE.conf`, and enrolled nodes.
struct Fleet {
    server: TestServer,
    git: GitRepo,
    dir: tempfile::TempDir,
    agent_binary: PathBuf,
    agents: BTreeMap<String, HostAgent>,
    daemons: Vec<AgentDaemon>,
}

impl Fleet {
    /// Commits `cms.toml` (with `rollout`, a `[rollout]` table or "") and
    /// the web role writing `content`, and starts a server on it.
    fn start(rollout: &str, content: &str) -> Result<Fleet> {
        Fleet::start_with(rollout, content, |_| Ok(()), |_| {})
    }

    /// [`Fleet::start`], with `prepare` run on the repository before the
    /// server starts, and the server configured by `configure`.
    fn start_with(
        rollout: &str,
        content: &str,
        prepare: impl FnOnce(&GitRepo) -> Result<()>,
        configure: impl FnOnce(&mut cms_server::server::ServeConfig),
    ) -> Result<Fleet> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("out"))?;
        let git = GitRepo::init(&dir.path().join("roles"))?;
        git.commit(
            &[
                ("cms.toml", &cms_toml(rollout)),
                ("roles/web.toml", &web_role(dir.path(), content, false)),
            ],
            "web v1",
        )?;
        prepare(&git)?;
        let server = TestServer::start_with(
            &dir.path().join("server"),
            git.path(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            configure,
        )?;
        Ok(Fleet {
            server,
            git,
            dir,
            agent_binary: build_workspace_binary("cms-agent", "cms-agent")?,
            agents: BTreeMap::new(),
            daemons: Vec::new(),
        })
    }

    /// Enrolls `node` with `tags` (within `token`'s scope); its agent runs
    /// only when asked (an hour's interval, no splay) and finds no
    /// metadata service.
    fn enroll(&mut self, token: &str, node: &str, tags: &str) -> Result<HostAgent> {
        let agent = HostAgent::in_directory(&self.agent_binary, self.dir.path(), node)?;
        let enrolled = agent.enroll(&self.server.address, token, node, tags)?;
        ensure!(
            enrolled.status.success(),
            "enroll {node}: {}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
        agent.write_config(&format!(
            "server = \"{}\"\ninterval = \"1h\"\nsplay = \"0s\"\nmetadata_endpoint = \"127.0.0.1:1\"\n",
            self.server.address
        ))?;
        self.agents.insert(node.to_string(), agent.clone());
        Ok(agent)
    }

    /// Enrolls `role=web` nodes and starts a `cms-agent run` daemon for
    /// each; returns once every daemon holds its watch channel.
    fn enroll_daemons(&mut self, nodes: &[(&str, &str)], scope: &[(&str, &str)]) -> Result<()> {
        let token = self.server.token(scope)?;
        for (node, tags) in nodes {
            let agent = self.enroll(&token, node, tags)?;
            let log = self.dir.path().join(format!("{node}.log"));
            self.daemons.push(agent.start_daemon(&log)?);
        }
        // A daemon opens its watch channel after its first run: until a
        // noop trigger reaches every node, they are not all ready.
        let nodes: Vec<&str> = nodes.iter().map(|(node, _)| *node).collect();
        wait_until_polling_every(
            Duration::from_millis(300),
            Duration::from_secs(60),
            "every daemon to hold its watch channel",
            || {
                let answer = self.noop_trigger(&nodes)?;
                Ok((answer.unreachable == 0 && answer.total == nodes.len() as u32).then_some(()))
            },
        )
        .with_context(|| self.daemon_logs())
    }

    /// A noop trigger of every node: its last progress.
    fn noop_trigger(&self, nodes: &[&str]) -> Result<pb::TriggerProgress> {
        let server = &self.server;
        let last = server.runtime.block_on(async {
            let mut admin = server.admin().await?;
            let mut progress = admin
                .trigger(pb::TriggerRequest {
                    selector: Some(pb::Selector {
                        tags: [("role".to_string(), "web".to_string())].into(),
                    }),
                    noop: true,
                    timeout_seconds: 30,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut last = None;
            while let Some(message) = progress.message().await? {
                last = Some(message);
            }
            anyhow::Ok(last)
        })?;
        let last = last.context("the trigger sent no progress")?;
        let reached: Vec<&str> = last.nodes.iter().map(|n| n.node_id.as_str()).collect();
        ensure!(
            nodes.iter().all(|node| reached.contains(node)),
            "the trigger selected {reached:?}, not every node of {nodes:?}"
        );
        Ok(last)
    }

    /// Commits `files` and has the server sync: its answer.
    fn commit_and_sync(&self, files: &[(&str, &str)], message: &str) -> Result<pb::SyncResponse> {
        self.git.commit(files, message)?;
        self.server
            .call_admin(|mut admin| async move { admin.sync(pb::SyncRequest {}).await })
    }

    /// The web role at `content`, optionally with a resource that fails on
    /// the agent after the content is written.
    fn web_role(&self, content: &str, failing: bool) -> String {
        web_role(self.dir.path(), content, failing)
    }

    /// What `node`'s file holds ("" when it does not exist).
    fn content_of(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("out").join(format!("{node}.conf")))
            .unwrap_or_default()
    }

    /// The rollout of `environment` to `revision` (the latest rollout of
    /// the environment, which the sync that accepted `revision` started).
    fn rollout_to(&self, environment: &str, revision: &str) -> Result<pb::RolloutProgress> {
        let rollout = self.rollout_status(environment, "")?;
        ensure!(
            rollout.to_revision == revision,
            "the latest rollout of {environment:?} goes to {}, not {revision}: {rollout:#?}",
            rollout.to_revision
        );
        Ok(rollout)
    }

    fn rollout_status(&self, environment: &str, id: &str) -> Result<pb::RolloutProgress> {
        let request = pb::RolloutStatusRequest {
            environment: environment.to_string(),
            rollout_id: id.to_string(),
        };
        self.server
            .call_admin(|mut admin| async move { admin.rollout_status(request).await })
    }

    /// Polls the rollout until its state is one of `states`.
    fn wait_for_state(
        &self,
        rollout: &pb::RolloutProgress,
        states: &[&str],
    ) -> Result<pb::RolloutProgress> {
        let mut last = rollout.clone();
        wait_until_polling_every(
            Duration::from_millis(200),
            ROLLOUT_DEADLINE,
            &format!("rollout {} to be {states:?}", rollout.rollout_id),
            || {
                last = self.rollout_status(&rollout.environment, &rollout.rollout_id)?;
                if states.contains(&last.state.as_str()) {
                    return Ok(Some(last.clone()));
                }
                if ENDED.contains(&last.state.as_str()) {
                    bail!("the rollout ended {} instead: {last:#?}", last.state);
                }
                Ok(None)
            },
        )
        .with_context(|| format!("the last status: {last:#?}\n{}", self.daemon_logs()))
    }

    fn control(&self, rollout: &pb::RolloutProgress, action: &str) -> Result<pb::RolloutProgress> {
        let request = pb::ControlRolloutRequest {
            environment: rollout.environment.clone(),
            rollout_id: rollout.rollout_id.clone(),
            action: action.to_string(),
        };
        self.server
            .call_admin(|mut admin| async move { admin.control_rollout(request).await })
    }

    fn environments(&self) -> Result<BTreeMap<String, pb::EnvironmentStatus>> {
        let answer = self.server.call_admin(|mut admin| async move {
            admin
                .list_environments(pb::ListEnvironmentsRequest {})
                .await
        })?;
        Ok(answer
            .environments
            .into_iter()
            .map(|environment| (environment.name.clone(), environment))
            .collect())
    }

    fn stable_revision(&self, environment: &str) -> Result<String> {
        Ok(self
            .environments()?
            .get(environment)
            .with_context(|| format!("no environment {environment}"))?
            .stable_revision
            .clone())
    }

    /// Polls until `node`'s file holds `content`.
    fn wait_for_content(&self, node: &str, content: &str) -> Result<()> {
        wait_until_polling_every(
            Duration::from_millis(200),
            Duration::from_secs(60),
            &format!("{node}'s file to hold {content:?}"),
            || Ok((self.content_of(node) == content).then_some(())),
        )
        .with_context(|| self.daemon_logs())
    }

    fn daemon_logs(&self) -> String {
        self.agents
            .keys()
            .map(|node| {
                let log = self.dir.path().join(format!("{node}.log"));
                format!(
                    "{node}'s daemon:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn cms_toml(rollout: &str) -> String {
    format!("[hierarchy]\nlayers = [\"common\"]\n\n{rollout}")
}

/// The `web` role: `out/NODE.conf` holding `content`; with `failing`, then
/// a file in a folder that does not exist (parents are never created), so
/// the run fails after the content is written.
fn web_role(dir: &Path, content: &str, failing: bool) -> String {
    let out = format!("{}/out/{{{{node.id}}}}.conf", dir.display());
    let mut role =
        format!("[match]\nrole = \"web\"\n\n[[file]]\npath = \"{out}\"\ncontent = \"{content}\"\n");
    if failing {
        role.push_str(&format!(
            "\n[[file]]\npath = \"{}/no-such-folder/{{{{node.id}}}}.conf\"\ncontent = \"never\"\nrequire = [\"file:{out}\"]\n",
            dir.display()
        ));
    }
    role
}

/// Each node of the rollout's waves and its outcome.
fn outcomes(rollout: &pb::RolloutProgress) -> BTreeMap<String, String> {
    rollout
        .waves
        .iter()
        .flat_map(|wave| wave.nodes.iter())
        .map(|node| (node.node_id.clone(), node.result.clone()))
        .collect()
}

const WEB_SCOPE: &[(&str, &str)] = &[("role", "web")];

#[test]
fn a_good_commit_rolls_through_in_waves_and_a_bad_one_halts_at_the_canary_and_rolls_back()
-> Result<()> {
    let policy = "[rollout]\ncanary = 1\nbatch = \"1\"\nbake = \"0s\"\ntimeout = \"60s\"\n";
    let mut fleet = Fleet::start(policy, "v1")?;
    let nodes = ["web-1", "web-2", "web-3", "web-4"];
    let enrolled: Vec<(&str, &str)> = nodes.iter().map(|node| (*node, "role=web")).collect();
    fleet.enroll_daemons(&enrolled, WEB_SCOPE)?;
    for node in nodes {
        ensure!(fleet.content_of(node) == "v1", "{node} ran v1 first");
    }

    // A good commit: canary, then one node per wave, each after the last.
    let good = fleet.commit_and_sync(&[("roles/web.toml", &fleet.web_role("v2", false))], "v2")?;
    ensure!(good.accepted, "{good:?}");
    let rollout = fleet.rollout_to("production", &good.revision)?;
    let rollout = fleet.wait_for_state(&rollout, &["done"])?;
    let names: Vec<&str> = rollout.waves.iter().map(|w| w.name.as_str()).collect();
    ensure!(
        names == ["canary", "wave 2", "wave 3", "wave 4"],
        "one canary, then one node per wave: {rollout:#?}"
    );
    ensure!(
        rollout.waves[0].nodes.len() == 1,
        "the canary wave holds one node: {rollout:#?}"
    );
    for pair in rollout.waves.windows(2) {
        ensure!(
            pair[0].finished_unix_ms > 0 && pair[1].started_unix_ms >= pair[0].finished_unix_ms,
            "{} starts after {} finished: {rollout:#?}",
            pair[1].name,
            pair[0].name
        );
    }
    let moved = outcomes(&rollout);
    ensure!(
        moved.keys().map(String::as_str).eq(nodes) && moved.values().all(|r| r == "changed"),
        "every node changed: {rollout:#?}"
    );
    for node in nodes {
        ensure!(fleet.content_of(node) == "v2", "{node} runs v2");
    }
    ensure!(
        fleet.stable_revision("production")? == good.revision,
        "v2 is stable"
    );

    // A bad commit: the canary fails, goes back to v2, nobody else moves.
    let bad = fleet.commit_and_sync(&[("roles/web.toml", &fleet.web_role("v3", true))], "v3")?;
    ensure!(bad.accepted, "the bad commit validates: {bad:?}");
    let rollout = fleet.rollout_to("production", &bad.revision)?;
    let rollout = fleet.wait_for_state(&rollout, &["rolled_back"])?;
    let canary = &rollout.waves[0];
    ensure!(
        canary.name == "canary" && canary.nodes.len() == 1 && canary.nodes[0].result == "failed",
        "the canary failed: {rollout:#?}"
    );
    let canary_node = canary.nodes[0].node_id.clone();
    ensure!(
        rollout.rollback.len() == 1
            && rollout.rollback[0].node_id == canary_node
            && rollout.rollback[0].result == "changed",
        "the canary's rollback run is recorded: {rollout:#?}"
    );
    ensure!(
        fleet.content_of(&canary_node) == "v2",
        "the canary is back on v2"
    );
    let others: Vec<&str> = nodes
        .iter()
        .copied()
        .filter(|node| *node != canary_node)
        .collect();
    let results = outcomes(&rollout);
    for node in &others {
        ensure!(
            fleet.content_of(node) == "v2",
            "{node} never left v2: {}",
            fleet.content_of(node)
        );
        ensure!(
            results[*node] == "pending",
            "{node} was not moved: {rollout:#?}"
        );
    }
    ensure!(
        fleet.stable_revision("production")? == good.revision,
        "v2 stays stable"
    );
    fleet.server.stop()
}

#[test]
fn an_instance_enrolled_during_a_rollout_gets_the_stable_revision_until_it_is_promoted_then_is_asked_to_converge()
-> Result<()> {
    // After the canary, an hour's bake: the rollout is in progress for as
    // long as the test needs.
    let policy = "[rollout]\ncanary = 1\nbatch = \"\"\nbake = \"1h\"\ntimeout = \"60s\"\n";
    let mut fleet = Fleet::start(policy, "v1")?;
    fleet.enroll_daemons(&[("web-1", "role=web"), ("web-2", "role=web")], WEB_SCOPE)?;
    let stable = fleet.stable_revision("production")?;

    let commit =
        fleet.commit_and_sync(&[("roles/web.toml", &fleet.web_role("v2", false))], "v2")?;
    ensure!(commit.accepted, "{commit:?}");
    let rollout = fleet.rollout_to("production", &commit.revision)?;
    let rollout = fleet.wait_for_state(&rollout, &["baking"])?;

    // An instance boots: it is not in the plan, and gets the stable
    // revision.
    let token = fleet.server.token(WEB_SCOPE)?;
    let late = fleet.enroll(&token, "web-late", "role=web")?;
    let (code, output) = late.converge()?;
    ensure!(
        code == 2,
        "the first run changes its file: {code}\n{output}"
    );
    ensure!(
        fleet.content_of("web-late") == "v1",
        "a node enrolled during the rollout runs the stable revision: {:?}",
        fleet.content_of("web-late")
    );
    ensure!(
        fleet.stable_revision("production")? == stable,
        "the rollout is still in progress"
    );
    // From now on its daemon runs only when told (an hour's interval).
    let log = fleet.dir.path().join("web-late.log");
    fleet.daemons.push(late.start_daemon(&log)?);
    wait_until_polling_every(
        Duration::from_millis(300),
        Duration::from_secs(60),
        "the late node's daemon to hold its watch channel",
        || {
            let answer = fleet.noop_trigger(&["web-late"])?;
            Ok(answer
                .nodes
                .iter()
                .any(|n| n.node_id == "web-late" && n.result != "unreachable")
                .then_some(()))
        },
    )
    .with_context(|| fleet.daemon_logs())?;
    ensure!(
        fleet.content_of("web-late") == "v1",
        "still the stable revision"
    );

    fleet.control(&rollout, "promote")?;
    let rollout = fleet.wait_for_state(&rollout, &["promoted"])?;
    ensure!(
        !outcomes(&rollout).contains_key("web-late"),
        "the late node was never in the plan: {rollout:#?}"
    );
    for node in ["web-1", "web-2"] {
        ensure!(fleet.content_of(node) == "v2", "{node} runs v2");
    }
    ensure!(
        fleet.stable_revision("production")? == commit.revision,
        "the promoted commit is stable"
    );
    // The end of the rollout asks the node it did not move to converge:
    // it does not wait for its next pull.
    fleet.wait_for_content("web-late", "v2")?;
    fleet.server.stop()
}

#[test]
fn a_rollout_passes_pinned_nodes_by_and_unpin_brings_them_to_the_new_revision() -> Result<()> {
    let policy = "[rollout]\ncanary = 1\nbatch = \"\"\nbake = \"0s\"\ntimeout = \"60s\"\n";
    let mut fleet = Fleet::start(policy, "v1")?;
    fleet.enroll_daemons(
        &[
            ("web-1", "role=web,hold=yes"),
            ("web-2", "role=web,hold=no"),
            ("web-3", "role=web,hold=no"),
        ],
        &[("role", "web"), ("hold", "*")],
    )?;
    let selector = pb::Selector {
        tags: [("hold".to_string(), "yes".to_string())].into(),
    };
    let pin = pb::PinRequest {
        environment: String::new(),
        selector: Some(selector.clone()),
        revision: String::new(),
    };
    let pinned = fleet
        .server
        .call_admin(|mut admin| async move { admin.pin(pin).await })?;
    ensure!(pinned.nodes == ["web-1"], "{pinned:?}");
    ensure!(
        pinned.revision == fleet.stable_revision("production")?,
        "a pin without a revision holds the stable one: {pinned:?}"
    );

    let commit =
        fleet.commit_and_sync(&[("roles/web.toml", &fleet.web_role("v2", false))], "v2")?;
    ensure!(commit.accepted, "{commit:?}");
    let rollout = fleet.rollout_to("production", &commit.revision)?;
    let rollout = fleet.wait_for_state(&rollout, &["done"])?;
    let results = outcomes(&rollout);
    ensure!(
        rollout.pinned_nodes.contains(&"web-1".to_string())
            || results.get("web-1").map(String::as_str) == Some("pinned"),
        "the pinned node is passed by: {rollout:#?}"
    );
    ensure!(
        results.get("web-1").is_none_or(|result| result == "pinned"),
        "the pinned node did not run in a wave: {rollout:#?}"
    );
    for node in ["web-2", "web-3"] {
        ensure!(
            results.get(node).map(String::as_str) == Some("changed"),
            "{node} moved: {rollout:#?}"
        );
        ensure!(fleet.content_of(node) == "v2", "{node} runs v2");
    }
    ensure!(
        fleet.content_of("web-1") == "v1",
        "the pinned node keeps v1"
    );

    let unpin = pb::UnpinRequest {
        environment: String::new(),
        selector: Some(selector),
    };
    let released = fleet
        .server
        .call_admin(|mut admin| async move { admin.unpin(unpin).await })?;
    ensure!(released.nodes == ["web-1"], "{released:?}");
    // Released nodes are told to converge now.
    fleet.wait_for_content("web-1", "v2")?;
    fleet.server.stop()
}

#[test]
fn a_commit_on_a_branch_reaches_only_its_environment_and_a_refused_one_changes_nothing()
-> Result<()> {
    let environments = EnvironmentsConfig::new(
        vec![
            EnvironmentSpec::parse("prod=main").map_err(anyhow::Error::msg)?,
            EnvironmentSpec::parse("staging=staging").map_err(anyhow::Error::msg)?,
        ],
        None,
        "env".to_string(),
    )
    .map_err(anyhow::Error::msg)?;
    // staging starts as main; the test's commits go to staging.
    let mut fleet = Fleet::start_with(
        "",
        "v1",
        |git| git.run(&["checkout", "-q", "-b", "staging"]),
        |config| config.environments = Some(environments),
    )?;
    let scope = &[("role", "web"), ("env", "*")];
    let token = fleet.server.token(scope)?;
    let prod = fleet.enroll(&token, "prod-1", "role=web,env=prod")?;
    let staging = fleet.enroll(&token, "staging-1", "role=web,env=staging")?;
    for agent in [&prod, &staging] {
        let (code, output) = agent.converge()?;
        ensure!(code == 2, "{output}");
    }
    ensure!(fleet.content_of("prod-1") == "v1" && fleet.content_of("staging-1") == "v1");
    let before = fleet.environments()?;
    ensure!(
        before["prod"].is_default && before["prod"].branch == "main",
        "{before:#?}"
    );
    let main_revision = before["prod"].stable_revision.clone();

    // A commit on staging: only the staging node runs it.
    let commit = fleet.commit_and_sync(
        &[("roles/web.toml", &fleet.web_role("v2-staging", false))],
        "v2 on staging",
    )?;
    ensure!(commit.accepted, "{commit:?}");
    for agent in [&prod, &staging] {
        agent.converge()?;
    }
    ensure!(
        fleet.content_of("staging-1") == "v2-staging",
        "the staging node runs staging's commit: {:?}",
        fleet.content_of("staging-1")
    );
    ensure!(
        fleet.content_of("prod-1") == "v1",
        "the prod node does not: {:?}",
        fleet.content_of("prod-1")
    );
    let after = fleet.environments()?;
    ensure!(after["prod"].stable_revision == main_revision, "{after:#?}");
    let staging_revision = after["staging"].stable_revision.clone();
    ensure!(
        staging_revision != main_revision && !staging_revision.is_empty(),
        "{after:#?}"
    );

    // A commit that does not validate on staging: refused, and named.
    let refused = fleet.commit_and_sync(
        &[(
            "roles/web.toml",
            &format!("{}\n[[file]\n", fleet.web_role("v3-staging", false)),
        )],
        "broken on staging",
    )?;
    ensure!(
        !refused.accepted,
        "the broken commit is refused: {refused:?}"
    );
    ensure!(
        !refused.errors.is_empty()
            && refused
                .errors
                .iter()
                .all(|error| error.message.contains("environment staging")),
        "the refusal names the environment: {refused:?}"
    );
    for agent in [&prod, &staging] {
        let (code, output) = agent.converge()?;
        ensure!(code == 0, "nothing changes: {code}\n{output}");
    }
    ensure!(fleet.content_of("staging-1") == "v2-staging");
    ensure!(fleet.content_of("prod-1") == "v1");
    let last = fleet.environments()?;
    ensure!(
        last["prod"].stable_revision == main_revision
            && last["staging"].stable_revision == staging_revision,
        "neither environment moved: {last:#?}"
    );
    fleet.server.stop()
}
