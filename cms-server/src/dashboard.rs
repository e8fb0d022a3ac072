//! The fleet dashboard: read-only HTML pages served on the HTTP port.
//!
//! - `GET /dashboard`: the fleet at a glance — nodes by role and status, the
//!   revision each runs, the roles revision and its validation errors, the
//!   triggers in progress, and every node with failures first
//!   (`?role=` and `?status=` filter).
//! - `GET /dashboard/nodes/{id}`: a node's tags, facts and last runs with
//!   their diffs.
//! - `GET`/`POST /dashboard/login`, `POST /dashboard/logout`.
//!
//! **Access.** Only an admin may look: the login form takes a dashboard
//! token (made by `cms-server dashboard-token`, shown once; the server keeps
//! only its sha256 in `<data>/admin/dashboard-tokens`, like enrollment
//! tokens) and answers with a session cookie (`Secure`, `HttpOnly`,
//! `SameSite=Strict`, 12 hours; the server keeps only the session's
//! sha256, in memory). The dashboard is served only when the HTTP port
//! speaks TLS (`--http-tls`, with the server's certificate from its CA), so
//! neither the token nor the cookie crosses the network in the clear;
//! without TLS every dashboard page answers 403 saying so. Anything else is
//! 401 with the login form.
//!
//! **Untrusted input.** Tags, facts, diffs, errors and node ids come from
//! nodes: every piece of text goes through `escape` (or `Html::text`) on
//! its way into the page. The pages have no script and no external asset;
//! the Content-Security-Policy forbids both.
//!
//! Rendering is plain string building: `render_fleet` over 10,000 nodes is
//! measured by `cargo bench -p cms-server --bench dashboard`
//! (docs/BENCHMARKS.md).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use cms_proto::report::ResourceStatus;

use crate::clock::SharedClock;
use crate::fleet::Fleet;
use crate::node_state::{NodeState, role_of};
use crate::revision::ServingRevision;
use cms_roles::digest::sha256_hex;

use crate::store::{NodeRecord, RevisionRecord, SharedStore, Store, StoredReport};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cms_session";
/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The prefix of dashboard tokens, so a leaked one is recognisable.
pub const DASHBOARD_TOKEN_PREFIX: &str = "cmsd_";
/// At most this many nodes are listed on the fleet page; filters narrow it.
pub const NODE_ROWS: usize = 2000;
/// Runs shown on a node's page.
pub const NODE_RUNS: usize = 10;

/// The name of the file of dashboard token hashes in the admin folder.
const TOKENS_FILE: &str = "dashboard-tokens";

/// Where the hashes of dashboard tokens are kept.
pub fn tokens_file(data_dir: &Path) -> PathBuf {
    crate::startup::admin_dir(data_dir).join(TOKENS_FILE)
}

/// Makes a dashboard token: adds its sha256 to `tokens_file` (atomically,
/// owner-only) and returns the secret, which is not kept anywhere.
pub fn create_token(data_dir: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use base64::Engine as _;
    use std::io::Read as _;
    use std::os::unix::fs::DirBuilderExt;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("Failed to read random bytes from /dev/urandom")?;
    let secret = format!(
        "{DASHBOARD_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let path = tokens_file(data_dir);
    let dir = path.parent().expect("the tokens file is in a folder");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("Failed to create {}", dir.display()))?;
    let mut text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(error).with_context(|| format!("Failed to read {}", path.display()));
        }
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = writeln!(
        text,
        "{} created {}",
        sha256_hex(secret.as_bytes()),
        format_time(crate::clock::now_unix_ms())
    );
    crate::startup::write_private_file(dir, TOKENS_FILE, text.as_bytes())?;
    Ok(secret)
}

/// Whether `secret` is a dashboard token: its sha256 is the first word of a
/// line of `tokens_file`. Read at each login, so a token made while the
/// server runs works at once and one removed from the file stops working.
fn token_is_valid(data_dir: &Path, secret: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(tokens_file(data_dir)) else {
        return false;
    };
    let hash = sha256_hex(secret.trim().as_bytes());
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|stored| stored == hash)
}

/// Logged-in sessions: the sha256 of the cookie value and when it expires.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Instant>>);

impl Sessions {
    fn open(&self) -> anyhow::Result<String> {
        let secret = create_session_secret()?;
        let mut sessions = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::clock::instant();
        sessions.retain(|_, expires| *expires > now);
        sessions.insert(sha256_hex(secret.as_bytes()), now + SESSION_LIFETIME);
        Ok(secret)
    }

    fn is_valid(&self, secret: &str) -> bool {
        let sessions = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(&sha256_hex(secret.as_bytes()))
            .is_some_and(|expires| *expires > crate::clock::instant())
    }

    fn close(&self, secret: &str) {
        let mut sessions = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&sha256_hex(secret.as_bytes()));
    }
}

fn create_session_secret() -> anyhow::Result<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the dashboard reads: narrow handles and the data directory, where
/// the dashboard tokens are.
#[derive(Debug, Clone)]
pub struct DashboardApi {
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    pub revision: Arc<ServingRevision>,
    pub clock: SharedClock,
    pub data_dir: PathBuf,
}

#[derive(Debug)]
struct Dashboard {
    api: DashboardApi,
    sessions: Sessions,
    /// Whether the HTTP port speaks TLS; the dashboard is off without it.
    tls: bool,
}

/// The dashboard's routes, to merge into the HTTP router.
pub fn router(api: DashboardApi, tls: bool) -> Router {
    let dashboard = Arc::new(Dashboard {
        api,
        sessions: Sessions::default(),
        tls,
    });
    Router::new()
        .route("/dashboard", get(fleet_page))
        .route("/dashboard/", get(fleet_page))
        .route("/dashboard/nodes/{id}", get(node_page))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .with_state(dashboard)
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// Why the page is refused, if it is: 403 without TLS, 401 with the login
/// form without a valid session.
fn refusal(dashboard: &Dashboard, headers: &HeaderMap) -> Option<Response> {
    if !dashboard.tls {
        return Some(page_response(
            StatusCode::FORBIDDEN,
            "Dashboard off",
            "<h1>The dashboard is off</h1><p>It is served only over TLS, so that the admin token and the session never cross the network in the clear: start the server with <code>--http-tls</code>.</p>".into(),
            None,
        ));
    }
    match session_cookie(headers) {
        Some(secret) if dashboard.sessions.is_valid(secret) => None,
        _ => Some(login_response(StatusCode::UNAUTHORIZED, None)),
    }
}

fn page_response(
    status: StatusCode,
    title: &str,
    body: String,
    cookie: Option<String>,
) -> Response {
    let mut response = (status, page(title, &body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Some(cookie) = cookie
        && let Ok(value) = HeaderValue::from_str(&cookie)
    {
        headers.insert(header::SET_COOKIE, value);
    }
    response
}

fn login_response(status: StatusCode, error: Option<&str>) -> Response {
    let mut body = String::from("<h1>cms fleet dashboard</h1>");
    if let Some(error) = error {
        let _ = write!(body, "<p class=\"error\">{}</p>", escape(error));
    }
    body.push_str(
        "<form method=\"post\" action=\"/dashboard/login\" class=\"login\">\
         <label for=\"token\">Dashboard token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Log in</button></form>\
         <p class=\"muted\">Make a token on the server with <code>cms-server dashboard-token</code>.</p>",
    );
    page_response(status, "Log in", body, None)
}

async fn login_page(State(dashboard): State<Arc<Dashboard>>) -> Response {
    if !dashboard.tls {
        return refusal(&dashboard, &HeaderMap::new()).expect("off without TLS");
    }
    login_response(StatusCode::OK, None)
}

#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(dashboard): State<Arc<Dashboard>>, Form(form): Form<LoginForm>) -> Response {
    if !dashboard.tls {
        return refusal(&dashboard, &HeaderMap::new()).expect("off without TLS");
    }
    let data_dir = dashboard.api.data_dir.clone();
    let valid = tokio::task::spawn_blocking(move || token_is_valid(&data_dir, &form.token))
        .await
        .unwrap_or(false);
    if !valid {
        tracing::warn!("refused a dashboard login with an unknown token");
        return login_response(StatusCode::UNAUTHORIZED, Some("That token is not valid."));
    }
    let secret = match dashboard.sessions.open() {
        Ok(secret) => secret,
        Err(error) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Failed to open a session: {error:#}\n"),
            )
                .into_response();
        }
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={secret}; Path=/dashboard; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        SESSION_LIFETIME.as_secs()
    )) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Some(secret) = session_cookie(&headers) {
        dashboard.sessions.close(secret);
    }
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_static("/dashboard/login"),
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "cms_session=; Path=/dashboard; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
        ),
    );
    response
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct FleetFilter {
    pub role: Option<String>,
    pub status: Option<String>,
}

async fn fleet_page(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(filter): Query<FleetFilter>,
) -> Response {
    if let Some(refused) = refusal(&dashboard, &headers) {
        return refused;
    }
    let api = dashboard.api.clone();
    let rendered = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let view = FleetView::read(&api)?;
        Ok(render_fleet(&view, &filter))
    })
    .await;
    match rendered {
        Ok(Ok(body)) => page_response(StatusCode::OK, "Fleet", body, None),
        Ok(Err(error)) => internal_error(&error),
        Err(error) => internal_error(&anyhow::anyhow!("{error}")),
    }
}

async fn node_page(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Some(refused) = refusal(&dashboard, &headers) {
        return refused;
    }
    let api = dashboard.api.clone();
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(
        move || -> anyhow::Result<Option<(NodeRecord, Vec<StoredReport>)>> {
            let Some(node) = api.store.node(&lookup)? else {
                return Ok(None);
            };
            let node = api.fleet.current(node, api.clock.now_unix_ms());
            let reports = api.store.reports(&lookup, NODE_RUNS)?;
            Ok(Some((node, reports)))
        },
    )
    .await;
    match found {
        Ok(Ok(Some((node, reports)))) => page_response(
            StatusCode::OK,
            &format!("Node {}", node.id),
            render_node(&node, &reports),
            None,
        ),
        Ok(Ok(None)) => page_response(
            StatusCode::NOT_FOUND,
            "No such node",
            format!(
                "<p><a href=\"/dashboard\">← Fleet</a></p><h1>No node {}</h1>",
                escape(&id)
            ),
            None,
        ),
        Ok(Err(error)) => internal_error(&error),
        Err(error) => internal_error(&anyhow::anyhow!("{error}")),
    }
}

fn internal_error(error: &anyhow::Error) -> Response {
    tracing::warn!("dashboard: {error:#}");
    page_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Error",
        format!(
            "<h1>Failed to read the fleet</h1><pre>{}</pre>",
            escape(&format!("{error:#}"))
        ),
        None,
    )
}

/// A fleet trigger as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerView {
    pub id: String,
    /// The selector, e.g. `role=api,env=prod`.
    pub selector: String,
    /// Where it stands, e.g. `running`, `paused`.
    pub state: String,
    pub done: u32,
    pub failed: u32,
    pub total: u32,
}

/// The triggers to show: every running one, then the most recent finished
/// ones (so a rollout that just stopped is still on the page), newest first.
pub fn triggers_in_progress(store: &dyn Store) -> Vec<TriggerView> {
    match store.triggers() {
        Ok(records) => trigger_views(records),
        Err(error) => {
            tracing::warn!("dashboard: failed to read triggers: {error}");
            Vec::new()
        }
    }
}

/// How many finished triggers the fleet page lists below the running ones.
const FINISHED_TRIGGERS_SHOWN: usize = 5;

fn trigger_views(mut records: Vec<crate::store::TriggerRecord>) -> Vec<TriggerView> {
    records.sort_by_key(|r| (r.state != "running", std::cmp::Reverse(r.started_unix_ms)));
    let running = records.iter().filter(|r| r.state == "running").count();
    records.truncate(running + FINISHED_TRIGGERS_SHOWN);
    records
        .iter()
        .map(|record| {
            let outcomes = record.outcomes.values();
            TriggerView {
                id: record.id.clone(),
                selector: record
                    .selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                state: record.state.clone(),
                done: outcomes.clone().count() as u32,
                failed: outcomes
                    .filter(|o| o.result == "failed" || o.result == "unreachable")
                    .count() as u32,
                total: record.batches.iter().map(Vec::len).sum::<usize>() as u32,
            }
        })
        .collect()
}

/// What the fleet page shows, read from the server in one go.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub nodes: Vec<NodeRecord>,
    /// The revision catalogs are compiled from.
    pub current_revision: Option<String>,
    /// The most recently synced commit, accepted or refused.
    pub last_synced: Option<RevisionRecord>,
    pub triggers: Vec<TriggerView>,
    pub now_unix_ms: u64,
}

impl FleetView {
    pub fn read(api: &DashboardApi) -> anyhow::Result<FleetView> {
        let now = api.clock.now_unix_ms();
        let nodes = api
            .store
            .nodes()?
            .into_iter()
            .map(|node| api.fleet.current(node, now))
            .collect();
        let last_synced = api
            .store
            .revisions()?
            .into_iter()
            .max_by_key(|r| r.synced_unix_ms);
        Ok(FleetView {
            nodes,
            current_revision: api.revision.current().map(|r| r.commit),
            last_synced,
            triggers: triggers_in_progress(&*api.store),
            now_unix_ms: api.clock.now_unix_ms(),
        })
    }
}

/// The fleet page's body.
pub fn render_fleet(view: &FleetView, filter: &FleetFilter) -> String {
    let mut html = String::with_capacity(256 * view.nodes.len().min(NODE_ROWS) + 8192);
    let states: Vec<NodeState> = view.nodes.iter().map(NodeState::of).collect();

    html.push_str("<header><h1>cms fleet</h1><form method=\"post\" action=\"/dashboard/logout\"><button type=\"submit\">Log out</button></form></header>");

    // Totals by status.
    let mut totals: BTreeMap<NodeState, usize> = BTreeMap::new();
    for state in &states {
        *totals.entry(*state).or_default() += 1;
    }
    html.push_str("<section class=\"totals\">");
    let _ = write!(
        html,
        "<a class=\"total\" href=\"/dashboard\"><b>{}</b> nodes</a>",
        view.nodes.len()
    );
    for state in NodeState::ALL {
        let _ = write!(
            html,
            "<a class=\"total {s}\" href=\"/dashboard?status={s}\"><b>{}</b> {s}</a>",
            totals.get(&state).copied().unwrap_or_default(),
            s = state.as_str()
        );
    }
    html.push_str("</section>");

    // The roles revision and its problems.
    html.push_str("<section><h2>Roles revision</h2>");
    match &view.current_revision {
        Some(commit) => {
            let _ = write!(
                html,
                "<p>Serving <code class=\"revision\">{}</code>.</p>",
                escape(commit)
            );
        }
        None => html.push_str(
            "<p class=\"error\">No valid revision yet: nodes get no catalog until a commit validates.</p>",
        ),
    }
    if let Some(last) = &view.last_synced {
        if last.accepted {
            let _ = write!(
                html,
                "<p class=\"muted\">Last synced {}.</p>",
                escape(&format_time(last.synced_unix_ms))
            );
        } else {
            let _ = write!(
                html,
                "<p class=\"error\">Refused <code>{}</code> at {}: {} problem(s); the last good revision stays.</p><table><thead><tr><th>File</th><th>Line</th><th>Column</th><th>Problem</th></tr></thead><tbody>",
                escape(&last.commit),
                escape(&format_time(last.synced_unix_ms)),
                last.errors.len()
            );
            for error in &last.errors {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&error.file),
                    error.line,
                    error.column,
                    escape(&error.message)
                );
            }
            html.push_str("</tbody></table>");
        }
    }
    html.push_str("</section>");

    // Triggers.
    html.push_str("<section><h2>Triggers</h2>");
    if view.triggers.is_empty() {
        html.push_str("<p class=\"muted\" id=\"no-triggers\">No triggers in progress.</p>");
    } else {
        html.push_str("<table><thead><tr><th>Trigger</th><th>Selector</th><th>State</th><th>Done</th><th>Failed</th><th>Nodes</th></tr></thead><tbody>");
        for trigger in &view.triggers {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&trigger.id),
                escape(&trigger.selector),
                escape(&trigger.state),
                trigger.done,
                trigger.failed,
                trigger.total
            );
        }
        html.push_str("</tbody></table>");
    }
    html.push_str("</section>");

    // Roles by status.
    let mut by_role: BTreeMap<&str, [usize; 5]> = BTreeMap::new();
    for (node, state) in view.nodes.iter().zip(&states) {
        by_role.entry(role_of(node)).or_default()[state_index(*state)] += 1;
    }
    html.push_str("<section><h2>Roles</h2><table><thead><tr><th>Role</th>");
    for state in NodeState::ALL {
        let _ = write!(html, "<th>{}</th>", state.as_str());
    }
    html.push_str("</tr></thead><tbody>");
    for (role, counts) in &by_role {
        let label = if role.is_empty() { "(no role)" } else { role };
        let _ = write!(
            html,
            "<tr><td><a href=\"/dashboard?role={}\">{}</a></td>",
            escape(&url_encode(role)),
            escape(label)
        );
        for (index, count) in counts.iter().enumerate() {
            let class = if *count > 0 && index == 0 {
                " class=\"failed\""
            } else {
                ""
            };
            let _ = write!(html, "<td{class}>{count}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></section>");

    // Revisions the nodes run.
    let mut by_revision: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &view.nodes {
        let revision = node.last_run.as_ref().map_or("", |r| r.revision.as_str());
        *by_revision.entry(revision).or_default() += 1;
    }
    html.push_str("<section><h2>Revisions run</h2><table><thead><tr><th>Revision</th><th>Nodes</th></tr></thead><tbody>");
    let mut revisions: Vec<(&str, usize)> = by_revision.into_iter().collect();
    revisions.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (revision, count) in revisions {
        let label = if revision.is_empty() {
            "(no run yet)".to_string()
        } else if view.current_revision.as_deref() == Some(revision) {
            format!("{} (current)", short(revision))
        } else {
            short(revision).to_string()
        };
        let _ = write!(
            html,
            "<tr><td><code title=\"{}\">{}</code></td><td>{count}</td></tr>",
            escape(revision),
            escape(&label)
        );
    }
    html.push_str("</tbody></table></section>");

    // Nodes, failures first.
    let mut order: Vec<usize> = (0..view.nodes.len())
        .filter(|&i| {
            filter
                .role
                .as_deref()
                .is_none_or(|role| role_of(&view.nodes[i]) == role)
                && filter
                    .status
                    .as_deref()
                    .is_none_or(|status| states[i].as_str() == status)
        })
        .collect();
    order.sort_by(|&a, &b| {
        states[a]
            .cmp(&states[b])
            .then_with(|| role_of(&view.nodes[a]).cmp(role_of(&view.nodes[b])))
            .then_with(|| view.nodes[a].id.cmp(&view.nodes[b].id))
    });
    html.push_str("<section><h2>Nodes</h2>");
    if filter.role.is_some() || filter.status.is_some() {
        let _ = write!(
            html,
            "<p>Filtered: {}{} · <a href=\"/dashboard\">all nodes</a></p>",
            filter
                .role
                .as_deref()
                .map(|r| format!("role {} ", escape(r)))
                .unwrap_or_default(),
            filter
                .status
                .as_deref()
                .map(|s| format!("status {}", escape(s)))
                .unwrap_or_default(),
        );
    }
    if order.len() > NODE_ROWS {
        let _ = write!(
            html,
            "<p class=\"muted\">Showing the first {NODE_ROWS} of {} nodes; filter by role or status to see the others.</p>",
            order.len()
        );
    }
    html.push_str("<table id=\"nodes\"><thead><tr><th>Node</th><th>Role</th><th>Status</th><th>Revision</th><th>Last run</th><th>Changed</th><th>Failed</th><th>Last seen</th></tr></thead><tbody>");
    for &i in order.iter().take(NODE_ROWS) {
        let node = &view.nodes[i];
        let state = states[i];
        let id = escape(&node.id);
        let _ = write!(
            html,
            "<tr class=\"{s}\"><td><a href=\"/dashboard/nodes/{}\">{id}</a></td><td>{}</td><td><span class=\"badge {s}\">{s}</span></td>",
            escape(&url_encode(&node.id)),
            escape(role_of(node)),
            s = state.as_str()
        );
        match &node.last_run {
            Some(run) => {
                let _ = write!(
                    html,
                    "<td><code title=\"{}\">{}</code></td><td>{}</td><td>{}</td><td>{}</td>",
                    escape(&run.revision),
                    escape(short(&run.revision)),
                    escape(&ago(view.now_unix_ms, run.finished_unix_ms)),
                    run.changed,
                    run.failed
                );
            }
            None => html.push_str("<td></td><td>never</td><td></td><td></td>"),
        }
        let _ = write!(
            html,
            "<td>{}</td></tr>",
            escape(&ago(view.now_unix_ms, node.last_seen_unix_ms))
        );
    }
    html.push_str("</tbody></table></section>");
    html
}

fn state_index(state: NodeState) -> usize {
    NodeState::ALL
        .iter()
        .position(|s| *s == state)
        .expect("every state is in ALL")
}

/// A node's page body.
pub fn render_node(node: &NodeRecord, reports: &[StoredReport]) -> String {
    let mut html = String::new();
    let state = NodeState::of(node);
    let _ = write!(
        html,
        "<p><a href=\"/dashboard\">← Fleet</a></p><h1>{} <span class=\"badge {s}\">{s}</span></h1>",
        escape(&node.id),
        s = state.as_str()
    );
    let _ = write!(
        html,
        "<p class=\"muted\">Enrolled {} · last seen {} · certificate {}</p>",
        escape(&format_time(node.first_seen_unix_ms)),
        escape(&format_time(node.last_seen_unix_ms)),
        escape(&node.certificate_serial)
    );
    html.push_str("<section><h2>Tags</h2><table id=\"tags\"><tbody>");
    for (name, value) in &node.tags {
        let _ = write!(
            html,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name),
            escape(value)
        );
    }
    html.push_str("</tbody></table></section>");
    html.push_str("<section><h2>Facts</h2>");
    if node.facts.is_null() {
        html.push_str("<p class=\"muted\">No facts yet.</p>");
    } else {
        let facts = serde_json::to_string_pretty(&node.facts).unwrap_or_default();
        let _ = write!(
            html,
            "<details><summary>Facts</summary><pre id=\"facts\">{}</pre></details>",
            escape(&facts)
        );
    }
    html.push_str("</section><section><h2>Last runs</h2>");
    if reports.is_empty() {
        html.push_str("<p class=\"muted\">No runs reported yet.</p>");
    }
    for report in reports {
        render_run(&mut html, report);
    }
    html.push_str("</section>");
    html
}

fn render_run(html: &mut String, report: &StoredReport) {
    let run = &report.report;
    let resources = &run.resources;
    let (changed, failed, skipped) = (
        run.count(ResourceStatus::Changed),
        run.count(ResourceStatus::Failed),
        run.count(ResourceStatus::Skipped),
    );
    let class = if failed > 0 {
        "failed"
    } else if changed > 0 {
        "changed"
    } else {
        "unchanged"
    };
    let _ = write!(
        html,
        "<details class=\"run {class}\"{}><summary><span class=\"badge {class}\">{class}</span> {} · {} ms · {changed} changed, {failed} failed, {skipped} skipped of {}{} · revision <code>{}</code></summary>",
        if failed > 0 || changed > 0 {
            " open"
        } else {
            ""
        },
        escape(&format_time(run.started_at_unix_ms.max(0) as u64)),
        run.duration_ms,
        resources.len(),
        if run.noop { " · noop" } else { "" },
        escape(short(&run.revision))
    );
    let _ = write!(
        html,
        "<p class=\"muted\">Run {} · catalog <code>{}</code>{}</p>",
        escape(&report.run_id),
        escape(short(&run.catalog_id)),
        if run.note.is_empty() {
            String::new()
        } else {
            format!(" · {}", escape(&run.note))
        }
    );
    html.push_str("<table class=\"resources\"><tbody>");
    for resource in resources {
        if resource.status == ResourceStatus::Unchanged {
            continue;
        }
        let _ = write!(
            html,
            "<tr class=\"{s}\"><td><span class=\"badge {s}\">{s}</span></td><td><code>{}</code>",
            escape(&resource.reference),
            s = escape(resource.status.as_str())
        );
        if !resource.error.is_empty() {
            let _ = write!(
                html,
                "<pre class=\"error\">{}</pre>",
                escape(&resource.error)
            );
        }
        if !resource.diff.is_empty() {
            let _ = write!(html, "<pre class=\"diff\">{}</pre>", escape(&resource.diff));
        }
        html.push_str("</td></tr>");
    }
    let unchanged = resources.len() - changed - failed - skipped;
    let _ = write!(
        html,
        "</tbody></table><p class=\"muted\">{unchanged} resource(s) unchanged.</p></details>"
    );
}

/// A whole page around `body`, with its inline style.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · cms</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        escape(title)
    )
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:1200px;margin:0 auto;padding:16px 24px}\
header{display:flex;justify-content:space-between;align-items:center}\
h1{font-size:22px}h2{font-size:16px;margin:24px 0 8px}\
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 16px;margin:12px 0}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}\
th{font-weight:600;color:#4a5263}a{color:#1a5fb4}\
code{font:12px ui-monospace,monospace}pre{font:12px/1.35 ui-monospace,monospace;background:#f3f4f6;padding:8px;overflow-x:auto;white-space:pre-wrap;margin:4px 0}\
.totals{display:flex;gap:12px;flex-wrap:wrap;background:none;border:none;padding:0}\
.total{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 16px;text-decoration:none;color:inherit}.total b{font-size:20px;display:block}\
.badge{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;background:#e5e7eb}\
.badge.failed,.total.failed b,td.failed{color:#fff;background:#c01c28}.total.failed b{background:none;color:#c01c28}\
.badge.changed{background:#f6d32d}.badge.unchanged{background:#8ff0a4}.badge.gone{background:#c0bfbc}\
tr.failed td:first-child{border-left:4px solid #c01c28}\
#tags th{width:25%}.error{color:#a51d2d}.muted{color:#6b7280}\
.login{display:flex;gap:8px;align-items:center}.login input{flex:1;padding:6px}\
details.run{border:1px solid #eef0f3;border-radius:4px;margin:8px 0;padding:4px 8px}";

/// `text` with the characters that mean something in HTML replaced, for
/// element content and quoted attribute values alike.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Percent-encodes `text` for a path segment or query value.
fn url_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The first 12 characters of a commit or catalog id.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// How long ago `then` was, in words.
fn ago(now_unix_ms: u64, then_unix_ms: u64) -> String {
    if then_unix_ms == 0 {
        return "never".into();
    }
    let seconds = now_unix_ms.saturating_sub(then_unix_ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86400),
    }
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let days = (seconds / 86400) as i64;
    let rest = seconds % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NodeStatus, RunSummary};

    fn node(id: &str, role: &str, failed: Option<u32>) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            tags: [("role".to_string(), role.to_string())].into(),
            facts: serde_json::json!({"os": "<script>alert(1)</script>"}),
            certificate_serial: "01".into(),
            first_seen_unix_ms: 1,
            last_seen_unix_ms: 2,
            last_run: failed.map(|failed| RunSummary {
                run_id: "r".into(),
                finished_unix_ms: 3,
                catalog_id: "c".into(),
                revision: "abc".into(),
                changed: 0,
                failed,
                skipped: 0,
                noop: false,
            }),
            status: NodeStatus::Active,
            gone_since_unix_ms: None,
            attested: Default::default(),
            environment: String::new(),
        }
    }

    #[test]
    fn text_from_nodes_is_escaped_in_every_page() {
        let mut evil = node("n1", "<img src=x onerror=alert(1)>", Some(1));
        evil.tags.insert("env\"><b>".into(), "'x'&".into());
        let view = FleetView {
            nodes: vec![evil.clone()],
            current_revision: None,
            last_synced: None,
            triggers: Vec::new(),
            now_unix_ms: 10,
        };
        let fleet = render_fleet(&view, &FleetFilter::default());
        assert!(!fleet.contains("<img"), "{fleet}");
        assert!(fleet.contains("&lt;img src=x onerror=alert(1)&gt;"));
        let report = StoredReport {
            node_id: "n1".into(),
            run_id: "<run>".into(),
            received_unix_ms: 5,
            report: cms_proto::report::RunRecord {
                version: cms_proto::report::RUN_RECORD_VERSION,
                run_id: "<run>".into(),
                catalog_id: String::new(),
                revision: String::new(),
                started_at_unix_ms: 0,
                duration_ms: 0,
                noop: false,
                note: String::new(),
                trigger_id: String::new(),
                resources: vec![cms_proto::report::ResourceRecord {
                    reference: "file:/etc/<x>".into(),
                    status: ResourceStatus::Changed,
                    diff: "+<script>alert(2)</script>".into(),
                    error: String::new(),
                    duration_ms: 0,
                }],
            },
        };
        let page = render_node(&evil, &[report]);
        for raw in ["<script", "<b>", "<img", "<run>", "<x>"] {
            assert!(!page.contains(raw), "{raw} is not escaped in:\n{page}");
        }
        assert!(page.contains("+&lt;script&gt;alert(2)&lt;/script&gt;"));
    }

    #[test]
    fn failed_nodes_are_listed_first() {
        let view = FleetView {
            nodes: vec![
                node("a-fine", "web", Some(0)),
                node("b-new", "web", None),
                node("z-broken", "web", Some(2)),
            ],
            current_revision: Some("abc".into()),
            last_synced: None,
            triggers: Vec::new(),
            now_unix_ms: 10,
        };
        let html = render_fleet(&view, &FleetFilter::default());
        let table = &html[html.find("id=\"nodes\"").expect("node table")..];
        let broken = table.find("z-broken").expect("listed");
        let new = table.find("b-new").expect("listed");
        let fine = table.find("a-fine").expect("listed");
        assert!(broken < new && new < fine, "{table}");
    }

    #[test]
    fn a_refused_commit_shows_its_validation_errors_beside_the_revision_still_served() {
        let view = FleetView {
            nodes: Vec::new(),
            current_revision: Some("good".into()),
            last_synced: Some(RevisionRecord {
                commit: "bad".into(),
                accepted: false,
                errors: vec![crate::store::RevisionError {
                    file: "roles/web.toml".into(),
                    line: 3,
                    column: 1,
                    message: "unknown field `mdoe` <here>".into(),
                }],
                synced_unix_ms: 0,
            }),
            triggers: Vec::new(),
            now_unix_ms: 10,
        };
        let html = render_fleet(&view, &FleetFilter::default());
        assert!(
            html.contains("Serving <code class=\"revision\">good</code>"),
            "{html}"
        );
        assert!(html.contains("Refused <code>bad</code>"), "{html}");
        assert!(
            html.contains("<td>roles/web.toml</td><td>3</td><td>1</td><td>unknown field `mdoe` &lt;here&gt;</td>"),
            "{html}"
        );
        assert!(html.contains("No triggers in progress."), "{html}");
    }

    #[test]
    fn times_are_shown_as_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time(1_764_107_407_000), "2025-11-25 21:50:07 UTC");
    }

    #[test]
    fn running_triggers_come_first_then_the_latest_finished_ones() {
        use crate::store::{TriggerOutcome, TriggerRecord};
        let record = |id: &str, state: &str, started: u64| TriggerRecord {
            id: id.into(),
            selector: [("role".to_string(), "web".to_string())].into(),
            batch: String::new(),
            canary: 0,
            noop: false,
            max_failures: 0,
            state: state.into(),
            message: String::new(),
            started_unix_ms: started,
            finished_unix_ms: None,
            batches: vec![vec!["a".into()], vec!["b".into(), "c".into()]],
            batches_started: 1,
            outcomes: [(
                "a".to_string(),
                TriggerOutcome {
                    result: "failed".into(),
                    run_id: "r".into(),
                    failed_resources: vec!["exec:x".into()],
                    revision: String::new(),
                },
            )]
            .into(),
        };
        let mut records: Vec<TriggerRecord> = (0..8)
            .map(|i| record(&format!("done{i}"), "done", i))
            .collect();
        records.push(record("old-running", "running", 0));
        let views = trigger_views(records);
        assert_eq!(views[0].id, "old-running");
        assert_eq!(views[1].id, "done7");
        assert_eq!(views.len(), 1 + FINISHED_TRIGGERS_SHOWN);
        assert_eq!(
            (
                views[0].selector.as_str(),
                views[0].done,
                views[0].failed,
                views[0].total
            ),
            ("role=web", 1, 1, 3)
        );
    }
}
