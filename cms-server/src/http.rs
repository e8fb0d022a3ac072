//! The HTTP side of the server: the git webhook (`POST /hooks/git`, a
//! GitHub or GitLab push checked with the shared secret) and a liveness
//! check (`GET /healthz`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::server::ServerState;
use crate::webhook::{pushed_branch, verify_github, verify_gitlab};

pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/hooks/git", post(git_hook))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await?;
    Ok(())
}

async fn git_hook(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(secret) = state.config.webhook_secret.clone() else {
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
        && branch != state.config.branch
    {
        return (
            StatusCode::OK,
            format!("ignored: a push to {branch}, not {}\n", state.config.branch),
        );
    }
    match state.sync_now().await {
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
