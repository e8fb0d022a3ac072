//! The watch channel: the one connection every agent holds open, so that a
//! trigger reaches it at once (`WatchEvent` in `cms.proto` has the
//! protocol).
//!
//! An agent asks for it on the gRPC port with the ALPN protocol
//! `cms-watch/1` and its client certificate. Held as an HTTP/2 stream, each
//! agent's connection cost the server about 25 KB (h2's fixed 16 KB write
//! and 8 KB read buffers, rustls' buffers), 250 MB for a fleet of 10,000.
//! Here, once the TLS 1.3 handshake is done and the certificate checked,
//! the server keeps only the socket and the key it writes with: rustls
//! hands over the negotiated traffic secrets (the API that exists for
//! kernel TLS), and [`RecordSealer`] seals each event as a TLS 1.3
//! application-data record (RFC 8446, section 5.2), so the agent reads an
//! ordinary TLS stream with rustls. What remains per agent is a socket, a
//! small task and a key: about 1.5 KB.
//!
//! The agent sends nothing after its handshake, so the server never
//! decrypts: any byte from the agent (its close_notify) or the end of the
//! stream ends the channel. A vanished instance is noticed by the socket's
//! user timeout on the next heartbeat.
//!
//! The node's certificate is checked again against the store before every
//! heartbeat, and at once when the node is revoked (`Fleet::close_watches`
//! wakes the channel): a certificate revoked, or no longer the node's (the
//! node removed or enrolled again), ends the channel with a `Refused` event,
//! and the node stops counting as seen.

use std::sync::Arc;
use std::time::Duration;

use cms_proto::v1 as pb;
use ring::aead;
use rustls::ConnectionTrafficSecrets;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::auth::AuthError;
use crate::fleet::{Fleet, WatchSlot};
use crate::pki::PeerIdentity;
use crate::store::SharedStore;

/// What the watch channel needs.
#[derive(Debug, Clone)]
pub struct WatchApi {
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    /// How often the server sends a heartbeat.
    pub heartbeat: Duration,
}

/// The largest plaintext of one TLS record (RFC 8446, section 5.1).
const MAX_RECORD_PLAINTEXT: usize = 1 << 14;

/// Records sealed with one key before the channel is closed and the agent
/// reconnects with fresh keys; far below the AES-GCM limit of about 2^24.5
/// records, and at one heartbeat every 30 s, more than a decade away.
const MAX_RECORDS_PER_KEY: u64 = 1 << 24;

/// Seals the server's records of a TLS 1.3 connection with the traffic
/// secret rustls negotiated, continuing its record sequence.
pub struct RecordSealer {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    sequence: u64,
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSealer")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl RecordSealer {
    /// The sealer for the server's side of a finished TLS 1.3 handshake.
    /// The connection is consumed: from here on, nothing else may write
    /// records on it.
    pub fn take_over(connection: rustls::ServerConnection) -> Result<RecordSealer, String> {
        if connection.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Err("the watch channel needs TLS 1.3".into());
        }
        let secrets = connection
            .dangerous_extract_secrets()
            .map_err(|error| format!("the TLS keys could not be taken over: {error}"))?;
        let (sequence, secrets) = secrets.tx;
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err("the negotiated cipher is not one the watch channel seals".into()),
        };
        let key = aead::UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| "the negotiated TLS key is malformed".to_string())?;
        let iv: [u8; aead::NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| "the negotiated TLS IV is not 12 bytes".to_string())?;
        Ok(RecordSealer {
            key: aead::LessSafeKey::new(key),
            iv,
            sequence,
        })
    }

    /// `plaintext` as TLS 1.3 application-data records: header, then the
    /// sealed inner plaintext (the data and its content type, 23).
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let tag_len = self.key.algorithm().tag_len();
        let mut out = Vec::with_capacity(plaintext.len() + 32);
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            if self.sequence >= MAX_RECORDS_PER_KEY {
                return Err("the watch channel's key has sealed its share of records".into());
            }
            // The per-record nonce: the IV XOR the sequence number, padded
            // on the left (section 5.3).
            let mut nonce = self.iv;
            for (byte, sequence) in nonce[4..].iter_mut().zip(self.sequence.to_be_bytes()) {
                *byte ^= sequence;
            }
            self.sequence += 1;
            let length = (chunk.len() + 1 + tag_len) as u16;
            let header = [0x17, 0x03, 0x03, (length >> 8) as u8, length as u8];
            let start = out.len();
            out.extend_from_slice(&header);
            out.extend_from_slice(chunk);
            out.push(0x17);
            let mut body = out.split_off(start + header.len());
            self.key
                .seal_in_place_append_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(header),
                    &mut body,
                )
                .map_err(|_| "sealing a watch record failed".to_string())?;
            out.extend_from_slice(&body);
        }
        Ok(out)
    }
}

/// Takes a watch channel over from its finished handshake and spawns the
/// task that serves it until the agent goes, the socket fails or the server
/// stops. The TLS connection is taken apart here, before the task starts,
/// so that the task holds only the socket and the key.
pub fn start(
    api: &WatchApi,
    connection: TlsStream<TcpStream>,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    let (tcp, tls) = connection.into_inner();
    let certificate = tls
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.as_ref().to_vec());
    let sealer = match RecordSealer::take_over(tls) {
        Ok(sealer) => Box::new(sealer),
        Err(error) => {
            tracing::debug!("a watch channel was dropped: {error}");
            return;
        }
    };
    let heartbeat = api.heartbeat;
    let channel = Channel {
        tcp,
        sealer,
        write_timeout: heartbeat.max(Duration::from_secs(10)),
    };
    let identified = identify(&api.store, certificate.as_deref());
    tokio::spawn(serve(api.clone(), channel, identified, stop.clone()));
}

/// The event that tells the agent why its channel ends.
fn refused(message: String) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(pb::watch_event::Event::Refused(pb::Refused { message })),
    }
}

async fn serve(
    api: WatchApi,
    mut channel: Channel,
    identified: Result<Holder, String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let holder = match identified {
        Ok(holder) => holder,
        Err(message) => {
            let _ = channel.send(&refused(message)).await;
            return;
        }
    };
    // A vanished instance leaves its heartbeat unacknowledged: the kernel
    // gives up on the socket after this long, and the channel ends.
    let _ = nix::sys::socket::setsockopt(
        &channel.tcp,
        nix::sys::socket::sockopt::TcpUserTimeout,
        &(channel.write_timeout.as_millis() as u32),
    );
    let heartbeat = api.heartbeat;
    let slot = Arc::new(WatchSlot::default());
    let mut guard = api.fleet.register_watch(&holder.node_id, slot.clone());
    let beat = pb::WatchEvent {
        event: Some(pb::watch_event::Event::Heartbeat(pb::Heartbeat {
            interval_seconds: heartbeat.as_secs().max(1) as u32,
        })),
    };
    if channel.send(&beat).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|stopped| *stopped).await.is_ok() } => return,
            readable = channel.tcp.readable() => {
                if readable.is_err() || channel.peer_spoke() {
                    return;
                }
            }
            _ = slot.wake.notified() => {
                if slot.is_closing() && let Err(message) = holder.recheck(&api.store) {
                    guard.forget_unseen();
                    let _ = channel.send(&refused(message)).await;
                    return;
                }
                for command in slot.take() {
                    let event = pb::WatchEvent {
                        event: Some(pb::watch_event::Event::ConvergeNow(command)),
                    };
                    if channel.send(&event).await.is_err() {
                        return;
                    }
                }
            }
            _ = tokio::time::sleep(heartbeat) => {
                if let Err(message) = holder.recheck(&api.store) {
                    guard.forget_unseen();
                    let _ = channel.send(&refused(message)).await;
                    return;
                }
                if channel.send(&beat).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Channel {
    tcp: TcpStream,
    /// Boxed: an AES-GCM key is half a kilobyte, and the task's every state
    /// would carry it inline.
    sealer: Box<RecordSealer>,
    write_timeout: Duration,
}

impl Channel {
    async fn send(&mut self, event: &pb::WatchEvent) -> Result<(), ()> {
        let records = self
            .sealer
            .seal(&cms_proto::watch::encode_frame(event))
            .map_err(|error| tracing::debug!("a watch channel ends: {error}"))?;
        match tokio::time::timeout(self.write_timeout, self.tcp.write_all(&records)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// True when the agent closed its side or sent anything (the agent
    /// only ever sends its close_notify alert); false on a spurious wakeup.
    fn peer_spoke(&self) -> bool {
        let mut buffer = [0u8; 64];
        !matches!(
            self.tcp.try_read(&mut buffer),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

/// The node holding a channel, and its certificate's serial: what is
/// checked again on every heartbeat.
#[derive(Debug)]
struct Holder {
    node_id: String,
    serial: String,
}

impl Holder {
    /// Whether the store still accepts the certificate for the node, as
    /// `auth::identify` does on every call; the message tells the agent
    /// why not. A read, no fsync.
    fn recheck(&self, store: &SharedStore) -> Result<(), String> {
        let (serial, node_id) = (self.serial.clone(), self.node_id.clone());
        match store.certificate(&self.serial) {
            Ok(Some(record)) if record.revoked => {
                Err(AuthError::NodeRevoked { serial, node_id }.to_string())
            }
            Ok(Some(record)) if record.node_id == self.node_id => Ok(()),
            Ok(_) => Err(AuthError::NodeUnknown { serial, node_id }.to_string()),
            // The store could not answer: try again at the next heartbeat.
            Err(error) => {
                tracing::warn!(node = %self.node_id, "Failed to check a watch channel's certificate: {error}");
                Ok(())
            }
        }
    }
}

/// The node a watch channel's client certificate names, checked as every
/// gRPC call is (`auth::identify`); the message tells the agent why not.
fn identify(store: &SharedStore, certificate: Option<&[u8]>) -> Result<Holder, String> {
    let certificate =
        certificate.ok_or("the watch channel needs a client certificate: enroll first")?;
    match crate::auth::identify(&**store, certificate) {
        Ok(PeerIdentity::Node(node_id)) => {
            let (_, serial) =
                crate::pki::peer_identity(certificate).map_err(|error| error.to_string())?;
            Ok(Holder { node_id, serial })
        }
        Ok(PeerIdentity::Operator(_)) => {
            Err("the watch channel is for nodes, not the admin credential".into())
        }
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::Read as _;

    /// A server connection and a client connection limited to `suite` and
    /// `version`, handshaken in memory, the server's tickets delivered.
    fn handshaken(
        suite: rustls::SupportedCipherSuite,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (rustls::ServerConnection, rustls::ClientConnection) {
        let ca = crate::pki::CertificateAuthority::create("test").unwrap();
        let server = ca
            .issue_server_certificate(&["localhost".into()], &[])
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(server.certificate_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(server.private_key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        server_config.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.certificate_pem().as_bytes()).unwrap())
            .unwrap();
        let client_provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..rustls::crypto::ring::default_provider()
        };
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).unwrap();
            }
            // Reading nothing would mean the peer hung up.
            if !bytes.is_empty() {
                server.read_tls(&mut &bytes[..]).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut bytes = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut bytes).unwrap();
            }
            if !bytes.is_empty() {
                client.read_tls(&mut &bytes[..]).unwrap();
                client.process_new_packets().unwrap();
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        (server, client)
    }

    /// What the client decrypts from `records`.
    fn client_reads(client: &mut rustls::ClientConnection, records: &[u8]) -> Vec<u8> {
        let mut input = records;
        let mut plaintext = Vec::new();
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets().unwrap();
            let mut chunk = [0u8; 4096];
            loop {
                match client.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(read) => plaintext.extend_from_slice(&chunk[..read]),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => panic!("the client's reader said {error}"),
                }
            }
        }
        plaintext
    }

    #[test]
    fn sealed_records_are_read_by_a_rustls_client_with_every_tls13_cipher() {
        use rustls::crypto::ring::cipher_suite::*;
        for suite in [
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let (server, mut client) = handshaken(suite, &rustls::version::TLS13);
            let mut sealer = RecordSealer::take_over(server).unwrap();
            let beat = cms_proto::watch::encode_frame(&pb::WatchEvent {
                event: Some(pb::watch_event::Event::Heartbeat(pb::Heartbeat {
                    interval_seconds: 30,
                })),
            });
            assert_eq!(
                client_reads(&mut client, &sealer.seal(&beat).unwrap()),
                beat
            );
            // More than one record's worth, sealed into three records and
            // read back whole: the sequence carries on across records.
            let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            let records = sealer.seal(&big).unwrap();
            assert_eq!(records.len(), 40_000 + 3 * (5 + 1 + 16));
            assert_eq!(client_reads(&mut client, &records), big, "{suite:?}");
            assert_eq!(client_reads(&mut client, &sealer.seal(b"x").unwrap()), b"x");
        }
    }

    #[test]
    fn a_record_sealed_out_of_sequence_is_refused_by_the_client() {
        let (server, mut client) = handshaken(
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            &rustls::version::TLS13,
        );
        let mut sealer = RecordSealer::take_over(server).unwrap();
        sealer.sequence += 1;
        let records = sealer.seal(b"skipped one").unwrap();
        client.read_tls(&mut &records[..]).unwrap();
        assert!(client.process_new_packets().is_err());
    }

    #[test]
    fn a_tls12_connection_is_not_taken_over() {
        let (server, _client) = handshaken(
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            &rustls::version::TLS12,
        );
        let error = RecordSealer::take_over(server).unwrap_err();
        assert!(error.contains("TLS 1.3"), "{error}");
    }
}
