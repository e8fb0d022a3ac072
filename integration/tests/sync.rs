//! How the real `cms-server serve` keeps up with its roles repository: it
//! syncs when it starts, again on its interval, and when a git webhook
//! (`POST /hooks/git`) proves it knows the shared secret; a webhook that
//! does not is refused and syncs nothing. The revision served is read from
//! the server's own metrics.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_integration::{GitRepo, ServerProcess, build_workspace_binary, wait_until_polling_every};
use sha2::{Digest, Sha256};

const SETTINGS: &str = "[hierarchy]\nlayers = [\"common\"]\n";

/// Long enough that no interval sync happens during a test that does not
/// want one.
const NO_INTERVAL_SYNC: &str = "1h";

const SECRET: &str = "webhook-secret-of-this-test";

fn role(text: &str) -> String {
    format!(
        "[match]\nrole = \"app\"\n\n[[file]]\npath = \"/tmp/never-converged\"\ncontent = \"{text}\\n\"\n"
    )
}

/// A repository with one commit, and the server serving it.
fn start(dir: &Path, sync_interval: &str, extra: &[&str]) -> Result<(GitRepo, ServerProcess)> {
    let repo = GitRepo::init(&dir.join("roles"))?;
    repo.commit(
        &[("cms.toml", SETTINGS), ("roles/app.toml", &role("one"))],
        "one",
    )?;
    let binary = build_workspace_binary("cms-server", "cms-server")?;
    let mut flags = vec!["--sync-interval", sync_interval];
    flags.extend_from_slice(extra);
    let server = ServerProcess::start(&binary, &dir.join("server"), repo.path(), &flags)?;
    Ok((repo, server))
}

/// Waits until the server serves `revision`.
fn wait_for_revision(server: &ServerProcess, revision: &str, timeout: Duration) -> Result<()> {
    wait_until_polling_every(
        Duration::from_millis(50),
        timeout,
        &format!("the server to serve {revision}"),
        || Ok((server.serving_revision()?.as_deref() == Some(revision)).then_some(())),
    )
    .with_context(|| server.log_text())
}

/// HMAC-SHA256 (RFC 2104), written out here so that the test checks the
/// server's verification against an independent signer.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_key: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_key: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_key)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_key)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn github_signature(secret: &str, body: &[u8]) -> String {
    let hex: String = hmac_sha256(secret.as_bytes(), body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn the_signer_of_this_test_matches_the_hmac_sha256_test_vector_of_rfc_4231() {
    // RFC 4231, test case 2.
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn the_server_syncs_the_roles_repository_when_it_starts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (repo, server) = start(dir.path(), NO_INTERVAL_SYNC, &[])?;
    // Nobody asks for a sync and the interval is an hour: the revision is
    // the one of the start.
    wait_for_revision(&server, &repo.head()?, Duration::from_secs(30))
}

#[test]
fn the_server_syncs_again_on_its_interval() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (repo, server) = start(dir.path(), "1s", &[])?;
    wait_for_revision(&server, &repo.head()?, Duration::from_secs(30))?;
    repo.commit(&[("roles/app.toml", &role("two"))], "two")?;
    // No webhook, no `cms-server sync`: only the interval brings it.
    wait_for_revision(&server, &repo.head()?, Duration::from_secs(30))
}

#[test]
fn a_git_webhook_signed_with_the_secret_syncs_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (repo, server) = start(dir.path(), NO_INTERVAL_SYNC, &["--webhook-secret", SECRET])?;
    let first = repo.head()?;
    wait_for_revision(&server, &first, Duration::from_secs(30))?;
    repo.commit(&[("roles/app.toml", &role("two"))], "two")?;
    let second = repo.head()?;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let (status, answer) = server.post(
        "/hooks/git",
        &[("X-Hub-Signature-256", &github_signature(SECRET, body))],
        body,
    )?;
    ensure!(
        status == 200 && answer.trim() == format!("synced {second}"),
        "a signed webhook: {status} {answer}"
    );
    ensure!(
        server.serving_revision()?.as_deref() == Some(second.as_str()),
        "served after the webhook answered: {:?}",
        server.serving_revision()?
    );

    // GitLab's way: the secret itself in X-Gitlab-Token.
    repo.commit(&[("roles/app.toml", &role("three"))], "three")?;
    let third = repo.head()?;
    let (status, answer) = server.post("/hooks/git", &[("X-Gitlab-Token", SECRET)], body)?;
    ensure!(
        status == 200 && answer.trim() == format!("synced {third}"),
        "a webhook with the GitLab token: {status} {answer}"
    );
    Ok(())
}

#[test]
fn a_git_webhook_unsigned_or_signed_with_another_secret_is_refused_and_syncs_nothing() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let (repo, server) = start(dir.path(), NO_INTERVAL_SYNC, &["--webhook-secret", SECRET])?;
    let first = repo.head()?;
    wait_for_revision(&server, &first, Duration::from_secs(30))?;
    repo.commit(&[("roles/app.toml", &role("two"))], "two")?;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let refusals = [
        ("unsigned", vec![]),
        (
            "signed with another secret",
            vec![(
                "X-Hub-Signature-256",
                github_signature("another secret", body),
            )],
        ),
        (
            "signed for another body",
            vec![(
                "X-Hub-Signature-256",
                github_signature(SECRET, br#"{"ref":"refs/heads/other"}"#),
            )],
        ),
        (
            "with a wrong GitLab token",
            vec![("X-Gitlab-Token", "another secret".to_string())],
        ),
    ];
    for (what, headers) in refusals {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let (status, answer) = server.post("/hooks/git", &headers, body)?;
        ensure!(
            status == 401 && answer.starts_with("Failed to verify the webhook"),
            "a webhook {what}: {status} {answer}"
        );
        ensure!(
            server.serving_revision()?.as_deref() == Some(first.as_str()),
            "a webhook {what} synced: {:?}",
            server.serving_revision()?
        );
    }
    Ok(())
}

#[test]
fn a_server_without_a_webhook_secret_refuses_every_webhook() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (repo, server) = start(dir.path(), NO_INTERVAL_SYNC, &[])?;
    let first = repo.head()?;
    wait_for_revision(&server, &first, Duration::from_secs(30))?;
    repo.commit(&[("roles/app.toml", &role("two"))], "two")?;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let (status, answer) = server.post(
        "/hooks/git",
        &[("X-Hub-Signature-256", &github_signature(SECRET, body))],
        body,
    )?;
    ensure!(
        status == 403 && answer.contains("webhooks are off"),
        "{status} {answer}"
    );
    ensure!(server.serving_revision()?.as_deref() == Some(first.as_str()));
    Ok(())
}
