//! The fleet dashboard: read-only HTML pages served on the HTTP port.
//!
//! - `GET /dashboard`: the fleet at a glance — nodes by role and status, the
//!   revision each runs, the roles revision and its validation errors, each
//!   environment with its stable revision, pins and active (else latest)
//!   rollout (its waves and each node's result, failures, rollback
//!   outcomes, stored fleet diff), the triggers in progress, and every node
//!   with failures first (`?role=` and `?status=` filter).
//! - `GET /dashboard/nodes/{id}`: a node's tags, facts and last runs with
//!   their diffs.
//! - `GET`/`POST /dashboard/login`, `POST /dashboard/logout`.
//!
//! **Access.** Only an admin may look: the login form takes a dashboard
//! token (made by `cms-server dashboard-token`, an admin call, shown once;
//! the server keeps only its sha256, in the store, so a token made through
//! one replica signs in on all and one revoked on any signs in on none:
//! see `dashboard_tokens`) and answers with a session cookie (`Secure`,
//! `HttpOnly`, `SameSite=Strict`, 12 hours; the server keeps only the
//! session's sha256, expiry and token's hash, in the store, so that every
//! replica of a shared store honours it and a logout on one ends it on
//! all). A session is tied to its token: revoking the token refuses its
//! next logins and ends the sessions it opened, on every replica. A store
//! that cannot answer refuses the login, with a warning in the log. The
//! dashboard is served only when the HTTP port speaks TLS (`--http-tls`,
//! with the server's certificate from its CA), so neither the token nor
//! the cookie crosses the network in the clear; without TLS every
//! dashboard page answers 403 saying so. Anything else is 401 with the
//! login form.
//!
//! **Untrusted input.** Tags, facts, diffs, errors and node ids come from
//! nodes; branch names, commit ids, wave names, rollout messages and the
//! fleet diff come from the repository: every piece of text goes through
//! `escape` on its way into the page. The pages have no script and no external asset;
//! the Content-Security-Policy forbids both.
//!
//! Rendering is plain string building: `render_fleet` over 10,000 nodes is
//! measured by `cargo bench -p cms-server --bench dashboard`
//! (docs/BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use cms_proto::report::ResourceStatus;

use crate::clock::SharedClock;
use crate::dashboard_tokens::DashboardTokens;
use crate::fleet::Fleet;
use crate::node_state::{NodeState, role_of};
use crate::revision::ServingRevision;
use cms_roles::digest::sha256_hex;

use crate::environments::Environments;
use crate::store::{
    EnvironmentRecord, NodeRecord, PinRecord, RevisionRecord, RolloutRecord, SharedStore, Store,
    StoredReport, TriggerOutcome,
};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cms_session";
/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many nodes are listed on the fleet page; filters narrow it.
pub const NODE_ROWS: usize = 2000;
/// Runs shown on a node's page.
pub const NODE_RUNS: usize = 10;

/// Checks login tokens against the store off the async workers: a store
/// that cannot answer says no, with a warning, as [`Sessions`] does.
#[derive(Debug, Clone)]
struct Tokens(DashboardTokens);

impl Tokens {
    async fn is_valid(&self, secret: String) -> bool {
        let tokens = self.0.clone();
        store_says_yes("a dashboard token", move || tokens.is_valid(&secret)).await
    }
}

/// Asks the store a yes-or-no question (`check`) off the async workers; a
/// store that cannot answer says no, and the warning names `what` was read.
async fn store_says_yes(
    what: &str,
    check: impl FnOnce() -> Result<bool, crate::store::StoreError> + Send + 'static,
) -> bool {
    match tokio::task::spawn_blocking(check).await {
        Ok(Ok(yes)) => yes,
        Ok(Err(error)) => {
            tracing::warn!(
                "Failed to read {what}: {}",
                crate::store::error_chain(&error)
            );
            false
        }
        Err(error) => {
            tracing::warn!("Failed to read {what}: {error}");
            false
        }
    }
}

/// Logged-in sessions, kept in the store so that every replica of a
/// shared store knows every session: the sha256 of the cookie value and
/// when it expires (wall-clock time, which the replicas share).
#[derive(Debug, Clone)]
pub struct Sessions {
    store: SharedStore,
    clock: SharedClock,
}

impl Sessions {
    /// Opens a session for whoever signed in with the token whose hash is
    /// `token_hash`: it ends when that token is revoked.
    async fn open(&self, token_hash: String) -> anyhow::Result<String> {
        let secret = create_session_secret()?;
        let (store, hash) = (self.store.clone(), sha256_hex(secret.as_bytes()));
        let now = self.clock.now_unix_ms();
        let expires = now + SESSION_LIFETIME.as_millis() as u64;
        tokio::task::spawn_blocking(move || store.open_session(&hash, &token_hash, expires, now))
            .await??;
        Ok(secret)
    }

    /// Whether `secret` is a live session; a store that cannot answer
    /// says no (the page asks to sign in, which fails the same way).
    async fn is_valid(&self, secret: &str) -> bool {
        let (store, hash) = (self.store.clone(), sha256_hex(secret.as_bytes()));
        let now = self.clock.now_unix_ms();
        store_says_yes("a dashboard session", move || {
            store.session_is_valid(&hash, now)
        })
        .await
    }

    async fn close(&self, secret: &str) {
        let (store, hash) = (self.store.clone(), sha256_hex(secret.as_bytes()));
        match tokio::task::spawn_blocking(move || store.close_session(&hash)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(
                "Failed to end a dashboard session: {}",
                crate::store::error_chain(&error)
            ),
            Err(error) => tracing::warn!("Failed to end a dashboard session: {error}"),
        }
    }
}

fn create_session_secret() -> anyhow::Result<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the dashboard reads: narrow handles.
#[derive(Debug, Clone)]
pub struct DashboardApi {
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    pub revision: Arc<ServingRevision>,
    /// The environments followed: names, branches and the revision each
    /// serves; their rollouts and pins are read from the store.
    pub environments: Arc<Environments>,
    pub clock: SharedClock,
    /// The login tokens, in the store.
    pub tokens: DashboardTokens,
}

#[derive(Debug)]
struct Dashboard {
    api: DashboardApi,
    tokens: Tokens,
    sessions: Sessions,
    /// Whether the HTTP port speaks TLS; the dashboard is off without it.
    tls: bool,
}

/// The dashboard's routes, to merge into the HTTP router.
pub fn router(api: DashboardApi, tls: bool) -> Router {
    let sessions = Sessions {
        store: api.store.clone(),
        clock: api.clock.clone(),
    };
    let tokens = Tokens(api.tokens.clone());
    let dashboard = Arc::new(Dashboard {
        api,
        tokens,
        sessions,
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
async fn refusal(dashboard: &Dashboard, headers: &HeaderMap) -> Option<Response> {
    if !dashboard.tls {
        return Some(page_response(
            StatusCode::FORBIDDEN,
            "Dashboard off",
            "<h1>The dashboard is off</h1><p>It is served only over TLS, so that the admin token and the session never cross the network in the clear: start the server with <code>--http-tls</code>.</p>".into(),
            None,
        ));
    }
    match session_cookie(headers) {
        Some(secret) if dashboard.sessions.is_valid(secret).await => None,
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
        return refusal(&dashboard, &HeaderMap::new())
            .await
            .expect("off without TLS");
    }
    login_response(StatusCode::OK, None)
}

#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(dashboard): State<Arc<Dashboard>>, Form(form): Form<LoginForm>) -> Response {
    if !dashboard.tls {
        return refusal(&dashboard, &HeaderMap::new())
            .await
            .expect("off without TLS");
    }
    let token_hash = crate::dashboard_tokens::token_hash(&form.token);
    if !dashboard.tokens.is_valid(form.token).await {
        tracing::warn!("refused a dashboard login with an unknown token");
        return login_response(StatusCode::UNAUTHORIZED, Some("That token is not valid."));
    }
    let secret = match dashboard.sessions.open(token_hash).await {
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
        dashboard.sessions.close(secret).await;
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
    if let Some(refused) = refusal(&dashboard, &headers).await {
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
    if let Some(refused) = refusal(&dashboard, &headers).await {
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
            let (done, failed) = outcome_counts(record.outcomes.values());
            TriggerView {
                id: record.id.clone(),
                selector: selector_text(&record.selector),
                state: record.state.clone(),
                done,
                failed,
                total: record.batches.iter().map(Vec::len).sum::<usize>() as u32,
            }
        })
        .collect()
}

/// How many of `outcomes` are known, and how many of those are failures
/// (a failed run or no report), for a trigger or a rollout's wave.
fn outcome_counts<'a>(outcomes: impl Iterator<Item = &'a TriggerOutcome>) -> (u32, u32) {
    outcomes.fold((0, 0), |(done, failed), outcome| {
        (done + 1, failed + u32::from(is_failure(outcome)))
    })
}

/// Whether a node's outcome counts against a trigger or a rollout.
fn is_failure(outcome: &TriggerOutcome) -> bool {
    outcome.result == "failed" || outcome.result == "unreachable"
}

/// An environment as the fleet page shows it.
#[derive(Debug, Clone)]
pub struct EnvironmentView {
    pub name: String,
    pub branch: String,
    /// Whether nodes with no environment tag go here.
    pub default: bool,
    /// The commit its nodes get unless moved or pinned; empty until one
    /// validates.
    pub stable: String,
    /// An accepted commit waiting for the active rollout to end.
    pub pending: Option<String>,
    pub pins: Vec<PinRecord>,
    /// The active rollout, else the latest one.
    pub rollout: Option<RolloutRecord>,
}

impl EnvironmentView {
    /// The view of an environment from its stored record; `stable` is the
    /// revision it serves now (the record's when not given).
    pub fn new(
        name: &str,
        branch: &str,
        default: bool,
        stable: Option<String>,
        pending: Option<String>,
        record: EnvironmentRecord,
    ) -> EnvironmentView {
        let rollout = record.active().or_else(|| record.rollouts.last()).cloned();
        EnvironmentView {
            name: name.to_string(),
            branch: branch.to_string(),
            default,
            stable: stable
                .filter(|commit| !commit.is_empty())
                .unwrap_or(record.stable),
            pending,
            pins: record.pins,
            rollout,
        }
    }
}

/// Every environment with its stored record. Blocks (reads the store).
fn environment_views(api: &DashboardApi) -> anyhow::Result<Vec<EnvironmentView>> {
    let default = api.environments.config().default_name();
    api.environments
        .iter()
        .map(|environment| {
            let record = api
                .store
                .environment(&environment.name)?
                .unwrap_or_default();
            let pending = environment
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|revision| revision.commit.clone());
            Ok(EnvironmentView::new(
                &environment.name,
                &environment.branch,
                environment.name == default,
                environment.stable.current().map(|revision| revision.commit),
                pending,
                record,
            ))
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
    /// Every environment, by name.
    pub environments: Vec<EnvironmentView>,
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
            environments: environment_views(api)?,
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

    // Environments and their rollouts.
    for environment in &view.environments {
        render_environment(&mut html, environment);
    }

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

/// A fleet diff longer than this many lines (or [`DIFF_CHARS_SHOWN`]
/// characters) is shown collapsed.
const DIFF_LINES_SHOWN: usize = 40;
const DIFF_CHARS_SHOWN: usize = 4000;

/// An environment's section of the fleet page: its branch, stable
/// revision, waiting commit, pins, and its active (else latest) rollout.
fn render_environment(html: &mut String, environment: &EnvironmentView) {
    let _ = write!(
        html,
        "<section class=\"environment\"><h2>Environment {}{}</h2><p>Branch <code>{}</code> · ",
        escape(&environment.name),
        if environment.default {
            " <span class=\"muted\">(default)</span>"
        } else {
            ""
        },
        escape(&environment.branch)
    );
    if environment.stable.is_empty() {
        html.push_str("<span class=\"error\">no stable revision yet: its nodes get no catalog until a commit validates</span>");
    } else {
        let _ = write!(
            html,
            "stable <code class=\"stable\" title=\"{}\">{}</code>",
            escape(&environment.stable),
            escape(short(&environment.stable))
        );
    }
    if let Some(pending) = &environment.pending {
        let _ = write!(
            html,
            " · waiting <code title=\"{}\">{}</code>",
            escape(pending),
            escape(short(pending))
        );
    }
    html.push_str("</p>");

    if environment.pins.is_empty() {
        html.push_str("<p class=\"muted\">No pins.</p>");
    } else {
        html.push_str("<h3>Pins</h3><table class=\"pins\"><thead><tr><th>Selector</th><th>Held on</th><th>By</th><th>Since</th></tr></thead><tbody>");
        for pin in &environment.pins {
            let _ = write!(
                html,
                "<tr><td>{}</td><td><code title=\"{}\">{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&selector_text(&pin.selector)),
                escape(&pin.commit),
                escape(short(&pin.commit)),
                escape(&pin.created_by),
                escape(&format_time(pin.created_unix_ms))
            );
        }
        html.push_str("</tbody></table>");
    }

    match &environment.rollout {
        Some(rollout) => render_rollout(html, rollout),
        None => html.push_str("<p class=\"muted\">No rollout yet.</p>"),
    }
    html.push_str("</section>");
}

/// A rollout: where it stands, each wave with its nodes' results, its
/// failures, the rollback's outcomes and the fleet diff stored at start.
fn render_rollout(html: &mut String, rollout: &RolloutRecord) {
    let active = rollout.is_active();
    let _ = write!(
        html,
        "<h3>{} rollout <code>{}</code> <span class=\"badge {}\">{}</span></h3><p><code title=\"{}\">{}</code> → <code title=\"{}\">{}</code> · started {}",
        if active { "Active" } else { "Latest" },
        escape(&rollout.id),
        rollout_state_class(&rollout.state),
        escape(&rollout.state),
        escape(&rollout.from),
        escape(short(&rollout.from)),
        escape(&rollout.to),
        escape(short(&rollout.to)),
        escape(&format_time(rollout.started_unix_ms))
    );
    if let Some(finished) = rollout.finished_unix_ms {
        let _ = write!(html, " · ended {}", escape(&format_time(finished)));
    }
    if let Some(bake_until) = rollout.bake_until_unix_ms.filter(|_| active) {
        let _ = write!(html, " · next wave at {}", escape(&format_time(bake_until)));
    }
    html.push_str("</p>");
    if !rollout.message.is_empty() {
        let _ = write!(
            html,
            "<p class=\"message\">{}</p>",
            escape(&rollout.message)
        );
    }
    let policy = &rollout.policy;
    let in_waves: usize = rollout.waves.iter().map(|wave| wave.nodes.len()).sum();
    let _ = write!(
        html,
        "<p class=\"muted\">Policy: canary {}, batch {}, bake {}, max_failures {}, timeout {} · {} unchanged (moved at once), {} pinned (passed by), {in_waves} in {} wave(s) · failures: {} of {} allowed</p>",
        policy.canary,
        escape(if policy.batch.is_empty() {
            "the rest at once"
        } else {
            &policy.batch
        }),
        duration_text(policy.bake_ms),
        policy.max_failures,
        duration_text(policy.timeout_ms),
        rollout.unchanged_nodes,
        rollout.pinned_nodes.len(),
        rollout.waves.len(),
        rollout.failures,
        policy.max_failures
    );

    // Waves, like the trigger section's counts, each with its nodes.
    if rollout.waves.is_empty() {
        html.push_str("<p class=\"muted\">No wave: no node's catalog changes.</p>");
    } else {
        html.push_str("<table class=\"waves\"><thead><tr><th>Wave</th><th>State</th><th>Done</th><th>Failed</th><th>Nodes</th></tr></thead><tbody>");
        for wave in &rollout.waves {
            let (done, failed) = outcome_counts(wave.outcomes.values());
            let state = match (wave.started_unix_ms, wave.finished_unix_ms) {
                (_, Some(finished)) => format!("finished {}", format_time(finished)),
                (Some(_), None) if active => "running".to_string(),
                (Some(_), None) => "stopped".to_string(),
                (None, None) => "pending".to_string(),
            };
            let _ = write!(
                html,
                "<tr{}><td>{}</td><td>{}</td><td>{done}</td><td>{failed}</td><td>{}</td></tr>",
                if failed > 0 { " class=\"failed\"" } else { "" },
                escape(&wave.name),
                escape(&state),
                wave.nodes.len()
            );
        }
        html.push_str("</tbody></table>");
        for wave in &rollout.waves {
            let (_, failed) = outcome_counts(wave.outcomes.values());
            let running =
                active && wave.started_unix_ms.is_some() && wave.finished_unix_ms.is_none();
            let _ = write!(
                html,
                "<details class=\"run wave\"{}><summary>{}: {} node(s)</summary><table class=\"nodes\"><tbody>",
                if failed > 0 || running { " open" } else { "" },
                escape(&wave.name),
                wave.nodes.len()
            );
            for node in &wave.nodes {
                let result = match wave.outcomes.get(node) {
                    Some(outcome) => outcome.result.as_str(),
                    None if running => "running",
                    None => "pending",
                };
                render_node_outcome(html, node, result, wave.outcomes.get(node));
            }
            html.push_str("</tbody></table></details>");
        }
    }

    // Failures, across the waves.
    let failures: Vec<(&str, &String, &TriggerOutcome)> = rollout
        .waves
        .iter()
        .flat_map(|wave| {
            wave.outcomes
                .iter()
                .filter(|(_, outcome)| is_failure(outcome))
                .map(move |(node, outcome)| (wave.name.as_str(), node, outcome))
        })
        .collect();
    if !failures.is_empty() {
        html.push_str("<h3>Failures</h3><table class=\"failures\"><thead><tr><th>Node</th><th>Wave</th><th>Result</th><th>Why</th></tr></thead><tbody>");
        for (wave, node, outcome) in failures {
            let _ = write!(
                html,
                "<tr class=\"failed\"><td>{}</td><td>{}</td><td><span class=\"badge {r}\">{r}</span></td><td>{}</td></tr>",
                node_link(node),
                escape(wave),
                outcome_detail(outcome),
                r = escape(&outcome.result)
            );
        }
        html.push_str("</tbody></table>");
    }

    // The rollback's outcomes: the moved nodes' runs back on `from`.
    if !rollout.rollback.is_empty() {
        let _ = write!(
            html,
            "<h3>Rollback to <code>{}</code></h3><table class=\"rollback\"><tbody>",
            escape(short(&rollout.from))
        );
        for (node, outcome) in &rollout.rollback {
            render_node_outcome(html, node, &outcome.result, Some(outcome));
        }
        html.push_str("</tbody></table>");
    }

    if !rollout.actions.is_empty() {
        html.push_str("<h3>Operator actions</h3><ul class=\"actions\">");
        for action in &rollout.actions {
            let _ = write!(html, "<li>{}</li>", escape(action));
        }
        html.push_str("</ul>");
    }

    // The fleet diff stored at start, sensitive values already redacted.
    let diff = rollout.diff_summary.trim_end();
    if diff.is_empty() {
        html.push_str("<p class=\"muted\">No fleet diff stored.</p>");
    } else {
        let lines = diff.lines().count();
        if lines > DIFF_LINES_SHOWN || diff.len() > DIFF_CHARS_SHOWN {
            let _ = write!(
                html,
                "<details class=\"diff\"><summary>Fleet diff ({lines} lines)</summary><pre class=\"diff\">{}</pre></details>",
                escape(diff)
            );
        } else {
            let _ = write!(
                html,
                "<h3>Fleet diff</h3><pre class=\"diff\">{}</pre>",
                escape(diff)
            );
        }
    }
}

/// One node's row in a wave or the rollback: its link, its result as a
/// badge, and why it failed or which run it was.
fn render_node_outcome(
    html: &mut String,
    node: &str,
    result: &str,
    outcome: Option<&TriggerOutcome>,
) {
    let _ = write!(
        html,
        "<tr{}><td>{}</td><td><span class=\"badge {r}\">{r}</span></td><td>{}</td></tr>",
        if result == "failed" || result == "unreachable" {
            " class=\"failed\""
        } else {
            ""
        },
        node_link(node),
        outcome.map(outcome_detail).unwrap_or_default(),
        r = escape(result)
    );
}

/// What to say of an outcome beside its result: the failed resources, no
/// report, or the run.
fn outcome_detail(outcome: &TriggerOutcome) -> String {
    if !outcome.failed_resources.is_empty() {
        escape(&outcome.failed_resources.join("; "))
    } else if outcome.result == "unreachable" {
        "no report".to_string()
    } else if outcome.run_id.is_empty() {
        String::new()
    } else {
        format!(
            "<span class=\"muted\">run {}{}</span>",
            escape(&outcome.run_id),
            if outcome.revision.is_empty() {
                String::new()
            } else {
                format!(" at <code>{}</code>", escape(short(&outcome.revision)))
            }
        )
    }
}

/// A link to a node's page.
fn node_link(node: &str) -> String {
    format!(
        "<a href=\"/dashboard/nodes/{}\">{}</a>",
        escape(&url_encode(node)),
        escape(node)
    )
}

/// The badge colour of a rollout's state: red when it was refused, green
/// when it went through, yellow while it goes on.
fn rollout_state_class(state: &str) -> &'static str {
    match state {
        "rolled_back" | "aborted" | "rolling_back" => "failed",
        "done" | "promoted" => "unchanged",
        _ => "changed",
    }
}

/// A selector as written on the command line: `role=api,env=prod`.
fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A duration in ms as `cms.toml` writes it: `2m`, `30s`, `1h`.
fn duration_text(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0 => "0s".to_string(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
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
.badge.failed,.badge.unreachable,.total.failed b,td.failed{color:#fff;background:#c01c28}.total.failed b{background:none;color:#c01c28}\
.badge.changed{background:#f6d32d}.badge.unchanged{background:#8ff0a4}.badge.gone{background:#c0bfbc}\
tr.failed td:first-child{border-left:4px solid #c01c28}\
#tags th{width:25%}.error{color:#a51d2d}.muted{color:#6b7280}\
.login{display:flex;gap:8px;align-items:center}.login input{flex:1;padding:6px}\
details.run{border:1px solid #eef0f3;border-radius:4px;margin:8px 0;padding:4px 8px}\
h3{font-size:14px;margin:16px 0 6px}.message{font-weight:600}";

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
            environments: Vec::new(),
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
            environments: Vec::new(),
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
            environments: Vec::new(),
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

    fn outcome(result: &str, failed_resources: &[&str]) -> TriggerOutcome {
        TriggerOutcome {
            result: result.into(),
            run_id: format!("run-{result}"),
            failed_resources: failed_resources.iter().map(|r| r.to_string()).collect(),
            revision: String::new(),
            reason: String::new(),
        }
    }

    fn rolled_back_rollout(diff_summary: &str) -> RolloutRecord {
        use crate::store::{RolloutPolicyRecord, WaveRecord};
        RolloutRecord {
            id: "r1764739200000".into(),
            environment: "production".into(),
            from: "3f2a9c1e0b7d11112222333344445555aaaabbbb".into(),
            to: "8be04d2a99887766554433221100ffeeddccbbaa".into(),
            state: "rolled_back".into(),
            message: "wave 2: 2 failures, 1 allowed; rolled back".into(),
            policy: RolloutPolicyRecord {
                canary: 1,
                batch: "50%".into(),
                bake_ms: 120_000,
                max_failures: 1,
                timeout_ms: 600_000,
            },
            waves: vec![
                WaveRecord {
                    name: "canary".into(),
                    nodes: vec!["api-1".into()],
                    outcomes: [("api-1".to_string(), outcome("changed", &[]))].into(),
                    started_unix_ms: Some(1_000),
                    finished_unix_ms: Some(2_000),
                },
                WaveRecord {
                    name: "wave 2".into(),
                    nodes: vec!["api-2".into(), "api-3".into()],
                    outcomes: [
                        (
                            "api-2".to_string(),
                            outcome("failed", &["java_app:orders <health>"]),
                        ),
                        ("api-3".to_string(), outcome("unreachable", &[])),
                    ]
                    .into(),
                    started_unix_ms: Some(3_000),
                    finished_unix_ms: Some(4_000),
                },
                WaveRecord {
                    name: "wave 3".into(),
                    nodes: vec!["api-4".into()],
                    outcomes: BTreeMap::new(),
                    started_unix_ms: None,
                    finished_unix_ms: None,
                },
            ],
            waves_started: 2,
            moved: ["api-1", "api-2", "api-3"].map(String::from).into(),
            unchanged_nodes: 5,
            pinned_nodes: vec!["api-9".into()],
            failures: 2,
            diff_summary: diff_summary.into(),
            started_unix_ms: 500,
            finished_unix_ms: Some(5_000),
            bake_until_unix_ms: None,
            rollback: [
                ("api-1".to_string(), outcome("changed", &[])),
                (
                    "api-2".to_string(),
                    outcome("failed", &["exec:restart-orders"]),
                ),
            ]
            .into(),
            actions: Vec::new(),
        }
    }

    #[track_caller]
    fn fleet_page_with(environment: EnvironmentView) -> String {
        let view = FleetView {
            nodes: Vec::new(),
            current_revision: None,
            last_synced: None,
            triggers: Vec::new(),
            environments: vec![environment],
            now_unix_ms: 10_000,
        };
        render_fleet(&view, &FleetFilter::default())
    }

    fn production(record: EnvironmentRecord) -> EnvironmentView {
        EnvironmentView::new("production", "main", true, None, None, record)
    }

    #[test]
    fn a_rollout_shows_each_wave_with_its_nodes_results_failures_and_rollback() {
        let html = fleet_page_with(production(EnvironmentRecord {
            name: "production".into(),
            stable: "3f2a9c1e0b7d11112222333344445555aaaabbbb".into(),
            pins: Vec::new(),
            rollouts: vec![rolled_back_rollout("~ 3 nodes change")],
        }));
        assert!(html.contains("Environment production"), "{html}");
        assert!(
            html.contains("Latest rollout <code>r1764739200000</code> <span class=\"badge failed\">rolled_back</span>"),
            "{html}"
        );
        assert!(html.contains(">3f2a9c1e0b7d</code> → <code"), "{html}");
        assert!(html.contains(">8be04d2a9988</code>"), "{html}");
        assert!(
            html.contains("wave 2: 2 failures, 1 allowed; rolled back"),
            "{html}"
        );
        assert!(
            html.contains("<td>wave 2</td><td>finished 1970-01-01 00:00:04 UTC</td><td>2</td><td>2</td><td>2</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td>wave 3</td><td>pending</td><td>0</td><td>0</td><td>1</td>"),
            "{html}"
        );
        // Each node with its result.
        assert!(
            html.contains("<a href=\"/dashboard/nodes/api-1\">api-1</a></td><td><span class=\"badge changed\">changed</span>"),
            "{html}"
        );
        assert!(
            html.contains("<a href=\"/dashboard/nodes/api-3\">api-3</a></td><td><span class=\"badge unreachable\">unreachable</span></td><td>no report</td>"),
            "{html}"
        );
        assert!(
            html.contains("<a href=\"/dashboard/nodes/api-4\">api-4</a></td><td><span class=\"badge pending\">pending</span>"),
            "{html}"
        );
        // The failures, with why, escaped.
        let failures = &html[html.find("<h3>Failures</h3>").expect("failures")..];
        assert!(
            failures.contains("api-2</a></td><td>wave 2</td><td><span class=\"badge failed\">failed</span></td><td>java_app:orders &lt;health&gt;</td>"),
            "{failures}"
        );
        // The rollback's outcomes.
        let rollback = &html[html
            .find("<h3>Rollback to <code>3f2a9c1e0b7d</code>")
            .expect("rollback")..];
        assert!(
            rollback.contains("api-2</a></td><td><span class=\"badge failed\">failed</span></td><td>exec:restart-orders</td>"),
            "{rollback}"
        );
        assert!(
            html.contains("5 unchanged (moved at once), 1 pinned (passed by), 4 in 3 wave(s) · failures: 2 of 1 allowed"),
            "{html}"
        );
        assert!(
            html.contains("bake 2m, max_failures 1, timeout 10m"),
            "{html}"
        );
    }

    #[test]
    fn the_fleet_diff_of_a_rollout_is_escaped_and_a_long_one_collapsed() {
        let short_diff = "~ web-1\n  file:/etc/motd\n+<script>alert(1)</script>";
        let html = fleet_page_with(production(EnvironmentRecord {
            name: "production".into(),
            stable: "aaaa".into(),
            pins: Vec::new(),
            rollouts: vec![rolled_back_rollout(short_diff)],
        }));
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("<h3>Fleet diff</h3><pre class=\"diff\">~ web-1\n  file:/etc/motd\n+&lt;script&gt;alert(1)&lt;/script&gt;</pre>"),
            "{html}"
        );

        let long_diff = format!("{}+<script>alert(2)</script>", "~ node\n".repeat(100));
        let html = fleet_page_with(production(EnvironmentRecord {
            name: "production".into(),
            stable: "aaaa".into(),
            pins: Vec::new(),
            rollouts: vec![rolled_back_rollout(&long_diff)],
        }));
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("<details class=\"diff\"><summary>Fleet diff (101 lines)</summary><pre class=\"diff\">~ node"),
            "{html}"
        );
        assert!(html.contains("+&lt;script&gt;alert(2)&lt;/script&gt;</pre></details>"));
    }

    #[test]
    fn an_environment_without_rollouts_shows_its_stable_revision_and_pins() {
        let html = fleet_page_with(EnvironmentView::new(
            "staging",
            "staging<b>",
            false,
            Some("8be04d2a99887766554433221100ffeeddccbbaa".into()),
            None,
            EnvironmentRecord {
                name: "staging".into(),
                stable: "8be04d2a99887766554433221100ffeeddccbbaa".into(),
                pins: vec![PinRecord {
                    selector: [("role".to_string(), "api".to_string())].into(),
                    commit: "3f2a9c1e0b7d11112222333344445555aaaabbbb".into(),
                    created_unix_ms: 0,
                    created_by: "alice".into(),
                }],
                rollouts: Vec::new(),
            },
        ));
        assert!(
            html.contains("<h2>Environment staging</h2><p>Branch <code>staging&lt;b&gt;</code> · stable <code class=\"stable\" title=\"8be04d2a99887766554433221100ffeeddccbbaa\">8be04d2a9988</code></p>"),
            "{html}"
        );
        assert!(
            html.contains("<tr><td>role=api</td><td><code title=\"3f2a9c1e0b7d11112222333344445555aaaabbbb\">3f2a9c1e0b7d</code></td><td>alice</td><td>1970-01-01 00:00:00 UTC</td></tr>"),
            "{html}"
        );
        assert!(html.contains("No rollout yet."), "{html}");
    }

    #[test]
    fn the_active_rollout_is_shown_as_active_rather_than_an_earlier_finished_one() {
        let mut done = rolled_back_rollout("");
        done.id = "r1".into();
        done.state = "done".into();
        let mut running = rolled_back_rollout("");
        running.id = "r2".into();
        running.state = "baking".into();
        running.finished_unix_ms = None;
        running.rollback.clear();
        let html = fleet_page_with(production(EnvironmentRecord {
            name: "production".into(),
            stable: "aaaa".into(),
            pins: Vec::new(),
            rollouts: vec![done, running],
        }));
        assert!(
            html.contains(
                "Active rollout <code>r2</code> <span class=\"badge changed\">baking</span>"
            ),
            "{html}"
        );
        assert!(!html.contains("<code>r1</code>"), "{html}");
        assert!(html.contains("No fleet diff stored."), "{html}");
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
                    reason: String::new(),
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
