//! The admin commands (`token create`, `nodes`, `reports`, `node revoke`,
//! `sync`): clients of the running server's admin API, authenticated with
//! the admin credential the server wrote into its data directory.
//! `cms-server trigger` (`trigger_cli`) uses the same client.

use std::path::Path;

use anyhow::Context;
use cms_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::server::admin_dir;

/// Connects to the admin API at `server` (`host:port` or a URL).
pub async fn connect(
    server: &str,
    data_dir: &Path,
) -> anyhow::Result<pb::admin_client::AdminClient<Channel>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = admin_dir(data_dir);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| {
            format!(
                "Failed to read the admin credential {}\nhint: run this on the server, with --data pointing at its data directory",
                dir.join(name).display()
            )
        })
    };
    let (ca, certificate, key) = (read("ca.pem")?, read("admin.pem")?, read("admin.key")?);
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
        format!("Failed to connect to the server at {url}: is `cms-server serve` running?")
    })?;
    Ok(pb::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(cms_proto::limits::MAX_ADMIN_RESPONSE_BYTES))
}

/// An admin API error as the commands print it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}
