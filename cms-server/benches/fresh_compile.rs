//! Server CPU per fresh 50-resource catalog, without a fleet: the path of
//! one agent run whose facts were never compiled before, through the
//! server's own code (`AgentService::catalog_for`, `content_for`,
//! `report_from`, the catalog cache, a sled store in a temporary folder):
//!
//! 1. `GetCatalog`: the request decoded from its protobuf bytes, the node
//!    read and its facts noted, the catalog key, the compile, the response
//!    encoded to its wire bytes;
//! 2. 5 `GetContent`, each chunk encoded;
//! 3. `Report` of its 50 resources, decoded and stored (durable, as the
//!    server acknowledges it).
//!
//! The repository is `cms-storm`'s: one role of a directory and 49 files
//! rendered from templates that read `tag.role`, `fact.hostname` and
//! `fact.cpus`; each run sends its own hostname, so each needs its own
//! compile. TLS, HTTP/2 and the certificate check are not included: they
//! are the same for any call and measured by `cms-storm`.
//!
//! CPU is the process's (`getrusage`, user + system, every thread: tokio's
//! workers, the blocking threads, sled's), divided by the runs. Run with
//! `cargo bench -p cms-server --bench fresh_compile` (arguments: runs,
//! default 3000, and runs in flight at once, default 8).

// A benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cms_proto::v1 as pb;
use cms_roles::{RepoFiles, Repository};
use cms_server::blocking::Blocking;
use cms_server::catalogs::Catalogs;
use cms_server::environments::{Environment, Environments, EnvironmentsConfig, Placement};
use cms_server::fleet::Fleet;
use cms_server::git_sync::Revision;
use cms_server::metrics::{FleetCounters, Metrics};
use cms_server::nodes::Nodes;
use cms_server::reports::{ReportRate, ReportRateLimit, Reports};
use cms_server::service::AgentService;
use cms_server::store::{EnvironmentRecord, NodeRecord, NodeStatus, SharedStore};
use prost::Message as _;

/// The allocator of the `cms-server` binary (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Resources of the role: a directory and `RESOURCES - 1` files.
const RESOURCES: usize = 50;
/// Contents an agent fetches apart, as `cms-storm` does.
const CONTENTS: usize = 5;

/// `cms-storm`'s repository (`write_roles`).
fn repository() -> Arc<Repository> {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    let mut role =
        String::from("[match]\nrole = \"web\"\n\n[[directory]]\npath = \"/srv/storm\"\n");
    for i in 1..RESOURCES {
        files.insert(
            format!("templates/f{i}.hbs").as_str(),
            format!(
                "# file {i} of the {{{{tag.role}}}} role on {{{{fact.hostname}}}}\nworkers = {{{{fact.cpus}}}}\nline = \"{}\"\n",
                "x".repeat(200)
            )
            .as_str(),
        );
        role.push_str(&format!(
            "\n[[file]]\npath = \"/srv/storm/f{i}.conf\"\ntemplate = \"f{i}.hbs\"\nrequire = [\"directory:/srv/storm\"]\n"
        ));
    }
    files.insert("roles/web.toml", role.as_str());
    Arc::new(Repository::parse(files).unwrap_or_else(|d| panic!("{d}")))
}

/// `cms-storm`'s facts.
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

/// User + system CPU of the whole process so far.
fn process_cpu() -> Duration {
    cpu_of(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

fn cpu_of(who: nix::sys::resource::UsageWho) -> Duration {
    let usage = nix::sys::resource::getrusage(who).expect("getrusage");
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    time(usage.user_time()) + time(usage.system_time())
}

fn node_id(i: usize) -> String {
    format!("storm-{i:05}")
}

/// The server's pieces as `server::serve` wires them, over a sled store.
fn service(store: SharedStore, repository: Arc<Repository>) -> AgentService {
    let clock = cms_server::clock::system();
    let counters = FleetCounters::default();
    let mut metrics = Metrics::new();
    metrics.register_fleet(&counters);
    let fleet = Arc::new(Fleet::new(counters));
    let catalogs = Arc::new(
        Catalogs::new(
            10_000,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )
        .observe_compiles(metrics.compile_duration()),
    );
    let metrics = Arc::new(metrics);
    let config = EnvironmentsConfig::single("main");
    let spec = config.environments()[0].clone();
    let revision = Revision {
        commit: "0123456789abcdef0123456789abcdef01234567".to_string(),
        repository,
        secrets: cms_server::secrets::RevisionSecrets::empty(),
    };
    let environment = Environment::new(
        &spec,
        Some(revision),
        Placement::default(),
        EnvironmentRecord::default(),
    );
    let environments = Arc::new(Environments::new(
        config.clone(),
        BTreeMap::from([(spec.name.clone(), environment)]),
    ));
    let ca =
        Arc::new(cms_server::pki::CertificateAuthority::create("bench").expect("a CA is created"));
    let nodes = Nodes {
        store: store.clone(),
        fleet: fleet.clone(),
        clock: clock.clone(),
    };
    AgentService {
        store: store.clone(),
        nodes,
        reports: Reports {
            store: store.clone(),
            fleet: fleet.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
        },
        enrollment: cms_server::enrollment::Enrollment {
            store: store.clone(),
            ca,
            ca_fingerprint: String::new(),
            fleet,
            clock: clock.clone(),
            certificate_validity: Duration::from_secs(3600),
            gone_after: Duration::from_secs(3600),
            aws: None,
            environments: config,
        },
        catalogs,
        environments,
        metrics,
        blocking: Blocking::default(),
        report_rate: Arc::new(ReportRate::new(ReportRateLimit::default())),
        restart_budget: Arc::new(cms_server::restart_budget::RestartBudget::new(clock)),
        rollouts: None,
    }
}

/// What an agent run sends after `GetCatalog`, when it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Steps {
    /// `GetCatalog` only.
    Catalog,
    /// Then `CONTENTS` `GetContent`.
    Contents,
    /// Then its `Report`.
    Report,
}

/// The parts of a catalog an agent needs to fetch contents and report,
/// read without decoding the contents (the agent's work, not the
/// server's).
#[derive(serde::Deserialize)]
struct Received {
    catalog_id: String,
    resources: Vec<ReceivedResource>,
    contents: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ReceivedResource {
    reference: String,
}

/// CPU of the calling thread so far (user + system: their sum is the
/// kernel's exact runtime of the thread, in microseconds).
fn thread_cpu() -> Duration {
    cpu_of(nix::sys::resource::UsageWho::RUSAGE_THREAD)
}

/// One agent run, as the server sees it: the requests arrive as protobuf
/// bytes and the answers leave as protobuf bytes. Returns the bytes sent
/// and the CPU spent on the agent's side (making its requests, reading the
/// answer), to subtract: none of it awaits, so the thread's clock counts it.
async fn run(
    service: &AgentService,
    i: usize,
    request: Vec<u8>,
    steps: Steps,
) -> (usize, Duration) {
    let id = node_id(i);
    let request = pb::CatalogRequest::decode(request.as_slice()).expect("decodes");
    let response = service
        .catalog_for(id.clone(), request, service.metrics.catalog_request())
        .await
        .unwrap_or_else(|status| panic!("GetCatalog: {status}"));
    let mut sent = response.encoded_len();
    let mut encoded = Vec::with_capacity(sent);
    response.encode(&mut encoded).expect("encodes");
    let Some(pb::catalog_response::Result::Catalog(catalog)) = response.result else {
        panic!("a fresh compile answers a catalog");
    };
    if steps == Steps::Catalog {
        return (sent, Duration::ZERO);
    }
    let agent_started = thread_cpu();
    let received: Received =
        serde_json::from_slice(&catalog.canonical_json).expect("the catalog decodes");
    let requests: Vec<Vec<u8>> = received
        .contents
        .keys()
        .take(CONTENTS)
        .map(|hash| {
            pb::ContentRequest {
                sha256: hash.clone(),
            }
            .encode_to_vec()
        })
        .collect();
    let mut agent = thread_cpu() - agent_started;
    for request in requests {
        let hash = pb::ContentRequest::decode(request.as_slice())
            .expect("decodes")
            .sha256;
        let mut chunks = service
            .content_for(id.clone(), hash)
            .await
            .unwrap_or_else(|status| panic!("GetContent: {status}"));
        use tokio_stream::StreamExt as _;
        while let Some(chunk) = chunks.next().await {
            sent += chunk.expect("a chunk").encode_to_vec().len();
        }
    }
    if steps == Steps::Contents {
        return (sent, agent);
    }
    let agent_started = thread_cpu();
    let report = pb::RunReport {
        run_id: format!("run-{i}"),
        catalog_id: received.catalog_id,
        revision: catalog.revision.clone(),
        started_at_unix_ms: 0,
        duration_ms: 1,
        noop: false,
        resources: received
            .resources
            .into_iter()
            .map(|r| pb::ResourceResult {
                reference: r.reference,
                status: pb::ResourceStatus::Changed as i32,
                ..Default::default()
            })
            .collect(),
        trigger_id: String::new(),
        note: String::new(),
    }
    .encode_to_vec();
    agent += thread_cpu() - agent_started;
    let report = pb::RunReport::decode(report.as_slice()).expect("decodes");
    let ack = service
        .report_from(id, report)
        .await
        .unwrap_or_else(|status| panic!("Report: {status}"));
    (sent + ack.encode_to_vec().len(), agent)
}

/// Runs `steps` for every node once, with facts never compiled before
/// (`pass` names them), `in_flight` at once; prints and returns the server
/// CPU per run.
fn pass(
    runtime: &tokio::runtime::Runtime,
    service: &Arc<AgentService>,
    runs: usize,
    in_flight: usize,
    steps: Steps,
    pass: &str,
) -> f64 {
    let requests: Vec<(usize, Vec<u8>)> = (0..runs)
        .map(|i| {
            let request = pb::CatalogRequest {
                facts_json: facts(&format!("{pass}-{i:05}.internal")),
                have_catalog_id: "0".repeat(64),
                trigger_id: String::new(),
            };
            (i, request.encode_to_vec())
        })
        .collect();
    let compiled_before = service.catalogs.stats().compiles;
    let started_cpu = process_cpu();
    let started = Instant::now();
    let (sent, agent) = runtime.block_on(async {
        let next = Arc::new(std::sync::Mutex::new(requests));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let (next, service) = (next.clone(), service.clone());
            tasks.spawn(async move {
                let (mut sent, mut agent) = (0, Duration::ZERO);
                loop {
                    let Some((i, request)) = next.lock().expect("lock").pop() else {
                        return (sent, agent);
                    };
                    let (bytes, cpu) = run(&service, i, request, steps).await;
                    sent += bytes;
                    agent += cpu;
                }
            });
        }
        let (mut sent, mut agent) = (0, Duration::ZERO);
        while let Some(part) = tasks.join_next().await {
            let (bytes, cpu) = part.expect("a task");
            sent += bytes;
            agent += cpu;
        }
        (sent, agent)
    });
    let wall = started.elapsed();
    let cpu = process_cpu() - started_cpu - agent;
    let compiles = (service.catalogs.stats().compiles - compiled_before) as usize;
    // A `GetContent` whose catalog the cache evicted since its `GetCatalog`
    // (it holds a few dozen; a run descheduled meanwhile can lose its own)
    // compiles it again, as the server does for an agent: counted, and said.
    assert!(
        compiles >= runs,
        "every run compiled its own catalog: {compiles} compiles for {runs} runs"
    );
    if compiles > runs {
        println!(
            "fresh_compile: {pass}: {} catalogs compiled again for GetContent after the cache evicted them (their CPU is counted)",
            compiles - runs
        );
    }
    let per_run = cpu.as_secs_f64() * 1000.0 / runs as f64;
    let what = match steps {
        Steps::Catalog => "GetCatalog".to_string(),
        Steps::Contents => format!("GetCatalog + {CONTENTS} GetContent"),
        Steps::Report => format!("GetCatalog + {CONTENTS} GetContent + Report"),
    };
    println!(
        "fresh_compile: {what}: server CPU {per_run:.3} ms per catalog, wall {:.3} ms ({:.0}/s); {runs} runs, {in_flight} in flight, {:.1} KiB sent each; agent side {:.3} ms each, not counted",
        wall.as_secs_f64() * 1000.0 / runs as f64,
        runs as f64 / wall.as_secs_f64(),
        sent as f64 / runs as f64 / 1024.0,
        agent.as_secs_f64() * 1000.0 / runs as f64,
    );
    per_run
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(3000);
    let in_flight = args.get(1).copied().unwrap_or(8).max(1);
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let store = cms_server::store::open(scratch.path()).expect("the store opens");
    let now = cms_server::clock::now_unix_ms();
    for i in 0..runs {
        store
            .put_node(&NodeRecord {
                id: node_id(i),
                tags: BTreeMap::from([("role".to_string(), "web".to_string())]),
                facts: serde_json::from_str(&facts("storm")).expect("facts"),
                certificate_serial: format!("{i:08x}"),
                first_seen_unix_ms: now,
                last_seen_unix_ms: now,
                last_run: None,
                status: NodeStatus::Active,
                gone_since_unix_ms: None,
                attested: BTreeMap::new(),
                environment: String::new(),
            })
            .expect("a node is stored");
    }
    let service = Arc::new(service(store, repository()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Warm up (allocator, thread pools, sled); not counted.
    let warm = runs.min(300);
    pass(&runtime, &service, warm, in_flight, Steps::Report, "warm");
    println!("fresh_compile: measured:");
    let catalog = pass(
        &runtime,
        &service,
        runs,
        in_flight,
        Steps::Catalog,
        "catalog",
    );
    let contents = pass(
        &runtime,
        &service,
        runs,
        in_flight,
        Steps::Contents,
        "contents",
    );
    let whole = pass(&runtime, &service, runs, in_flight, Steps::Report, "report");
    println!(
        "fresh_compile: server CPU per fresh {RESOURCES}-resource catalog: {whole:.3} ms (GetCatalog {catalog:.3} ms, {CONTENTS} GetContent {:.3} ms, Report {:.3} ms)",
        contents - catalog,
        whole - contents
    );
}
