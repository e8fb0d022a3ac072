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
//! With `--store postgres` the servers share a PostgreSQL database that
//! cms-storm starts itself (Debian's binaries, `initdb` into a temporary
//! folder, as the tests do); `--replicas N` runs N server processes on it
//! behind a round-robin TCP load balancer of its own, through which every
//! agent connects. `--kill-one` SIGKILLs one replica when half of the
//! agents have reported in phase 2: each simulated agent retries a failed
//! step through the load balancer (as the agent's daemon does), a run
//! counts as failed only when every try failed, and at the end the reports
//! the servers acknowledged are counted in the database (`lost_reports`).
//!
//! `cargo run --release --bin cms-storm -- --agents 1000`
//! `cargo run --release --bin cms-storm -- --agents 2000 --store postgres --replicas 3 --kill-one`

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
    /// PostgreSQL instead of sled.
    postgres: bool,
    replicas: usize,
    kill_one: bool,
    /// Phases 1 and 2 only (enrollment and first runs).
    first_runs_only: bool,
}

fn usage() -> &'static str {
    "usage: cms-storm --agents N [--rounds R] [--contents K] [--concurrency C] [--store sled|postgres] [--replicas N] [--kill-one] [--first-runs-only]\n\
     \n  --agents N       simulated agents (default 100)\
     \n  --rounds R       NotModified rounds per agent (default 3)\
     \n  --contents K     file contents each agent fetches with GetContent (default 5)\
     \n  --concurrency C  agents in flight at once (default: all of them)\
     \n  --store S        sled (default) or postgres (a PostgreSQL started for the run)\
     \n  --replicas N     server processes behind a TCP load balancer (default 1; more need postgres)\
     \n  --kill-one       SIGKILL one replica when half the agents have reported (needs 2 replicas)\
     \n  --first-runs-only  stop after enrollment and the first runs (phases 1 and 2)"
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        agents: 100,
        rounds: 3,
        contents: 5,
        concurrency: 0,
        file_limit: 0,
        postgres: false,
        replicas: 1,
        kill_one: false,
        first_runs_only: false,
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
            "--replicas" => options.replicas = value("--replicas")?,
            "--kill-one" => options.kill_one = true,
            "--first-runs-only" => options.first_runs_only = true,
            "--store" => match iter.next().map(String::as_str) {
                Some("sled") => options.postgres = false,
                Some("postgres") => options.postgres = true,
                other => bail!(
                    "--store {}: expected sled or postgres\n{}",
                    other.unwrap_or(""),
                    usage()
                ),
            },
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
    if options.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if options.replicas > 1 && !options.postgres {
        bail!(
            "--replicas {} needs --store postgres: replicas share their store",
            options.replicas
        );
    }
    if options.kill_one && options.replicas < 2 {
        bail!("--kill-one needs --replicas 2 or more: the others carry on");
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
    let (data, repo, store) = match args {
        [data, repo] => (data, repo, None),
        [data, repo, url, key] => (data, repo, Some((url.clone(), PathBuf::from(key)))),
        _ => bail!("--serve-child DATA REPO [POSTGRES_URL KEY_FILE]"),
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
        if let Some((url, key_file)) = store {
            config.store = cms_server::store::StoreConfig {
                location: Some(cms_server::store::StoreLocation::Postgres(url)),
                key_file: Some(key_file),
                pool_size: None,
            };
        }
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
    fn start(data: &Path, repo: &Path, store: Option<&(String, PathBuf)>) -> Result<ServerChild> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("--serve-child").arg(data).arg(repo);
        if let Some((url, key_file)) = store {
            command.arg(url).arg(key_file);
        }
        let mut child = command
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

/// The server processes of a run: one, or replicas behind the balancer.
struct Servers {
    children: Vec<ServerChild>,
    /// CPU seconds of the killed replica when it was killed.
    killed_cpu_s: std::sync::Mutex<f64>,
    killed: std::sync::atomic::AtomicBool,
}

impl Servers {
    fn cpu_seconds(&self) -> f64 {
        let alive: f64 = self
            .children
            .iter()
            .enumerate()
            .filter(|(i, _)| !(*i == KILLED && self.killed.load(Ordering::SeqCst)))
            .map(|(_, child)| child.cpu_seconds())
            .sum();
        alive + *self.killed_cpu_s.lock().expect("lock")
    }

    fn rss_mb(&self) -> f64 {
        self.children.iter().map(ServerChild::rss_mb).sum()
    }

    fn peak_rss_mb(&self) -> f64 {
        self.children
            .iter()
            .map(ServerChild::peak_rss_mb)
            .fold(0.0, f64::max)
    }

    /// SIGKILLs replica [`KILLED`], once.
    fn kill_one(&self) {
        if self.killed.swap(true, Ordering::SeqCst) {
            return;
        }
        let child = &self.children[KILLED];
        *self.killed_cpu_s.lock().expect("lock") = child.cpu_seconds();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        println!(
            "killed replica {KILLED} (pid {}, {}) with SIGKILL",
            child.child.id(),
            child.address
        );
    }
}

/// The replica `--kill-one` kills: not the first, whose data directory
/// holds the admin credential the run uses.
const KILLED: usize = 1;

/// A round-robin TCP load balancer on a loopback port, on this process's
/// runtime: each connection goes to the next replica that accepts one, as
/// an NLB with health checks does, and is closed when that replica goes.
async fn balance(listener: tokio::net::TcpListener, backends: Vec<std::net::SocketAddr>) {
    let next = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let (backends, next) = (backends.clone(), next.clone());
        tokio::spawn(async move {
            for _ in 0..backends.len() {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize % backends.len();
                if let Ok(Ok(mut server)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(backends[index]),
                )
                .await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
            }
        });
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
    // A git repository, as the team's is: replicas that follow the leader
    // load the commit it decided from their own mirror of it.
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=cms-storm",
            "-c",
            "user.email=storm@localhost",
            "commit",
            "-q",
            "-m",
            "storm roles",
        ],
    ] {
        let status = Command::new("git").args(args).current_dir(dir).status()?;
        if !status.success() {
            bail!("git {} failed in {}", args.join(" "), dir.display());
        }
    }
    Ok(())
}

// ---- measuring ----

#[derive(Default)]
struct Phase {
    latencies_us: std::sync::Mutex<Vec<u64>>,
    failures: AtomicU64,
    /// Steps that failed and were tried again (not failures).
    retries: AtomicU64,
    not_modified: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Phase {
    /// The latency of a request that succeeded.
    fn latency(&self, started: Instant) {
        self.latencies_us
            .lock()
            .expect("lock")
            .push(started.elapsed().as_micros() as u64);
    }

    /// One try of a step: a failure counts only on the last try, before
    /// that it is a retry.
    fn attempt<T, E: std::fmt::Display>(
        &self,
        started: Instant,
        result: Result<T, E>,
        last: bool,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(_) if !last => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(error) => self.record::<T, _>(started, Err(error)),
        }
    }

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
    retries: u64,
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
    server: &Servers,
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
        retries: phase.retries.load(Ordering::Relaxed),
        seconds,
        latencies_us,
        not_modified: phase.not_modified.load(Ordering::Relaxed),
        server_rss_mb: server.rss_mb(),
        server_cpu_s: (server.cpu_seconds() - server_cpu_before).max(0.0),
        client_cpu_s: cpu_seconds("/proc/self/stat") - own_cpu_before,
        first_error: phase.first_error.lock().expect("lock").clone(),
    };
    println!(
        "{:<18} {:>7} requests in {:>7.2} s: {:>8.0}/s, p50 {:>8.1} ms, p99 {:>8.1} ms, {} failures, {} retries, server RSS {:.0} MB, CPU s server {:.1} / agents {:.1}",
        result.name,
        result.requests,
        result.seconds,
        result.per_second(result.requests as f64),
        percentile_ms(&result.latencies_us, 0.50),
        percentile_ms(&result.latencies_us, 0.99),
        result.failures,
        result.retries,
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

/// One `GetCatalog`, on `client` or a new connection (through the
/// balancer), tried again on a new connection when it fails; its answer.
async fn catalog_with_retries(
    phase: &Phase,
    connector: &Connector,
    client: &mut Option<pb::agent_client::AgentClient<tonic::transport::Channel>>,
    facts_json: &str,
    have_catalog_id: &str,
) -> Option<Option<pb::catalog_response::Result>> {
    for attempt in 1..=TRIES {
        let last = attempt == TRIES;
        let connection = match client.take() {
            Some(connection) => Some(connection),
            None => {
                let started = Instant::now();
                let connected = connector
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e:#}"));
                let connected = phase.attempt(started, connected, last);
                if connected.is_some() {
                    phase.latency(started);
                }
                connected
            }
        };
        let Some(mut connection) = connection else {
            backoff(attempt).await;
            continue;
        };
        let started = Instant::now();
        let answer = connection
            .get_catalog(pb::CatalogRequest {
                facts_json: facts_json.to_string(),
                have_catalog_id: have_catalog_id.to_string(),
                trigger_id: String::new(),
            })
            .await
            .map(|answer| answer.into_inner().result)
            .map_err(|s| format!("GetCatalog: {}", s.message()));
        if let Some(answer) = phase.attempt(started, answer, last) {
            phase.latency(started);
            *client = Some(connection);
            return Some(answer);
        }
        backoff(attempt).await;
    }
    None
}

/// A step that failed and will be tried again waits a little longer each
/// time, as the agent's daemon does.
async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
}

/// An agent's first run: connect, get the catalog, fetch `contents` file
/// contents, report. The catalog id when the server acknowledged the
/// report; the first error otherwise. Each request's latency is recorded.
async fn first_run(
    phase: &Phase,
    connector: &Connector,
    i: usize,
    contents: usize,
) -> Result<String, String> {
    let timed = |started: Instant| {
        phase
            .latencies_us
            .lock()
            .expect("lock")
            .push(started.elapsed().as_micros() as u64);
    };
    let started = Instant::now();
    let mut client = connector
        .connect()
        .await
        .map_err(|e| format!("connect: {e:#}"))?;
    timed(started);
    let started = Instant::now();
    let answer = client
        .get_catalog(pb::CatalogRequest {
            facts_json: facts("storm"),
            have_catalog_id: String::new(),
            trigger_id: String::new(),
        })
        .await
        .map_err(|s| format!("GetCatalog: {}", s.message()))?
        .into_inner()
        .result;
    timed(started);
    let Some(pb::catalog_response::Result::Catalog(catalog)) = answer else {
        return Err("GetCatalog: no catalog".into());
    };
    let decoded = cms_roles::Catalog::from_canonical_bytes(&catalog.canonical_json)
        .map_err(|e| format!("catalog: {e}"))?;
    for hash in decoded.contents.keys().take(contents) {
        let started = Instant::now();
        let mut stream = client
            .get_content(pb::ContentRequest {
                sha256: hash.clone(),
            })
            .await
            .map_err(|s| format!("GetContent: {}", s.message()))?
            .into_inner();
        while stream
            .message()
            .await
            .map_err(|s| format!("GetContent: {}", s.message()))?
            .is_some()
        {}
        timed(started);
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
    client
        .report(report)
        .await
        .map_err(|s| format!("Report: {}", s.message()))?;
    timed(started);
    Ok(decoded.catalog_id)
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

/// The admin client of a server, once its admin credential exists.
async fn connect_admin(
    address: &str,
    data: &Path,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cms_server::admin::connect(address, data).await {
            Ok(admin) => return Ok(admin),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// How many times a simulated agent tries a step that failed (a replica
/// killed under it), through the load balancer, before its run counts as
/// failed; the daemon retries much longer.
const TRIES: u32 = 6;

async fn storm(options: Options) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scratch = tempfile::tempdir()?;
    let repo = scratch.path().join("roles");
    write_roles(&repo)?;
    // The shared database, for --store postgres: started for the run.
    let postgres = if options.postgres {
        Some(cms_integration::PostgresServer::start()?)
    } else {
        None
    };
    let store = match &postgres {
        Some(postgres) => {
            let url = postgres.create_database()?;
            let key_file = scratch.path().join("store.key");
            std::fs::write(&key_file, cms_server::store::StoreKey::generate_text())?;
            std::fs::set_permissions(
                &key_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            Some((url, key_file))
        }
        None => None,
    };
    // Replica 0 first: it makes the CA the others then find in the store.
    let data = scratch.path().join("server");
    let mut children = vec![ServerChild::start(&data, &repo, store.as_ref())?];
    let mut admins = vec![connect_admin(&children[0].address, &data).await?];
    if options.replicas > 1 {
        // Replica 0 takes the leader's lock (tried every 2 s) and decides
        // the first commit before the others start, as a rolling deploy
        // brings replicas up one after another.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let synced = admins[0].sync(pb::SyncRequest {}).await?.into_inner();
        if !synced.accepted {
            bail!("the generated roles do not validate: {:?}", synced.errors);
        }
    }
    for i in 1..options.replicas {
        let replica_data = scratch.path().join(format!("server-{i}"));
        let child = ServerChild::start(&replica_data, &repo, store.as_ref())?;
        // One operator credential for every replica: the first's.
        admins.push(connect_admin(&child.address, &data).await?);
        children.push(child);
    }
    let servers = Arc::new(Servers {
        children,
        killed_cpu_s: std::sync::Mutex::new(0.0),
        killed: std::sync::atomic::AtomicBool::new(false),
    });
    // Every replica syncs the roles repository itself, and the storm starts
    // once each serves a revision (a follower serves what the leader
    // decided, once one leads), as a load balancer's readiness check would.
    for admin in &mut admins {
        let synced = admin.sync(pb::SyncRequest {}).await?.into_inner();
        if !synced.accepted {
            bail!("the generated roles do not validate: {:?}", synced.errors);
        }
    }
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    for (i, admin) in admins.iter_mut().enumerate() {
        loop {
            let serving = admin
                .list_environments(pb::ListEnvironmentsRequest {})
                .await?
                .into_inner()
                .environments
                .iter()
                .all(|environment| !environment.stable_revision.is_empty());
            if serving {
                break;
            }
            if Instant::now() > ready_deadline {
                bail!("replica {i} serves no revision a minute after its sync");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            admin.sync(pb::SyncRequest {}).await?;
        }
    }
    let server_address = if options.replicas > 1 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let balancer = listener.local_addr()?.to_string();
        let backends = servers
            .children
            .iter()
            .map(|child| child.address.parse())
            .collect::<Result<Vec<std::net::SocketAddr>, _>>()?;
        tokio::spawn(balance(listener, backends));
        balancer
    } else {
        servers.children[0].address.clone()
    };
    let address = ServerAddress::parse(&server_address)?;
    let token = admins[0]
        .create_token(pb::CreateTokenRequest {
            scope: [("role".to_string(), "*".to_string())].into(),
            ttl_seconds: 3600,
            // One use per simulated agent: tokens are single use by default.
            // Twice over, for enrollments tried again after a replica died.
            uses: u32::try_from(options.agents * 2).unwrap_or(u32::MAX),
        })
        .await?
        .into_inner()
        .token;
    let ca_pem = std::fs::read_to_string(data.join("admin/ca.pem"))?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "cms-storm: {} agents, {} not-modified rounds, {} contents each, {} in flight; store {}, {} server process(es) (pids {}) at {}; load average before: {}",
        options.agents,
        options.rounds,
        options.contents,
        options.concurrency,
        if options.postgres { "postgres" } else { "sled" },
        options.replicas,
        servers
            .children
            .iter()
            .map(|c| c.child.id().to_string())
            .collect::<Vec<_>>()
            .join(","),
        server_address,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let acknowledged = Arc::new(AtomicU64::new(0));

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
            &servers,
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
                    for attempt in 1..=TRIES {
                        let started = Instant::now();
                        let enrolled = enroll(
                            &address,
                            &ca_pem,
                            pb::EnrollRequest {
                                token: token.clone(),
                                csr_pem: key.csr_pem.clone(),
                                tags: [("role".to_string(), "web".to_string())].into(),
                                node_name: format!("storm-{i:05}"),
                                identity: None,
                            },
                        )
                        .await
                        .map_err(|e| format!("{e:#}"))
                        .and_then(|response| {
                            let identity = Identity {
                                private_key_pem: key.private_key_pem.clone(),
                                certificate_pem: response.certificate_pem,
                                ca_certificate_pem: response.ca_certificate_pem,
                            };
                            Connector::new(&address, &identity).map_err(|e| format!("{e:#}"))
                        });
                        match phase.attempt(started, enrolled, attempt == TRIES) {
                            Some(connector) => {
                                phase.latency(started);
                                agents[i].lock().await.connector = Some(connector);
                                return;
                            }
                            None if attempt < TRIES => backoff(attempt).await,
                            None => {}
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
            &servers,
            |i, phase| {
                let (agents, acknowledged, servers) =
                    (agents.clone(), acknowledged.clone(), servers.clone());
                let (kill_at, agents_count) = (options.kill_one, options.agents);
                async move {
                    let mut agent = agents[i].lock().await;
                    let Some(connector) = agent.connector.clone() else {
                        return;
                    };
                    for attempt in 1..=TRIES {
                        let started = Instant::now();
                        let run = first_run(&phase, &connector, i, contents).await;
                        match phase.attempt(started, run, attempt == TRIES) {
                            Some(catalog_id) => {
                                agent.catalog_id = catalog_id;
                                let acked = acknowledged.fetch_add(1, Ordering::SeqCst) + 1;
                                if kill_at && acked as usize == agents_count / 2 {
                                    servers.kill_one();
                                }
                                break;
                            }
                            None if attempt < TRIES => backoff(attempt).await,
                            None => return,
                        }
                    }
                    // The run's connection closed; the watch channel stays
                    // (an agent whose replica dies opens it again later).
                    for attempt in 1..=TRIES {
                        let started = Instant::now();
                        let opened = connector
                            .open_watch()
                            .await
                            .map_err(|e| format!("watch: {e:#}"));
                        if let Some(channel) = phase.attempt(started, opened, attempt == TRIES) {
                            phase
                                .latencies_us
                                .lock()
                                .expect("lock")
                                .push(started.elapsed().as_micros() as u64);
                            agent.watch = Some(channel);
                            break;
                        }
                        backoff(attempt).await;
                    }
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
    // Phases 3 and 4 with no agent when only the first runs are asked for.
    let later_agents = if options.first_runs_only {
        0
    } else {
        options.agents
    };
    // 3. Not modified.
    let rounds = options.rounds;
    phases.push(
        run_phase(
            "not-modified",
            later_agents,
            later_in_flight,
            &servers,
            |i, phase| {
                let agents = agents.clone();
                async move {
                    let agent = agents[i].lock().await;
                    let have = agent.catalog_id.clone();
                    let Some(connector) = agent.connector.clone() else {
                        return;
                    };
                    let mut client = None;
                    for _ in 0..rounds {
                        let answer = catalog_with_retries(
                            &phase,
                            &connector,
                            &mut client,
                            &facts("storm"),
                            &have,
                        )
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
            later_agents,
            later_in_flight,
            &servers,
            |i, phase| {
                let (agents, distinct) = (agents.clone(), distinct.clone());
                async move {
                    let agent = agents[i].lock().await;
                    let have = agent.catalog_id.clone();
                    let Some(connector) = agent.connector.clone() else {
                        return;
                    };
                    let hostname = format!("storm-{i:05}.internal");
                    let answer = catalog_with_retries(
                        &phase,
                        &connector,
                        &mut None,
                        &facts(&hostname),
                        &have,
                    )
                    .await;
                    if let Some(Some(pb::catalog_response::Result::Catalog(catalog))) = answer {
                        distinct.lock().expect("lock").insert(catalog.catalog_id);
                    }
                }
            },
        )
        .await,
    );

    let peak = servers.peak_rss_mb();
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
    let retries: u64 = phases.iter().map(|p| p.retries).sum();
    let seconds: f64 = phases.iter().map(|p| p.seconds).sum();
    // Every report a server acknowledged is in the database.
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    let stored = match (&postgres, &store) {
        (Some(postgres), Some((url, _))) => Some(
            postgres
                .sql(
                    cms_integration::PostgresServer::database_of(url),
                    "SELECT count(*) FROM reports",
                )?
                .parse::<u64>()?,
        ),
        _ => None,
    };
    if let Some(stored) = stored {
        println!(
            "reports: {acknowledged} acknowledged, {stored} in the database, {} lost; {retries} steps tried again",
            acknowledged.saturating_sub(stored)
        );
    }
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
        "store": if options.postgres { "postgres" } else { "sled" },
        "replicas": options.replicas,
        "killed_replica": servers.killed.load(Ordering::SeqCst),
        "failures": failures,
        "retries": retries,
        "acknowledged_reports": acknowledged,
        "stored_reports": stored,
        "lost_reports": stored.map(|stored| acknowledged.saturating_sub(stored)),
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
            "retries": p.retries,
            "seconds": round(p.seconds),
            "p50_ms": round(percentile_ms(&p.latencies_us, 0.50)),
            "p99_ms": round(percentile_ms(&p.latencies_us, 0.99)),
            "server_rss_mb": round(p.server_rss_mb),
            "server_cpu_s": round(p.server_cpu_s),
            "agents_cpu_s": round(p.client_cpu_s),
        })).collect::<Vec<_>>(),
    });
    drop(agents);
    drop(servers);
    drop(postgres);
    println!("{json}");
    Ok(())
}
