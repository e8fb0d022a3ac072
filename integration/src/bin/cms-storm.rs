//! `cms-storm`: a boot storm against the real server.
//!
//! Starts `cms-server` as a child process (this binary again, in a hidden
//! `--serve-child` mode that runs the server's `run` in a process of its
//! own, so its peak memory is its own) on loopback with a fresh data
//! directory and a generated roles folder, then drives N simulated agents
//! over real mTLS, each with its own key, certificate and TCP connection:
//!
//! 1. enroll: every agent at once trades a token and its CSR for a
//!    certificate (keys are made before the clock starts, as each instance
//!    makes its own);
//! 2. first fetch: every agent connects with its certificate, gets its
//!    catalog (identical instances: one compile shared by all), fetches
//!    `--contents` file contents by hash, and reports its run; then it
//!    closes that connection and opens its watch channel, which it holds
//!    to the end, as the agent's daemon does;
//! 3. not modified: every agent connects again and makes `--rounds`
//!    `GetCatalog` calls with the catalog id it holds, answered
//!    `NotModified`;
//! 4. distinct compiles: every agent connects again and sends facts with
//!    its own hostname, which the templates read, so each needs a fresh
//!    compile of its own 50-resource catalog.
//!
//! Each phase starts when the previous one has finished for every agent.
//! It prints each phase's rate and latency, the server's peak RSS, and a
//! last line with one JSON object.
//!
//! `cargo run --release --bin cms-storm -- --agents 1000`

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cms_agent::client::{Connector, ServerAddress, WatchChannel, enroll};
use cms_agent::identity::{Identity, generate_key_and_csr};
use cms_proto::v1 as pb;
use tokio::sync::Semaphore;

/// The server's address as agent `i` reaches it: from its own loopback
/// address (127.0.1.0 to 127.0.255.255), as each instance has its own IP.
fn address_of(server: &ServerAddress, i: usize) -> ServerAddress {
    let mut address = server.clone();
    let host = 256 + i % (65_536 - 256);
    address.local_address = Some(std::net::IpAddr::from([
        127,
        0,
        (host >> 8) as u8,
        host as u8,
    ]));
    address
}

/// Resources in each catalog: one directory and this many files less one.
const RESOURCES: usize = 50;

struct Options {
    agents: usize,
    rounds: usize,
    contents: usize,
    concurrency: usize,
    file_limit: u64,
}

fn usage() -> &'static str {
    "usage: cms-storm --agents N [--rounds R] [--contents K] [--concurrency C]\n\
     \n  --agents N       simulated agents (default 100)\
     \n  --rounds R       NotModified rounds per agent (default 3)\
     \n  --contents K     file contents each agent fetches with GetContent (default 5)\
     \n  --concurrency C  agents in flight at once (default: all of them)"
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        agents: 100,
        rounds: 3,
        contents: 5,
        concurrency: 0,
        file_limit: 0,
    };
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let mut value = |name: &str| -> Result<usize> {
            let text = iter
                .next()
                .with_context(|| format!("{name} needs a value\n{}", usage()))?;
            text.parse()
                .with_context(|| format!("{name} {text}: expected a number\n{}", usage()))
        };
        match flag.as_str() {
            "--agents" => options.agents = value("--agents")?,
            "--rounds" => options.rounds = value("--rounds")?,
            "--contents" => options.contents = value("--contents")?,
            "--concurrency" => options.concurrency = value("--concurrency")?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{}", usage()),
        }
    }
    if options.agents == 0 {
        bail!("--agents must be at least 1");
    }
    if options.concurrency == 0 {
        options.concurrency = options.agents;
    }
    Ok(options)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve-child") {
        return serve_child(&args[1..]);
    }
    let options = parse_options(&args)?;
    let mut options = options;
    options.file_limit = raise_file_limit()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(storm(options))
}

/// 10,000 connections need 10,000 descriptors on each side: raise the soft
/// limit to the hard one (the child server inherits it), and return it.
fn raise_file_limit() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Agents in flight in the phases after the watch channels are open: each
/// simulated agent holds its channel's descriptor in this one process (a
/// real instance holds its own), so at most what the descriptor limit
/// leaves beside them connect at once; the others start as those finish.
fn in_flight_beside_watches(options: &Options) -> usize {
    let spare = (options.file_limit as usize).saturating_sub(options.agents + 512);
    options.concurrency.min(spare.max(1))
}

// ---- the server, in a child process ----

fn serve_child(args: &[String]) -> Result<()> {
    let [data, repo] = args else {
        bail!("--serve-child DATA REPO");
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(8192)?;
        let address = listener.local_addr()?;
        let mut config =
            cms_server::server::ServeConfig::new(PathBuf::from(data), repo.to_string());
        config.sync_interval = Duration::from_secs(3600);
        // Every simulated instance connects from 127.0.0.1, where a real
        // fleet has an address each: the per-address bounds, which exist to
        // stop many connections from one address, are lifted; every other
        // bound stays the default.
        config.connections.per_source_pending = usize::MAX;
        config.connections.per_source_unauthenticated = usize::MAX;
        println!("listening {address}");
        std::io::stdout().flush()?;
        // Stops when the parent closes stdin (or dies).
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = String::new();
                while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
            })
            .await;
        };
        cms_server::server::run(listener, None, config, stop).await
    })
}

struct ServerChild {
    child: Child,
    address: String,
}

impl ServerChild {
    fn start(data: &Path, repo: &Path) -> Result<ServerChild> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve-child")
            .arg(data)
            .arg(repo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("Failed to start the server child process")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("the server child said {line:?}"))?
            .to_string();
        Ok(ServerChild { child, address })
    }

    /// The peak resident set size so far (VmHWM), in MiB.
    fn peak_rss_mb(&self) -> f64 {
        proc_status_kb(self.child.id(), "VmHWM:") as f64 / 1024.0
    }

    fn rss_mb(&self) -> f64 {
        proc_status_kb(self.child.id(), "VmRSS:") as f64 / 1024.0
    }

    /// CPU seconds the server has used so far (user and system).
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

/// User and system CPU seconds from a `/proc/PID/stat` file: fields 14 and
/// 15, counted after the command name, which may hold spaces.
fn cpu_seconds(stat_path: &str) -> f64 {
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    std::fs::read_to_string(stat_path)
        .ok()
        .and_then(|stat| {
            let after_name = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_second)
        })
        .unwrap_or(0.0)
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// A role of `RESOURCES` resources whose templates read the node's
/// hostname fact: identical instances share one catalog, instances with
/// their own hostnames each need their own.
fn write_roles(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("roles"))?;
    std::fs::create_dir_all(dir.join("templates"))?;
    std::fs::write(dir.join("cms.toml"), "[hierarchy]\nlayers = [\"common\"]\n")?;
    let mut role =
        String::from("[match]\nrole = \"web\"\n\n[[directory]]\npath = \"/srv/storm\"\n");
    for i in 1..RESOURCES {
        std::fs::write(
            dir.join(format!("templates/f{i}.hbs")),
            format!(
                "# file {i} of the {{{{tag.role}}}} role on {{{{fact.hostname}}}}\nworkers = {{{{fact.cpus}}}}\nline = \"{}\"\n",
                "x".repeat(200)
            ),
        )?;
        role.push_str(&format!(
            "\n[[file]]\npath = \"/srv/storm/f{i}.conf\"\ntemplate = \"f{i}.hbs\"\nrequire = [\"directory:/srv/storm\"]\n"
        ));
    }
    std::fs::write(dir.join("roles/web.toml"), role)?;
    Ok(())
}

// ---- measuring ----

#[derive(Default)]
struct Phase {
    latencies_us: std::sync::Mutex<Vec<u64>>,
    failures: AtomicU64,
    not_modified: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Phase {
    fn record<T, E: std::fmt::Display>(&self, started: Instant, result: Result<T, E>) -> Option<T> {
        let elapsed = started.elapsed().as_micros() as u64;
        match result {
            Ok(value) => {
                self.latencies_us.lock().expect("lock").push(elapsed);
                Some(value)
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("lock");
                if first.is_none() {
                    *first = Some(error.to_string());
                }
                None
            }
        }
    }
}

struct PhaseResult {
    name: &'static str,
    requests: usize,
    failures: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
    not_modified: u64,
    server_rss_mb: f64,
    /// CPU seconds the server and this process (the simulated agents) used
    /// during the phase: on two shared cores, what the agents use is not
    /// the server's to use.
    server_cpu_s: f64,
    client_cpu_s: f64,
    first_error: Option<String>,
}

impl PhaseResult {
    fn per_second(&self, count: f64) -> f64 {
        count / self.seconds.max(1e-9)
    }
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[index] as f64 / 1000.0
}

async fn run_phase<F, Fut>(
    name: &'static str,
    agents: usize,
    concurrency: usize,
    server: &ServerChild,
    work: F,
) -> PhaseResult
where
    F: Fn(usize, Arc<Phase>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let phase = Arc::new(Phase::default());
    let permits = Arc::new(Semaphore::new(concurrency));
    let server_cpu_before = server.cpu_seconds();
    let own_cpu_before = cpu_seconds("/proc/self/stat");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for agent in 0..agents {
        let permit = permits.clone().acquire_owned().await.expect("open");
        let future = work(agent, phase.clone());
        tasks.spawn(async move {
            future.await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies_us = std::mem::take(&mut *phase.latencies_us.lock().expect("lock"));
    latencies_us.sort_unstable();
    let failures = phase.failures.load(Ordering::Relaxed);
    let result = PhaseResult {
        name,
        requests: latencies_us.len() + failures as usize,
        failures,
        seconds,
        latencies_us,
        not_modified: phase.not_modified.load(Ordering::Relaxed),
        server_rss_mb: server.rss_mb(),
        server_cpu_s: server.cpu_seconds() - server_cpu_before,
        client_cpu_s: cpu_seconds("/proc/self/stat") - own_cpu_before,
        first_error: phase.first_error.lock().expect("lock").clone(),
    };
    println!(
        "{:<18} {:>7} requests in {:>7.2} s: {:>8.0}/s, p50 {:>8.1} ms, p99 {:>8.1} ms, {} failures, server RSS {:.0} MB, CPU s server {:.1} / agents {:.1}",
        result.name,
        result.requests,
        result.seconds,
        result.per_second(result.requests as f64),
        percentile_ms(&result.latencies_us, 0.50),
        percentile_ms(&result.latencies_us, 0.99),
        result.failures,
        result.server_rss_mb,
        result.server_cpu_s,
        result.client_cpu_s,
    );
    if let Some(error) = &result.first_error {
        println!("{:<18} first failure: {error}", "");
    }
    result
}

// ---- the agents ----

/// A run's connection, timed as one request.
async fn connect_timed(
    phase: &Phase,
    connector: &Connector,
) -> Option<pb::agent_client::AgentClient<tonic::transport::Channel>> {
    let started = Instant::now();
    phase.record(
        started,
        connector
            .connect()
            .await
            .map_err(|e| format!("connect: {e:#}")),
    )
}

/// One `GetCatalog`, timed as one request; its answer when it succeeded.
async fn get_catalog_timed(
    phase: &Phase,
    client: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    facts_json: String,
    have_catalog_id: String,
) -> Option<Option<pb::catalog_response::Result>> {
    let started = Instant::now();
    let answer = client
        .get_catalog(pb::CatalogRequest {
            facts_json,
            have_catalog_id,
        })
        .await
        .map(|answer| answer.into_inner().result)
        .map_err(|s| format!("GetCatalog: {}", s.message()));
    phase.record(started, answer)
}

struct Agent {
    /// Made once after enrolling, as the daemon keeps one: its later
    /// connections resume their TLS session.
    connector: Option<Connector>,
    /// Held from the first run to the end, as the agent's daemon holds it.
    watch: Option<WatchChannel>,
    catalog_id: String,
}

fn facts(hostname: &str) -> String {
    serde_json::json!({
        "hostname": hostname,
        "os": "debian",
        "os_family": "debian",
        "architecture": "x86_64",
        "cpus": 2,
        "memory_mb": 2048,
    })
    .to_string()
}

async fn storm(options: Options) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scratch = tempfile::tempdir()?;
    let repo = scratch.path().join("roles");
    write_roles(&repo)?;
    let data = scratch.path().join("server");
    let server = ServerChild::start(&data, &repo)?;
    let address = ServerAddress::parse(&server.address)?;
    let admin_deadline = Instant::now() + Duration::from_secs(30);
    let mut admin = loop {
        match cms_server::admin::connect(&server.address, &data).await {
            Ok(admin) => break admin,
            Err(_) if Instant::now() < admin_deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error),
        }
    };
    let synced = admin.sync(pb::SyncRequest {}).await?.into_inner();
    if !synced.accepted {
        bail!("the generated roles do not validate: {:?}", synced.errors);
    }
    let token = admin
        .create_token(pb::CreateTokenRequest {
            scope: [("role".to_string(), "*".to_string())].into(),
            ttl_seconds: 3600,
            // One use per simulated agent: tokens are single use by default.
            uses: u32::try_from(options.agents).unwrap_or(u32::MAX),
        })
        .await?
        .into_inner()
        .token;
    let ca_pem = std::fs::read_to_string(data.join("admin/ca.pem"))?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "cms-storm: {} agents, {} not-modified rounds, {} contents each, {} in flight; server pid {} at {}; load average before: {}",
        options.agents,
        options.rounds,
        options.contents,
        options.concurrency,
        server.child.id(),
        server.address,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    // Each instance makes its own key; made here before the clock starts.
    let keys: Vec<_> = (0..options.agents)
        .map(|i| generate_key_and_csr(&format!("storm-{i}")))
        .collect::<Result<_, _>>()?;
    let agents: Arc<Vec<tokio::sync::Mutex<Agent>>> = Arc::new(
        (0..options.agents)
            .map(|_| {
                tokio::sync::Mutex::new(Agent {
                    connector: None,
                    watch: None,
                    catalog_id: String::new(),
                })
            })
            .collect(),
    );
    let keys = Arc::new(keys);
    let mut phases = Vec::new();

    // 1. Enrollment.
    phases.push(
        run_phase(
            "enroll",
            options.agents,
            options.concurrency,
            &server,
            |i, phase| {
                let (agents, keys, address, ca_pem, token) = (
                    agents.clone(),
                    keys.clone(),
                    address_of(&address, i),
                    ca_pem.clone(),
                    token.clone(),
                );
                async move {
                    let key = &keys[i];
                    let started = Instant::now();
                    let response = enroll(
                        &address,
                        &ca_pem,
                        pb::EnrollRequest {
                            token,
                            csr_pem: key.csr_pem.clone(),
                            tags: [("role".to_string(), "web".to_string())].into(),
                            node_name: format!("storm-{i:05}"),
                            identity: None,
                        },
                    )
                    .await;
                    if let Some(response) =
                        phase.record(started, response.map_err(|e| format!("{e:#}")))
                    {
                        let identity = Identity {
                            private_key_pem: key.private_key_pem.clone(),
                            certificate_pem: response.certificate_pem,
                            ca_certificate_pem: response.ca_certificate_pem,
                        };
                        match Connector::new(&address, &identity) {
                            Ok(connector) => agents[i].lock().await.connector = Some(connector),
                            Err(error) => {
                                phase.record::<(), _>(started, Err(format!("{error:#}")));
                            }
                        }
                    }
                }
            },
        )
        .await,
    );

    // 2. First fetch: connect, catalog, contents, report.
    let contents = options.contents;
    phases.push(
        run_phase(
            "catalog+contents",
            options.agents,
            options.concurrency,
            &server,
            |i, phase| {
                let agents = agents.clone();
                async move {
                    let mut agent = agents[i].lock().await;
                    let Some(connector) = agent.connector.clone() else {
                        return;
                    };
                    let Some(mut client) = connect_timed(&phase, &connector).await else {
                        return;
                    };
                    let Some(answer) =
                        get_catalog_timed(&phase, &mut client, facts("storm"), String::new()).await
                    else {
                        return;
                    };
                    // A failure found after the answer came; its time is
                    // not a latency.
                    let started = Instant::now();
                    let Some(pb::catalog_response::Result::Catalog(catalog)) = answer else {
                        phase.record::<(), _>(started, Err("GetCatalog: no catalog"));
                        return;
                    };
                    let decoded =
                        match cms_roles::Catalog::from_canonical_bytes(&catalog.canonical_json) {
                            Ok(decoded) => decoded,
                            Err(error) => {
                                phase.record::<(), _>(started, Err(format!("catalog: {error}")));
                                return;
                            }
                        };
                    for hash in decoded.contents.keys().take(contents) {
                        let started = Instant::now();
                        let fetched = async {
                            let mut stream = client
                                .get_content(pb::ContentRequest {
                                    sha256: hash.clone(),
                                })
                                .await?
                                .into_inner();
                            let mut bytes = 0;
                            while let Some(chunk) = stream.message().await? {
                                bytes += chunk.data.len();
                            }
                            Ok::<usize, tonic::Status>(bytes)
                        }
                        .await
                        .map_err(|s| format!("GetContent: {}", s.message()));
                        phase.record(started, fetched);
                    }
                    let report = pb::RunReport {
                        run_id: format!("storm-{i}-1"),
                        catalog_id: decoded.catalog_id.clone(),
                        revision: catalog.revision.clone(),
                        started_at_unix_ms: 0,
                        duration_ms: 1,
                        noop: false,
                        resources: decoded
                            .resources
                            .iter()
                            .map(|r| pb::ResourceResult {
                                reference: r.reference.clone(),
                                status: pb::ResourceStatus::Changed as i32,
                                ..Default::default()
                            })
                            .collect(),
                        trigger_id: String::new(),
                        note: String::new(),
                    };
                    let started = Instant::now();
                    let acknowledged = client
                        .report(report)
                        .await
                        .map_err(|s| format!("Report: {}", s.message()));
                    phase.record(started, acknowledged);
                    agent.catalog_id = decoded.catalog_id;
                    // The run's connection closes; the watch channel stays.
                    drop(client);
                    let started = Instant::now();
                    agent.watch = phase.record(
                        started,
                        connector
                            .open_watch()
                            .await
                            .map_err(|e| format!("watch: {e:#}")),
                    );
                }
            },
        )
        .await,
    );

    let later_in_flight = in_flight_beside_watches(&options);
    if later_in_flight < options.concurrency {
        println!(
            "phases 3 and 4: at most {later_in_flight} agents in flight (the descriptor limit {} less the watch channels)",
            options.file_limit
        );
    }
    // 3. Not modified.
    let rounds = options.rounds;
    phases.push(
        run_phase(
            "not-modified",
            options.agents,
            later_in_flight,
            &server,
            |i, phase| {
                let agents = agents.clone();
                async move {
                    let agent = agents[i].lock().await;
                    let have = agent.catalog_id.clone();
                    let Some(connector) = agent.connector.clone() else {
                        return;
                    };
                    let Some(mut client) = connect_timed(&phase, &connector).await else {
                        return;
                    };
                    for _ in 0..rounds {
                        let answer =
                            get_catalog_timed(&phase, &mut client, facts("storm"), have.clone())
                                .await;
                        if let Some(Some(pb::catalog_response::Result::NotModified(_))) = answer {
                            phase.not_modified.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            },
        )
        .await,
    );

    // 4. Distinct catalogs: each agent's own hostname.
    let distinct = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    phases.push(
        run_phase(
            "distinct-compiles",
            options.agents,
            later_in_flight,
            &server,
            |i, phase| {
                let (agents, distinct) = (agents.clone(), distinct.clone());
                async move {
                    let agent = agents[i].lock().await;
                    let have = agent.catalog_id.clone();
                    let Some(connector) = agent.connector.clone() else {
                        return;
                    };
                    let Some(mut client) = connect_timed(&phase, &connector).await else {
                        return;
                    };
                    let hostname = format!("storm-{i:05}.internal");
                    let answer =
                        get_catalog_timed(&phase, &mut client, facts(&hostname), have).await;
                    if let Some(Some(pb::catalog_response::Result::Catalog(catalog))) = answer {
                        distinct.lock().expect("lock").insert(catalog.catalog_id);
                    }
                }
            },
        )
        .await,
    );

    let peak = server.peak_rss_mb();
    // Every held watch channel must have been served: each has its first
    // heartbeat waiting (read after the peak, outside any phase).
    let mut watching = 0usize;
    for agent in agents.iter() {
        let mut agent = agent.lock().await;
        if let Some(channel) = agent.watch.as_mut()
            && let Ok(Ok(event)) =
                tokio::time::timeout(Duration::from_secs(5), channel.next_event()).await
            && matches!(event.event, Some(pb::watch_event::Event::Heartbeat(_)))
        {
            watching += 1;
        }
    }
    println!(
        "watch channels held to the end and served: {watching} of {}",
        options.agents
    );
    let distinct_catalogs = distinct.lock().expect("lock").len();
    let mut all: Vec<u64> = phases
        .iter()
        .flat_map(|p| p.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let requests: usize = phases.iter().map(|p| p.requests).sum();
    let failures: u64 = phases.iter().map(|p| p.failures).sum();
    let seconds: f64 = phases.iter().map(|p| p.seconds).sum();
    let enroll = &phases[0];
    let not_modified = &phases[2];
    let compiles = &phases[3];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "total: {requests} requests in {seconds:.2} s, {failures} failures; {distinct_catalogs} distinct catalogs compiled in phase 4; server peak RSS {peak:.0} MB; load average after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let json = serde_json::json!({
        "agents": options.agents,
        "failures": failures,
        "requests": requests,
        "duration_s": round(seconds),
        "requests_per_s": round(requests as f64 / seconds.max(1e-9)),
        "p50_ms": round(percentile_ms(&all, 0.50)),
        "p99_ms": round(percentile_ms(&all, 0.99)),
        "not_modified_per_s": round(not_modified.per_second(not_modified.not_modified as f64)),
        "enrollments_per_s": round(enroll.per_second((enroll.requests as u64 - enroll.failures) as f64)),
        "distinct_compiles_per_s": round(compiles.per_second(distinct_catalogs as f64)),
        "server_peak_rss_mb": round(peak),
        "watch_channels": watching,
        "phases": phases.iter().map(|p| serde_json::json!({
            "phase": p.name,
            "requests": p.requests,
            "failures": p.failures,
            "seconds": round(p.seconds),
            "p50_ms": round(percentile_ms(&p.latencies_us, 0.50)),
            "p99_ms": round(percentile_ms(&p.latencies_us, 0.99)),
            "server_rss_mb": round(p.server_rss_mb),
            "server_cpu_s": round(p.server_cpu_s),
            "agents_cpu_s": round(p.client_cpu_s),
        })).collect::<Vec<_>>(),
    });
    drop(agents);
    drop(server);
    println!("{json}");
    Ok(())
}
