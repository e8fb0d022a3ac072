//! The admin commands' client side: the admin API reached with an
//! operator's credential (a folder with `ca.pem`, `admin.pem`,
//! `admin.key`: the bootstrap operator's in `<data>/admin`, another's
//! wherever `cms-server admin add` wrote it, chosen with `--credential`),
//! `status_error`, and the operator, audit and dashboard token commands
//! (`admin add`, `admin renew`, `admin revoke`, `admin list`, `audit`,
//! `dashboard-token`). The other admin
//! commands (`token create`, `nodes`, `reports`, `node revoke`, `sync`) are
//! in `commands`, `cms-server trigger` in `trigger_cli`, `rollout` in
//! `rollout_cli`, `pin`, `unpin` and `environments` in `pin_cli`; all use
//! [`connect_as`], and the last ones end a refused call with [`refusal`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use cms_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::{Format, OperatorCredentialArgs};
use crate::dashboard::format_time;
use crate::resolve::{AdminTarget, DashboardTokenAction};

/// The files of an admin credential folder.
const CA_FILE: &str = "ca.pem";
const CERTIFICATE_FILE: &str = "admin.pem";
const KEY_FILE: &str = "admin.key";
/// How long before its end an operator is told to renew its credential.
const RENEW_WARNING_SECONDS: i64 = 14 * 24 * 3600;

/// Connects to the admin API of `admin.server` (`host:port` or a URL) with
/// the operator credential in `admin.credential_dir`. An expired
/// credential is refused here with what to do; one close to its end is
/// warned about on stderr.
pub async fn connect_as(
    admin: &AdminTarget,
) -> anyhow::Result<pb::admin_client::AdminClient<Channel>> {
    connect_with(&admin.server, &admin.credential_dir).await
}

/// Connects to the admin API at `server` as the bootstrap operator, whose
/// credential the server wrote into `data_dir` (tests and benchmarks that
/// run a server of their own).
pub async fn connect(
    server: &str,
    data_dir: &Path,
) -> anyhow::Result<pb::admin_client::AdminClient<Channel>> {
    connect_with(server, &crate::startup::admin_dir(data_dir)).await
}

/// Connects to the admin API at `server` with the credential folder `dir`.
pub async fn connect_with(
    server: &str,
    dir: &Path,
) -> anyhow::Result<pb::admin_client::AdminClient<Channel>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| {
            format!(
                "Failed to read the admin credential {}\nhint: run this on the server, with --data pointing at its data directory, or pass --credential with the folder `cms-server admin add` wrote",
                dir.join(name).display()
            )
        })
    };
    let (ca, certificate, key) = (read(CA_FILE)?, read(CERTIFICATE_FILE)?, read(KEY_FILE)?);
    check_expiry(&dir.join(CERTIFICATE_FILE), &certificate)?;
    let url = if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("Failed to parse the server address {server}"))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(certificate, key))
                .domain_name("localhost"),
        )?;
    let channel = endpoint.connect().await.with_context(|| {
        format!("Failed to connect to the server at {url}: is `cms-server serve` running?\nhint: pass its address with --server or CMS_SERVER, or --data with its data directory")
    })?;
    Ok(pb::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(cms_proto::limits::MAX_ADMIN_RESPONSE_BYTES))
}

/// Refuses an expired credential and warns about one that ends soon.
fn check_expiry(path: &Path, certificate_pem: &str) -> anyhow::Result<()> {
    let info = crate::pki::read_certificate(certificate_pem)
        .with_context(|| format!("Failed to read the admin credential {}", path.display()))?;
    let name = match &info.identity {
        crate::pki::PeerIdentity::Operator(name) => name.clone(),
        crate::pki::PeerIdentity::Node(node) => {
            bail!(
                "Failed to use {} as an admin credential: it is the certificate of node {node}",
                path.display()
            )
        }
    };
    let now = i64::try_from(crate::clock::now_unix_ms() / 1000).unwrap_or(i64::MAX);
    let ends = format_time(info.not_after_unix.max(0) as u64 * 1000);
    if info.not_after_unix <= now {
        bail!(
            "Failed to use the admin credential {}: operator {name}'s certificate expired at {ends}\nhint: another operator runs `cms-server admin renew {name}`; for the bootstrap operator, on the server host remove {} and restart the server, which writes a new one",
            path.display(),
            path.with_file_name(KEY_FILE).display()
        );
    }
    if info.not_after_unix - now < RENEW_WARNING_SECONDS {
        eprintln!(
            "warning: operator {name}'s admin credential expires at {ends}: run `cms-server admin renew {name}`"
        );
    }
    Ok(())
}

/// An admin API error as the commands print it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

/// Whether a refused admin call was refused for what it asked (an unknown
/// environment or rollout, an action its state does not allow, a bad
/// selector or revision), which the commands report with exit status 1,
/// rather than because it could not run (exit status 3).
pub fn is_invalid_request(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition
    )
}

/// A refused admin call as the environment, rollout and pin commands end:
/// an invalid request prints the server's message and exits 1, anything
/// else is an error (exit 3).
pub fn refusal(status: tonic::Status) -> anyhow::Result<ExitCode> {
    if is_invalid_request(status.code()) {
        eprintln!("error: {}", status.message());
        return Ok(ExitCode::from(crate::cli::EXIT_INVALID));
    }
    if status.code() == tonic::Code::Unimplemented {
        return Err(status_error(status).context(
            "the server does not answer this call\nhint: upgrade the server to this version of cms-server",
        ));
    }
    Err(status_error(status))
}

/// `admin add NAME` and `admin renew NAME`: a key and CSR made here, the
/// certificate signed by the server, the three files written owner-only.
pub async fn add_operator(
    args: &OperatorCredentialArgs,
    admin: &AdminTarget,
    renew: bool,
) -> anyhow::Result<ExitCode> {
    crate::pki::check_operator_name(&args.name)?;
    let validity_seconds = match &args.lifetime {
        Some(text) => cms_roles::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("--lifetime: {e}"))?
            .max(1),
        None => 0,
    };
    let out = match &args.out {
        Some(out) => out.clone(),
        None if renew && credential_names(&admin.credential_dir, &args.name) => {
            admin.credential_dir.clone()
        }
        None => admin.data_dir.join("admin/operators").join(&args.name),
    };
    if !renew && out.join(KEY_FILE).exists() {
        bail!(
            "Failed to add operator {}: {} already holds a credential\nhint: choose another --out, or use `cms-server admin renew {}`",
            args.name,
            out.display(),
            args.name
        );
    }
    let (key_pem, csr_pem) = crate::pki::operator_key_and_csr(&args.name)?;
    let mut client = connect_as(admin).await?;
    let signed = client
        .add_operator(pb::AddOperatorRequest {
            name: args.name.clone(),
            csr_pem,
            renew,
            validity_seconds,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    write_credential(
        &out,
        &signed.ca_certificate_pem,
        &signed.certificate_pem,
        &key_pem,
    )?;
    let ends = format_time(signed.not_after_unix.max(0) as u64 * 1000);
    match admin.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "operator": args.name, "credential": out, "not_after_unix": signed.not_after_unix,
            })
        ),
        Format::Text => println!(
            "{} operator {}: credential in {} (valid until {ends}); use it with --credential {}",
            if renew { "renewed" } else { "added" },
            args.name,
            out.display(),
            out.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the credential folder `dir` holds `name`'s certificate.
fn credential_names(dir: &Path, name: &str) -> bool {
    std::fs::read_to_string(dir.join(CERTIFICATE_FILE))
        .ok()
        .and_then(|pem| crate::pki::read_certificate(&pem).ok())
        .is_some_and(|info| info.identity == crate::pki::PeerIdentity::Operator(name.to_owned()))
}

/// Writes a credential folder: created owner-only (0700), each file 0600
/// and replaced atomically, the key before the certificate that needs it.
fn write_credential(
    dir: &PathBuf,
    ca_pem: &str,
    certificate_pem: &str,
    key_pem: &str,
) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("Failed to create {}", dir.display()))?;
    for (name, text) in [
        (CA_FILE, ca_pem),
        (KEY_FILE, key_pem),
        (CERTIFICATE_FILE, certificate_pem),
    ] {
        crate::startup::write_private_file(dir, name, text.as_bytes())?;
    }
    Ok(())
}

/// `admin revoke NAME`.
pub async fn revoke_operator(name: &str, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let mut client = connect_as(admin).await?;
    let revoked = client
        .revoke_operator(pb::RevokeOperatorRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    match admin.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({ "operator": name, "revoked_serial": revoked.serial })
        ),
        Format::Text => println!(
            "revoked operator {name}: certificate {} is refused from now on",
            revoked.serial
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `admin list`.
pub async fn list_operators(admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let mut client = connect_as(admin).await?;
    let operators = client
        .list_operators(pb::ListOperatorsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .operators;
    let time = |unix: i64| format_time(unix.max(0) as u64 * 1000);
    match admin.format {
        Format::Json => {
            let json: Vec<serde_json::Value> = operators
                .iter()
                .map(|o| {
                    serde_json::json!({
                        "name": o.name, "created_unix": o.created_unix,
                        "not_after_unix": o.not_after_unix,
                        "revoked_unix": (o.revoked_unix > 0).then_some(o.revoked_unix),
                        "added_by": o.added_by, "serial": o.serial,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        }
        Format::Text => {
            println!(
                "{:<20} {:<23} {:<23} {:<23} ADDED BY",
                "OPERATOR", "CREATED", "EXPIRES", "REVOKED"
            );
            for o in &operators {
                let revoked = if o.revoked_unix > 0 {
                    time(o.revoked_unix)
                } else {
                    "-".to_owned()
                };
                println!(
                    "{:<20} {:<23} {:<23} {:<23} {}",
                    o.name,
                    time(o.created_unix),
                    time(o.not_after_unix),
                    revoked,
                    o.added_by
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit`: the last calls, newest last.
pub async fn audit(limit: u32, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let mut client = connect_as(admin).await?;
    let entries = client
        .get_audit(pb::GetAuditRequest { limit })
        .await
        .map_err(status_error)?
        .into_inner()
        .entries;
    match admin.format {
        Format::Json => {
            let json: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "time_unix_ms": e.time_unix_ms, "operator": e.operator,
                        "method": e.method, "target": e.target,
                        "outcome": e.outcome, "message": e.message,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        }
        Format::Text => {
            println!(
                "{:<23} {:<16} {:<24} {:<18} TARGET",
                "TIME", "OPERATOR", "METHOD", "OUTCOME"
            );
            for e in &entries {
                println!(
                    "{:<23} {:<16} {:<24} {:<18} {}",
                    format_time(e.time_unix_ms.max(0) as u64),
                    e.operator,
                    e.method,
                    e.outcome,
                    e.target
                );
                if !e.message.is_empty() {
                    println!("  {}", e.message);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dashboard-token`: make a token (printed alone on stdout, once), list
/// them (`--list`) or revoke one (`--revoke ID`), through the server.
pub async fn dashboard_token(
    action: &DashboardTokenAction,
    admin: &AdminTarget,
) -> anyhow::Result<ExitCode> {
    let mut client = connect_as(admin).await?;
    let answer = match action {
        DashboardTokenAction::Create => client
            .create_dashboard_token(pb::CreateDashboardTokenRequest {})
            .await
            .map(|made| print_made_dashboard_token(made.into_inner(), admin.format)),
        DashboardTokenAction::List => client
            .list_dashboard_tokens(pb::ListDashboardTokensRequest {})
            .await
            .map(|listed| print_dashboard_tokens(&listed.into_inner().tokens, admin.format)),
        DashboardTokenAction::Revoke(id) => client
            .revoke_dashboard_token(pb::RevokeDashboardTokenRequest { id: id.clone() })
            .await
            .map(|revoked| print_revoked_dashboard_token(revoked.into_inner(), admin.format)),
    };
    match answer {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(status) => refusal(status),
    }
}

/// A dashboard token's fields as JSON; `null` for a revocation not made.
fn dashboard_token_json(token: &pb::DashboardToken) -> serde_json::Value {
    let revoked = token.revoked_unix_ms > 0;
    serde_json::json!({
        "id": token.id,
        "created_unix_ms": token.created_unix_ms,
        "created_by": token.created_by,
        "revoked_unix_ms": revoked.then_some(token.revoked_unix_ms),
        "revoked_by": revoked.then_some(&token.revoked_by),
    })
}

fn print_made_dashboard_token(made: pb::CreateDashboardTokenResponse, format: Format) {
    match format {
        Format::Json => {
            let mut json = made
                .record
                .as_ref()
                .map(dashboard_token_json)
                .unwrap_or_else(|| serde_json::json!({}));
            json["token"] = serde_json::Value::String(made.token);
            println!("{json}");
        }
        Format::Text => {
            println!("{}", made.token);
            if let Some(record) = &made.record {
                eprintln!(
                    "made dashboard token {}: it is shown this once; `cms-server dashboard-token --revoke {}` revokes it",
                    record.id, record.id
                );
            }
        }
    }
}

fn print_dashboard_tokens(tokens: &[pb::DashboardToken], format: Format) {
    let time = |unix_ms: i64| format_time(unix_ms.max(0) as u64);
    match format {
        Format::Json => {
            let json: Vec<serde_json::Value> = tokens.iter().map(dashboard_token_json).collect();
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        }
        Format::Text => {
            println!(
                "{:<12}  {:<23}  {:<20}  REVOKED",
                "ID", "CREATED", "OPERATOR"
            );
            for token in tokens {
                let revoked = if token.revoked_unix_ms > 0 {
                    format!("{} by {}", time(token.revoked_unix_ms), token.revoked_by)
                } else {
                    "-".to_owned()
                };
                println!(
                    "{:<12}  {:<23}  {:<20}  {revoked}",
                    token.id,
                    time(token.created_unix_ms),
                    token.created_by
                );
            }
        }
    }
}

fn print_revoked_dashboard_token(revoked: pb::RevokeDashboardTokenResponse, format: Format) {
    let Some(token) = revoked.token else {
        return;
    };
    match format {
        Format::Json => {
            let mut json = dashboard_token_json(&token);
            json["revoked_now"] = serde_json::Value::Bool(revoked.revoked_now);
            println!("{json}");
        }
        Format::Text if revoked.revoked_now => println!(
            "revoked dashboard token {} (made {} by {}): no login accepts it from now on; sessions it opened last until logout or their 12 hours end",
            token.id,
            format_time(token.created_unix_ms.max(0) as u64),
            token.created_by
        ),
        Format::Text => println!(
            "dashboard token {} was revoked already, at {} by {}",
            token.id,
            format_time(token.revoked_unix_ms.max(0) as u64),
            token.revoked_by
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_refused_for_what_it_asked_exits_1_and_one_that_could_not_run_exits_3() {
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound,
            tonic::Code::FailedPrecondition,
        ] {
            let status = tonic::Status::new(code, "unknown environment qa");
            assert_eq!(
                refusal(status).expect("an exit status"),
                ExitCode::from(crate::cli::EXIT_INVALID),
                "{code:?}"
            );
        }
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Unimplemented,
            tonic::Code::Internal,
            tonic::Code::PermissionDenied,
        ] {
            let error = refusal(tonic::Status::new(code, "no")).expect_err("an error");
            assert!(format!("{error:#}").contains("no ("), "{code:?}: {error:#}");
        }
    }
}
