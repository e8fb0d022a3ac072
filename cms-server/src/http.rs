//! The HTTP side of the server: the git webhook (`POST /hooks/git`, a
//! GitHub or GitLab push checked with the shared secret), a liveness check
//! (`GET /healthz`: `200 ok`, or `503` naming the cause while the store
//! cannot write), Prometheus metrics (`GET /metrics`, see `metrics`) and
//! the fleet dashboard (`/dashboard`, see `dashboard`).
//!
//! Plain HTTP by default; with `ServeConfig::http_tls` the port speaks TLS
//! with the server's certificate (the same as gRPC's, from the server's CA),
//! which the dashboard requires.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::time::Duration;
use tokio::net::TcpListener;

use crate::catalogs::Catalogs;
use crate::dashboard::DashboardApi;
use crate::fleet::Fleet;
use crate::metrics::{Gauges, Metrics};
use crate::revision::{ServingRevision, SyncRequests};
use cms_roles::digest::sha256_hex;

use crate::store::SharedStore;
use crate::webhook::{pushed_branch, verify_github, verify_gitlab};

/// What `GET /metrics` reads: the metrics and the live gauges.
#[derive(Debug, Clone)]
pub struct MetricsApi {
    pub metrics: Arc<Metrics>,
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    pub catalogs: Arc<Catalogs>,
    pub revision: Arc<ServingRevision>,
    /// The restart places held, a gauge per role group.
    pub restart_budget: Arc<crate::restart_budget::RestartBudget>,
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// What `POST /hooks/git` needs.
#[derive(Debug, Clone)]
pub struct WebhookApi {
    pub sync: SyncRequests,
    /// The shared secret; `None` refuses every webhook.
    pub secret: Option<String>,
    /// The branches the environments follow: a push to another is ignored.
    pub branches: Vec<String>,
}

pub async fn serve(
    listener: TcpListener,
    metrics: MetricsApi,
    webhook: WebhookApi,
    dashboard: DashboardApi,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz).with_state(metrics.store.clone()))
        .merge(
            Router::new()
                .route("/hooks/git", post(git_hook))
                .with_state(Arc::new(webhook)),
        )
        .merge(
            Router::new()
                .route("/metrics", get(serve_metrics))
                .with_state(Arc::new(metrics)),
        )
        .merge(crate::dashboard::router(dashboard, tls.is_some()));
    let Some(tls) = tls else {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await?;
        return Ok(());
    };
    // TLS: each connection is handshaken and served in its own task, so a
    // slow client holds up no one; they end with the server.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("Failed to accept an HTTP connection: {error}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {error}");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
    connections.shutdown().await;
    Ok(())
}

/// `GET /healthz`: `ok` while the server can do its work; `503` with the
/// cause while its store cannot write (a full disk), which asking here also
/// tries to recover from, so the check turns healthy again by itself once
/// space returns.
async fn healthz(State(store): State<SharedStore>) -> Response {
    let checked = tokio::task::spawn_blocking(move || store.check_writable()).await;
    match checked {
        Ok(Ok(())) => "ok\n".into_response(),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}\n", crate::store::error_chain(&error)),
        )
            .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: the store check failed: {error}\n"),
        )
            .into_response(),
    }
}

/// `GET /metrics`: open, or with a bearer token when one is configured.
async fn serve_metrics(State(api): State<Arc<MetricsApi>>, headers: HeaderMap) -> Response {
    if let Some(expected) = &api.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.map(|g| sha256_hex(g.as_bytes())) != Some(sha256_hex(expected.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "metrics need the bearer token configured with --metrics-token-file\n",
            )
                .into_response();
        }
    }
    let scrape = api.clone();
    // Reads every node: off the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let nodes = scrape.store.nodes()?;
        Ok::<_, crate::store::StoreError>(scrape.metrics.render(&Gauges {
            nodes,
            revision: scrape.revision.current().map(|r| r.commit),
            cached_catalogs: scrape.catalogs.stats().cached,
            watch_channels: scrape.fleet.connected_count(),
            restart_places: scrape.restart_budget.places_held(),
        }))
    });
    match rendered.await {
        Ok(Ok(text)) => {
            ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
        }
        Ok(Err(error)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Failed to read the store: {error}\n"),
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

async fn git_hook(
    State(api): State<Arc<WebhookApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(secret) = api.secret.clone() else {
        return (
            StatusCode::FORBIDDEN,
            "webhooks are off: start the server with a webhook secret\n".into(),
        );
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = if let Some(signature) = header("x-hub-signature-256") {
        verify_github(secret.as_bytes(), &body, Some(signature))
    } else {
        verify_gitlab(&secret, header("x-gitlab-token"))
    };
    if let Err(error) = verified {
        return (StatusCode::UNAUTHORIZED, format!("{error}\n"));
    }
    if let Some(branch) = pushed_branch(&body)
        && !api.branches.contains(&branch)
    {
        return (
            StatusCode::OK,
            format!(
                "ignored: a push to {branch}, not {}\n",
                api.branches.join(" or ")
            ),
        );
    }
    match api.sync.sync_now().await {
        Ok(response) if response.accepted => {
            (StatusCode::OK, format!("synced {}\n", response.revision))
        }
        Ok(response) => (
            StatusCode::OK,
            format!(
                "refused {}: {} problems; the last good revision stays\n",
                response.revision,
                response.errors.len()
            ),
        ),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error:#}\n")),
    }
}
