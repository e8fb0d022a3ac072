//! What an operator looks at, after real traffic: an in-process server with
//! its HTTP port, and the real `cms-agent` binary enrolling two nodes and
//! converging files under a temporary folder (one role converges, one
//! fails). The metrics endpoint is parsed as OpenMetrics by a real parser;
//! the dashboard is driven in Debian's headless chromium by playwright-core
//! (`integration/browser/`, installed by `scripts/test` with `npm ci`).
//!
//! Screenshots go to `$CMS_TEST_ARTIFACTS`, by default
//! `<cargo target dir>/tmp/test-artifacts/`.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use cms_integration::{GitRepo, HostAgent, TestServer, build_workspace_binary};
use openmetrics_parser::{MetricFamily, OpenMetricsType, OpenMetricsValue};

/// A roles repository in git: `app` converges a folder and a file under
/// `out`; `broken` writes a file into a folder that does not exist, which
/// fails (parents are never created implicitly).
fn roles_repository(root: &Path, out: &Path) -> Result<PathBuf> {
    let repo = GitRepo::init(&root.join("roles"))?;
    let app = format!(
        "[match]\nrole = \"app\"\n\n[[directory]]\npath = \"{out}\"\n\n[[file]]\npath = \"{out}/app.conf\"\ncontent = \"<b>served</b>\\n\"\nrequire = [\"directory:{out}\"]\n",
        out = out.display()
    );
    let broken = format!(
        "[match]\nrole = \"broken\"\n\n[[file]]\npath = \"{}/no-such-folder/broken.conf\"\ncontent = \"never\\n\"\n",
        out.display()
    );
    repo.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/app.toml", &app),
            ("roles/broken.toml", &broken),
        ],
        "roles",
    )?;
    Ok(repo.path().to_path_buf())
}

/// A server with its HTTP port, and two nodes that ran: `app-1` converged
/// (twice: changed, then not modified), `db-1` failed.
/// Fails with the agent's stderr unless `enroll` succeeded.
fn enrolled(output: Output) -> Result<()> {
    ensure!(
        output.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

struct Fleet {
    server: TestServer,
    repo: PathBuf,
    /// Where app-1's agent wrote its last run's figures for node_exporter.
    app_textfile: PathBuf,
    _dir: tempfile::TempDir,
}

fn fleet(configure: impl FnOnce(&mut cms_server::server::ServeConfig)) -> Result<Fleet> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let repo = roles_repository(dir.path(), &out)?;
    let binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let server = TestServer::start_with_http(&dir.path().join("server"), &repo, configure)?;
    let agent = |name: &str| HostAgent::in_directory(&binary, dir.path(), name);
    let token = server.token(&[("role", "*")])?;

    // app-1's agent writes its figures for node_exporter's textfile
    // collector, under the test's folder.
    let app = agent("app")?;
    let app_textfile = app.textfile();
    enrolled(app.enroll(&server.address, &token, "app-1", "role=app")?)?;
    let (code, _) = app.converge()?;
    ensure!(code == 2, "app-1's first run changes things, exit {code}");
    let (code, _) = app.converge()?;
    ensure!(code == 0, "app-1's second run changes nothing, exit {code}");

    let db = agent("db")?;
    enrolled(db.enroll(&server.address, &token, "db-1", "role=broken")?)?;
    let (code, _) = db.converge()?;
    ensure!(
        code != 0 && code != 2,
        "db-1's run fails a resource, exit {code}"
    );
    Ok(Fleet {
        server,
        repo,
        app_textfile,
        _dir: dir,
    })
}

/// `GET path` over plain HTTP/1.0 (no chunking): status and body.
fn http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    cms_integration::http_request(address.parse()?, "GET", path, headers, b"")
}

type Families = std::collections::HashMap<String, MetricFamily<OpenMetricsType, OpenMetricsValue>>;

/// The value of the sample of `family` with exactly these labels (a
/// counter's total, a gauge's value, a histogram's count).
fn sample(families: &Families, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = families.get(family)?;
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    family.iter_samples().find_map(|sample| {
        let labelset = sample.get_labelset().ok()?;
        let have: BTreeMap<String, String> = labelset
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if have != wanted {
            return None;
        }
        Some(match &sample.value {
            OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.unwrap_or_default() as f64,
            _ => f64::NAN,
        })
    })
}

fn current_commit(repo: &Path) -> Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "HEAD"])
        .output()?;
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

#[test]
fn metrics_count_enrollments_catalogs_runs_and_nodes_in_the_openmetrics_format() -> Result<()> {
    let fleet = fleet(|config| config.metrics_token = Some("scrape-secret".into()))?;
    let address = fleet.server.http_address.clone().context("an HTTP port")?;

    let (status, _) = http_get(&address, "/metrics", &[])?;
    ensure!(
        status == 401,
        "metrics without the configured token: {status}"
    );
    let (status, _) = http_get(
        &address,
        "/metrics",
        &[("Authorization", "Bearer wrong-secret")],
    )?;
    ensure!(status == 401, "metrics with a wrong token: {status}");

    let (status, text) = http_get(
        &address,
        "/metrics",
        &[("Authorization", "Bearer scrape-secret")],
    )?;
    ensure!(status == 200, "metrics with the token: {status}\n{text}");
    let families = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .map_err(|e| anyhow::anyhow!("the metrics are not valid OpenMetrics: {e:?}\n{text}"))?
        .families;

    let expect = |family: &str, labels: &[(&str, &str)], wanted: f64| -> Result<()> {
        let got = sample(&families, family, labels);
        ensure!(
            got == Some(wanted),
            "{family}{labels:?} is {got:?}, expected {wanted}\n{text}"
        );
        Ok(())
    };
    expect(
        "cms_nodes",
        &[("role", "app"), ("status", "unchanged")],
        1.0,
    )?;
    expect("cms_nodes", &[("role", "app"), ("status", "failed")], 0.0)?;
    expect(
        "cms_nodes",
        &[("role", "broken"), ("status", "failed")],
        1.0,
    )?;
    expect("cms_enrollments", &[("result", "enrolled")], 2.0)?;
    expect("cms_catalog_requests", &[("answer", "catalog")], 2.0)?;
    expect("cms_catalog_requests", &[("answer", "not_modified")], 1.0)?;
    expect("cms_runs", &[("result", "changed")], 1.0)?;
    expect("cms_runs", &[("result", "unchanged")], 1.0)?;
    expect("cms_runs", &[("result", "failed")], 1.0)?;
    expect("cms_run_duration_seconds", &[], 3.0)?;
    // app: a folder and a file changed once; broken: its file failed.
    expect("cms_resources", &[("status", "changed")], 2.0)?;
    expect("cms_resources", &[("status", "failed")], 1.0)?;
    // Two nodes, two catalogs, each compiled once.
    expect("cms_catalog_compile_duration_seconds", &[], 2.0)?;
    expect("cms_catalog_cache_entries", &[], 2.0)?;
    expect(
        "cms_roles_revision",
        &[("revision", &current_commit(&fleet.repo)?)],
        1.0,
    )?;
    expect("cms_roles_sync_ok", &[], 1.0)?;
    ensure!(
        sample(&families, "cms_roles_syncs", &[("result", "accepted")]).is_some_and(|n| n >= 1.0),
        "a sync was counted\n{text}"
    );

    // Every metric the example Grafana dashboard queries is served.
    let dashboard_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&dashboard_path)
            .with_context(|| format!("Failed to read {}", dashboard_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", dashboard_path.display()))?;
    let mut queried = Vec::new();
    collect_metric_names(&dashboard, &mut queried);
    ensure!(!queried.is_empty(), "the Grafana dashboard queries nothing");
    for name in &queried {
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| families.contains_key(*base))
            .unwrap_or(name);
        ensure!(
            families.contains_key(family),
            "the Grafana dashboard queries {name}, which the server does not serve"
        );
    }

    // The agent wrote its last run's figures where node_exporter reads them.
    let textfile = std::fs::read_to_string(&fleet.app_textfile)
        .with_context(|| format!("Failed to read {}", fleet.app_textfile.display()))?;
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&textfile)
        .map_err(|e| anyhow::anyhow!("not the Prometheus text format: {e:?}\n{textfile}"))?;
    let gauge = |name: &str| {
        exposition.families.get(name).and_then(|f| {
            f.iter_samples().next().and_then(|s| match &s.value {
                openmetrics_parser::PrometheusValue::Gauge(n) => Some(n.as_f64()),
                _ => None,
            })
        })
    };
    ensure!(
        gauge("cms_agent_last_run_exit_code") == Some(0.0)
            && gauge("cms_agent_last_run_success") == Some(1.0),
        "app-1's last run (unchanged) in its textfile:\n{textfile}"
    );

    // Without TLS on the HTTP port the dashboard is off, not open.
    let (status, body) = http_get(&address, "/dashboard", &[])?;
    ensure!(status == 403, "the dashboard without TLS answered {status}");
    ensure!(body.contains("--http-tls"), "{body}");
    fleet.server.stop()
}

/// Every `cms_…` metric name in the `expr` fields of a Grafana dashboard.
fn collect_metric_names(value: &serde_json::Value, names: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == "expr"
                    && let Some(expr) = value.as_str()
                {
                    let mut rest = expr;
                    while let Some(at) = rest.find("cms_") {
                        let name: String = rest[at..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        rest = &rest[at + name.len()..];
                        names.push(name);
                    }
                } else {
                    collect_metric_names(value, names);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_metric_names(item, names);
            }
        }
        _ => {}
    }
}

#[test]
fn the_dashboard_in_chromium_shows_a_converged_node_lists_the_failed_one_first_and_refuses_anonymous_users()
-> Result<()> {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    ensure!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run scripts/test (it runs `npm ci` there)",
        browser_dir.display()
    );
    ensure!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed: run scripts/test (it installs the package)"
    );
    let fleet = fleet(|config| config.http_tls = true)?;
    let address = fleet.server.http_address.clone().context("an HTTP port")?;
    let token = fleet.server.dashboard_token()?;
    let artifacts = std::env::var_os("CMS_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts"));
    // A screenshot left by an earlier run must not pass for this one's.
    let screenshot = artifacts.join("dashboard-fleet.png");
    match std::fs::remove_file(&screenshot) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error)
                .with_context(|| format!("Failed to remove {}", screenshot.display()));
        }
    }
    let began = std::time::SystemTime::now();
    let output = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .current_dir(&browser_dir)
        .env("DASHBOARD_URL", format!("https://{address}"))
        .env("DASHBOARD_TOKEN", &token)
        .env("CONVERGED_NODE", "app-1")
        .env("FAILED_NODE", "db-1")
        .env("ARTIFACTS", &artifacts)
        .output()
        .context("Failed to run node")?;
    if !output.status.success() {
        bail!(
            "the dashboard checks in chromium failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let written = std::fs::metadata(&screenshot)
        .and_then(|metadata| metadata.modified())
        .with_context(|| format!("no screenshot {}", screenshot.display()))?;
    ensure!(
        written >= began,
        "{} was written at {written:?}, before this test's browser run began at {began:?}",
        screenshot.display()
    );
    println!("screenshots in {}", artifacts.display());
    fleet.server.stop()
}
