//! Who the real server serves, by client certificate: the server built by
//! `server::prepare` and `server::run_prepared` as `cms-server serve`
//! builds it (its own TLS, its own services, its own store), and the
//! agent's and the admin CLI's own clients.
//!
//! Refused: a client certificate from another CA, the server's own
//! certificate presented as a client certificate, no certificate (for
//! everything but `Enroll`), a node certificate on any admin method (the
//! dashboard token calls among them, which no certificate reaches either),
//! and a node asking for a content of another node's catalog. A certificate
//! refused by the handshake shows, under TLS 1.3, only as a failed call:
//! those tests assert that no answer came back, never on error text.

// A test measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use cms_agent::client::Connector;
use cms_agent::identity::Identity;
use cms_proto::v1 as pb;
use cms_server::pki::CertificateAuthority;
use support::{Node, Server, channel_with, converge};
use tokio_stream::StreamExt as _;
use tonic::Code;

const WEB: &[(&str, &str)] = &[("role", "web"), ("env", "staging")];
const API: &[(&str, &str)] = &[("role", "api"), ("env", "staging")];

/// A node certificate for `node_id` from `ca` (not the server's), with its
/// key, made as the agent makes its own.
fn foreign_node(ca: &CertificateAuthority, node_id: &str) -> (String, String) {
    let key = cms_agent::identity::generate_key_and_csr(node_id).unwrap();
    let issued = ca
        .sign_node_csr(&key.csr_pem, node_id, Duration::from_secs(3600))
        .unwrap();
    (issued.certificate_pem, key.private_key_pem)
}

/// `GetCatalog` through the agent's own connector with `identity`,
/// connecting to `server`; `None` if nothing was answered.
async fn catalog_as(server: &Server, identity: &Identity) -> Option<pb::CatalogResponse> {
    let connector = Connector::new(&server.agent_address(None), identity).ok()?;
    let mut client = tokio::time::timeout(Duration::from_secs(10), connector.connect())
        .await
        .ok()?
        .ok()?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_catalog(pb::CatalogRequest::default()),
    )
    .await
    .ok()?
    .ok()?;
    Some(answer.into_inner())
}

/// `ListNodes` presenting `client` (certificate and key PEM) or nothing;
/// the answer or the status.
async fn list_nodes_as(
    server: &Server,
    client: Option<(&str, &str)>,
) -> Result<pb::ListNodesResponse, Code> {
    let channel = channel_with(server, &server.ca_pem, client)
        .await
        .map_err(|_| Code::Unavailable)?;
    pb::admin_client::AdminClient::new(channel)
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .map(|answer| answer.into_inner())
        .map_err(|status| status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_nodes_and_the_admin_are_served_as_themselves() {
    let server = Server::start(|_| {}).await;
    let node = server.enroll("web-1", WEB).await;
    converge(&node, "r1").await.expect("the node is served");
    let listed = server
        .admin()
        .await
        .unwrap()
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .expect("the admin is served")
        .into_inner();
    assert_eq!(listed.nodes.len(), 1);
    assert_eq!(listed.nodes[0].node_id, "web-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_served_nothing() {
    let server = Server::start(|_| {}).await;
    let _real = server.enroll("web-1", WEB).await;
    let other = CertificateAuthority::create("other").unwrap();
    // A node certificate naming an enrolled node, from another CA.
    let (certificate_pem, private_key_pem) = foreign_node(&other, "web-1");
    let impostor = Identity {
        private_key_pem: private_key_pem.clone(),
        certificate_pem: certificate_pem.clone(),
        ca_certificate_pem: server.ca_pem.clone(),
    };
    assert!(catalog_as(&server, &impostor).await.is_none());
    // The admin credential of another CA.
    let admin = other.issue_admin_certificate().unwrap();
    assert!(
        list_nodes_as(
            &server,
            Some((&admin.certificate_pem, &admin.private_key_pem))
        )
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_certificate_is_not_a_client_certificate() {
    let server = Server::start(|_| {}).await;
    let server_certificate = server
        .ca
        .issue_server_certificate(&["localhost".to_owned()], &[])
        .unwrap();
    let presented = Some((
        server_certificate.certificate_pem.as_str(),
        server_certificate.private_key_pem.as_str(),
    ));
    assert!(list_nodes_as(&server, presented).await.is_err());
    let as_node = Identity {
        private_key_pem: server_certificate.private_key_pem.clone(),
        certificate_pem: server_certificate.certificate_pem.clone(),
        ca_certificate_pem: server.ca_pem.clone(),
    };
    assert!(catalog_as(&server, &as_node).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_everything_but_enrollment() {
    let server = Server::start(|_| {}).await;
    let _node = server.enroll("web-1", WEB).await;
    assert_eq!(
        list_nodes_as(&server, None).await.unwrap_err(),
        Code::Unauthenticated
    );
    let channel = channel_with(&server, &server.ca_pem, None).await.unwrap();
    let refused = pb::agent_client::AgentClient::new(channel.clone())
        .get_catalog(pb::CatalogRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = pb::agent_client::AgentClient::new(channel.clone())
        .report(support::report("r1", "c1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Enrollment is reached: it refuses the token, not the missing
    // certificate.
    let refused = pb::enrollment_client::EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: "not-a-token".into(),
            csr_pem: String::new(),
            tags: Default::default(),
            node_name: "web-2".into(),
            identity: None,
        })
        .await
        .unwrap_err();
    assert!(refused.message().contains("token"), "{refused:?}");
    assert!(!refused.message().contains("certificate"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_trusting_another_ca_does_not_talk_to_the_server() {
    let server = Server::start(|_| {}).await;
    let node = server.enroll("web-1", WEB).await;
    let other = CertificateAuthority::create("other").unwrap();
    let misled = Identity {
        ca_certificate_pem: other.certificate_pem().to_string(),
        ..node.identity.clone()
    };
    assert!(catalog_as(&server, &misled).await.is_none());
}

/// An admin client over a connection presenting `node`'s certificate.
async fn admin_as_node(
    server: &Server,
    node: &Node,
) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
    let channel = channel_with(
        server,
        &server.ca_pem,
        Some((
            &node.identity.certificate_pem,
            &node.identity.private_key_pem,
        )),
    )
    .await
    .unwrap();
    pb::admin_client::AdminClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_is_denied_every_admin_method() {
    let server = Server::start(|_| {}).await;
    let node = server.enroll("web-1", WEB).await;
    let victim = server.enroll("web-2", WEB).await;
    converge(&victim, "r1").await.unwrap();
    let mut admin = admin_as_node(&server, &node).await;
    let mut codes = vec![
        (
            "list_nodes",
            admin
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .map(|_| ()),
        ),
        (
            "get_reports",
            admin
                .get_reports(pb::GetReportsRequest {
                    node_id: "web-2".into(),
                    limit: 10,
                })
                .await
                .map(|_| ()),
        ),
        (
            "create_token",
            admin
                .create_token(pb::CreateTokenRequest {
                    scope: [("role".to_string(), "*".to_string())].into(),
                    ttl_seconds: 600,
                    uses: 0,
                })
                .await
                .map(|_| ()),
        ),
        (
            "revoke_node",
            admin
                .revoke_node(pb::RevokeNodeRequest {
                    node_id: "web-2".into(),
                })
                .await
                .map(|_| ()),
        ),
        ("sync", admin.sync(pb::SyncRequest {}).await.map(|_| ())),
        (
            "trigger",
            admin
                .trigger(pb::TriggerRequest {
                    selector: Some(pb::Selector {
                        tags: [("role".to_string(), "web".to_string())].into(),
                    }),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            "trigger_status",
            admin
                .trigger_status(pb::TriggerStatusRequest {
                    trigger_id: "t1".into(),
                })
                .await
                .map(|_| ()),
        ),
        (
            "create_dashboard_token",
            admin
                .create_dashboard_token(pb::CreateDashboardTokenRequest {})
                .await
                .map(|_| ()),
        ),
        (
            "list_dashboard_tokens",
            admin
                .list_dashboard_tokens(pb::ListDashboardTokensRequest {})
                .await
                .map(|_| ()),
        ),
        (
            "revoke_dashboard_token",
            admin
                .revoke_dashboard_token(pb::RevokeDashboardTokenRequest {
                    id: "0123456789ab".into(),
                })
                .await
                .map(|_| ()),
        ),
    ];
    for (method, result) in codes.drain(..) {
        let status = result.expect_err(method);
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{method}: {status:?}"
        );
        assert!(status.message().contains("web-1"), "{method}: {status:?}");
    }
    // Nothing was done: the victim is still served, and the admin sees no
    // trigger and two nodes.
    converge(&victim, "r2")
        .await
        .expect("the victim was not revoked");
    let listed = server
        .admin()
        .await
        .unwrap()
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.nodes.len(), 2);
}

/// What a client presenting `client` (a node's certificate and key) or
/// no certificate gets from each dashboard token call: the code of each
/// refusal, or `Ok` for an answer.
async fn dashboard_token_calls_as(
    server: &Server,
    client: Option<(&str, &str)>,
    id: &str,
) -> Vec<(&'static str, Result<(), Code>)> {
    let channel = channel_with(server, &server.ca_pem, client).await.unwrap();
    let mut admin = pb::admin_client::AdminClient::new(channel);
    vec![
        (
            "create",
            admin
                .create_dashboard_token(pb::CreateDashboardTokenRequest {})
                .await
                .map(|_| ())
                .map_err(|status| status.code()),
        ),
        (
            "list",
            admin
                .list_dashboard_tokens(pb::ListDashboardTokensRequest {})
                .await
                .map(|_| ())
                .map_err(|status| status.code()),
        ),
        (
            "revoke",
            admin
                .revoke_dashboard_token(pb::RevokeDashboardTokenRequest { id: id.to_owned() })
                .await
                .map(|_| ())
                .map_err(|status| status.code()),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_a_node_certificate_nor_no_certificate_makes_lists_or_revokes_dashboard_tokens() {
    let server = Server::start(|_| {}).await;
    let node = server.enroll("web-1", WEB).await;
    let made = server
        .admin()
        .await
        .unwrap()
        .create_dashboard_token(pb::CreateDashboardTokenRequest {})
        .await
        .unwrap()
        .into_inner();
    let id = made.record.expect("a record").id;
    let as_node = dashboard_token_calls_as(
        &server,
        Some((
            &node.identity.certificate_pem,
            &node.identity.private_key_pem,
        )),
        &id,
    )
    .await;
    let anonymous = dashboard_token_calls_as(&server, None, &id).await;
    assert_eq!(
        as_node,
        [
            ("create", Err(Code::PermissionDenied)),
            ("list", Err(Code::PermissionDenied)),
            ("revoke", Err(Code::PermissionDenied)),
        ]
    );
    assert_eq!(
        anonymous,
        [
            ("create", Err(Code::Unauthenticated)),
            ("list", Err(Code::Unauthenticated)),
            ("revoke", Err(Code::Unauthenticated)),
        ]
    );
    // Nothing was made and nothing revoked: the operator's token is the
    // only one, and it still signs in.
    let listed = server
        .admin()
        .await
        .unwrap()
        .list_dashboard_tokens(pb::ListDashboardTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].revoked_unix_ms),
        (id.as_str(), 0)
    );
    let hash = cms_roles::digest::sha256_hex(made.token.as_bytes());
    assert!(server.store.dashboard_token_is_valid(&hash).unwrap());
}

/// The sha256 hashes (64 hex digits) in a catalog's canonical JSON.
fn hashes_in(json: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(json);
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|word| word.len() == 64)
        .map(str::to_owned)
        .collect()
}

async fn catalog_json(node: &Node) -> Vec<u8> {
    let answer = node
        .connector
        .connect()
        .await
        .unwrap()
        .get_catalog(support::catalog_request(node))
        .await
        .unwrap()
        .into_inner();
    match answer.result {
        Some(pb::catalog_response::Result::Catalog(catalog)) => catalog.canonical_json,
        other => panic!("no catalog: {other:?}"),
    }
}

async fn get_content(node: &Node, hash: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = node
        .connector
        .connect()
        .await
        .unwrap()
        .get_content(pb::ContentRequest {
            sha256: hash.to_string(),
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk?.data);
    }
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_asking_for_a_content_of_another_nodes_catalog_gets_not_found() {
    let server = Server::start(|_| {}).await;
    let web = server.enroll("web-1", WEB).await;
    let api = server.enroll("api-1", API).await;
    let web_catalog = catalog_json(&web).await;
    let api_catalog = String::from_utf8_lossy(&catalog_json(&api).await).into_owned();
    let only_web: Vec<String> = hashes_in(&web_catalog)
        .into_iter()
        .filter(|hash| !api_catalog.contains(hash.as_str()))
        .collect();
    let mut served_to_web = 0;
    for hash in &only_web {
        if get_content(&web, hash).await.is_ok() {
            served_to_web += 1;
            let refused = get_content(&api, hash)
                .await
                .expect_err("another node's content was served");
            assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        }
    }
    assert!(
        served_to_web > 0,
        "the web catalog has no content of its own to ask for: {only_web:?}"
    );
}
