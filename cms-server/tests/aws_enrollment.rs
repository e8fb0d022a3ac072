//! Attested enrollment on AWS, against the real server (gRPC, TLS, store)
//! and test doubles of the metadata service and the EC2 API
//! (`aws_doubles`): the attacks on it (forged, re-signed and replayed
//! documents, other accounts and groups, self-reported tags) are refused,
//! and an agent enrolled by attestation receives the catalog for the tags
//! EC2 holds for it.

// A test measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

mod aws_doubles;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aws_doubles::{Ec2ApiDouble, ImdsDouble, TestSigner, fixtures, identity_document};
use cms_agent::client::{ServerAddress, enroll, fetch_pinned_ca};
use cms_proto::v1 as pb;
use cms_server::server::ServeConfig;
use cms_server::store::SharedStore;

const ACCOUNT: &str = "111122223333";
const REGION: &str = "eu-west-1";

/// The roles every test server serves: `web` for `role=web`.
fn write_repository(dir: &Path) {
    std::fs::create_dir_all(dir.join("roles")).unwrap();
    std::fs::write(dir.join("cms.toml"), "[hierarchy]\nlayers = [\"common\"]\n").unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/common.toml"), "").unwrap();
    std::fs::write(
        dir.join("roles/web.toml"),
        "[match]\nrole = \"web\"\n\n[[file]]\npath = \"/etc/web-env\"\ncontent = \"env={{tag.env}}\\n\"\n",
    )
    .unwrap();
}

/// A server in this process, on loopback, stopped when dropped.
struct Server {
    address: ServerAddress,
    ca_fingerprint: String,
    ca_pem: String,
    store: SharedStore,
    _stop: tokio::sync::oneshot::Sender<()>,
    _data: tempfile::TempDir,
}

/// The `[aws]` table tests use, with the EC2 double's address.
fn aws_table(ec2: &Ec2ApiDouble, extra: &str) -> String {
    format!(
        "[aws]\naccounts = [\"{ACCOUNT}\"]\nec2_endpoint = \"{}\"\n{extra}\n[aws.certificates]\n{REGION} = \"{}\"\n",
        ec2.url,
        fixtures().join("aws-test-certificate.pem").display()
    )
}

fn credentials() -> BTreeMap<String, String> {
    [
        ("AWS_ACCESS_KEY_ID", aws_doubles::ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", aws_doubles::SECRET_ACCESS_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn start_server(
    enrollment_file: Option<String>,
    environment: BTreeMap<String, String>,
) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let repo = data.path().join("repo");
    write_repository(&repo);
    let mut config = ServeConfig::new(data.path().join("data"), repo.display().to_string());
    if let Some(text) = enrollment_file {
        let path = data.path().join("enrollment.toml");
        std::fs::write(&path, text).unwrap();
        config.aws = cms_server::aws::load_config(&path, &environment, cms_server::clock::system())
            .expect("the enrollment file loads")
            .map(Arc::new);
    }
    let prepared = cms_server::server::prepare(&config).unwrap();
    let store = prepared.store.clone();
    let ca_fingerprint = prepared.ca_fingerprint.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = ServerAddress::parse(&listener.local_addr().unwrap().to_string()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cms_server::server::run_prepared(
        prepared,
        listener,
        None,
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    let (for_ca, fingerprint) = (address.clone(), ca_fingerprint.clone());
    let ca_pem = tokio::task::spawn_blocking(move || fetch_pinned_ca(&for_ca, &fingerprint))
        .await
        .unwrap()
        .unwrap();
    Server {
        address,
        ca_fingerprint,
        ca_pem,
        store,
        _stop: stop,
        _data: data,
    }
}

fn csr(name: &str) -> String {
    csr_and_key(name).0
}

/// A CSR and its private key (PEM).
fn csr_and_key(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (
        params.serialize_request(&key).unwrap().pem().unwrap(),
        key.serialize_pem(),
    )
}

/// An enrollment sent with a node's certificate, as a node enrolling
/// again does.
async fn send_as_node(
    server: &Server,
    certificate_pem: &str,
    key_pem: &str,
    request: pb::EnrollRequest,
) -> anyhow::Result<pb::EnrollResponse> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&server.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            certificate_pem,
            key_pem,
        ));
    let channel = tonic::transport::Endpoint::from_shared(server.address.url.clone())?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = pb::enrollment_client::EnrollmentClient::new(channel);
    Ok(client
        .enroll(request)
        .await
        .map_err(|status| anyhow::anyhow!("Failed to enroll: {}", status.message()))?
        .into_inner())
}

fn serial_of(certificate_pem: &str) -> String {
    cms_server::pki::peer_identity(
        &<rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
            certificate_pem.as_bytes(),
        )
        .unwrap(),
    )
    .unwrap()
    .1
}

/// An attested enrollment request: the document and signature as sent.
fn attested(document: &str, signature: &str) -> pb::EnrollRequest {
    pb::EnrollRequest {
        token: String::new(),
        csr_pem: csr("node"),
        tags: Default::default(),
        node_name: String::new(),
        identity: Some(pb::IdentityDocument {
            kind: cms_proto::AWS_INSTANCE_IDENTITY.to_string(),
            document: document.as_bytes().to_vec(),
            signature: signature.as_bytes().to_vec(),
        }),
    }
}

async fn send(server: &Server, request: pb::EnrollRequest) -> anyhow::Result<pb::EnrollResponse> {
    enroll(&server.address, &server.ca_pem, request).await
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn assert_refused(result: anyhow::Result<pb::EnrollResponse>, expected: &str) {
    match result {
        Ok(response) => panic!(
            "enrolled {} (expected a refusal: {expected})",
            response.node_id
        ),
        Err(error) => assert!(
            format!("{error:#}").contains(expected),
            "expected `{expected}` in: {error:#}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_enrolls_by_attestation_and_receives_the_catalog_for_its_ec2_tags() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add(
        "i-0aaa",
        "running",
        &[
            ("role", "web"),
            ("env", "prod"),
            ("aws:autoscaling:groupName", "web-prod"),
        ],
    );
    let server = start_server(
        Some(aws_table(&ec2, "autoscaling_groups = [\"web-prod\"]")),
        credentials(),
    )
    .await;
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    let imds = ImdsDouble::start(document, signature);

    let state = tempfile::tempdir().unwrap();
    let response = cms_agent::remote::enroll_instance(
        state.path(),
        &server.address.url.replace("https://", ""),
        &cms_agent::remote::EnrollWith::Attestation {
            ca_fingerprint: server.ca_fingerprint.clone(),
        },
        None,
        None,
        Some(imds.address.to_string()),
    )
    .await
    .expect("enrolled by attestation");
    assert_eq!(response.node_id, "i-0aaa");
    assert_eq!(
        response.bound_tags.into_iter().collect::<BTreeMap<_, _>>(),
        tags(&[("env", "prod"), ("role", "web")])
    );
    assert!(ec2.answered.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert_eq!(ec2.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
    let node = server.store.node("i-0aaa").unwrap().expect("recorded");
    assert_eq!(
        node.attested,
        tags(&[
            ("account_id", ACCOUNT),
            ("autoscaling_group", "web-prod"),
            ("availability_zone", "eu-west-1a"),
            ("image_id", "ami-0123456789abcdef0"),
            ("instance_id", "i-0aaa"),
            ("instance_type", "t3.micro"),
            ("region", REGION),
        ])
    );

    // The catalog for its EC2 tags, over mTLS with the certificate it got.
    let identity = cms_agent::identity::load_identity(state.path())
        .unwrap()
        .expect("an identity");
    let connector = cms_agent::client::Connectors::new()
        .for_identity(&server.address, &identity)
        .unwrap();
    let mut client = connector.connect().await.unwrap();
    let catalog = loop {
        match client
            .get_catalog(pb::CatalogRequest::default())
            .await
            .map(|r| r.into_inner().result)
        {
            Ok(Some(pb::catalog_response::Result::Catalog(catalog))) => break catalog,
            // The first sync of the roles may not have finished yet.
            Ok(_) | Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let catalog = String::from_utf8(catalog.canonical_json).unwrap();
    assert!(catalog.contains("/etc/web-env"), "{catalog}");
    assert!(catalog.contains("\"roles\":[\"web\"]"), "{catalog}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_modified_document_is_refused() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web")]);
    ec2.add("i-0bbb", "running", &[("role", "db")]);
    let server = start_server(Some(aws_table(&ec2, "")), credentials()).await;
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    // Another instance's id in a document signed for i-0aaa.
    let forged = document.replace("i-0aaa", "i-0bbb");
    assert_refused(
        send(&server, attested(&forged, &signature)).await,
        "signature does not verify",
    );
    // One byte of whitespace changed is another document too.
    let reformatted = document.replacen("\"accountId\" : ", "\"accountId\": ", 1);
    assert_refused(
        send(&server, attested(&reformatted, &signature)).await,
        "signature does not verify",
    );
    // A signature that is not one.
    assert_refused(
        send(&server, attested(&document, "bm90IGEgc2lnbmF0dXJl")).await,
        "signature does not verify",
    );
    assert_eq!(server.store.nodes().unwrap(), []);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_signed_by_another_key_is_refused() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web")]);
    let server = start_server(Some(aws_table(&ec2, "")), credentials()).await;
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-other").sign(document.as_bytes());
    assert_refused(
        send(&server, attested(&document, &signature)).await,
        "signature does not verify with the AWS certificate of region eu-west-1",
    );
    // A region without a configured certificate is refused outright.
    let elsewhere = identity_document("i-0aaa", ACCOUNT, "us-east-1");
    let signature = TestSigner::from_fixture("aws-test").sign(elsewhere.as_bytes());
    assert_refused(
        send(&server, attested(&elsewhere, &signature)).await,
        "region us-east-1, for which no AWS certificate is configured",
    );
    assert_eq!(server.store.nodes().unwrap(), []);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_of_another_account_is_refused() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web")]);
    let server = start_server(Some(aws_table(&ec2, "")), credentials()).await;
    let document = identity_document("i-0aaa", "999999999999", REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    assert_refused(
        send(&server, attested(&document, &signature)).await,
        "account 999999999999 is not allowed to enroll",
    );
    assert_eq!(server.store.nodes().unwrap(), []);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_outside_the_allowed_autoscaling_groups_is_refused() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add(
        "i-0aaa",
        "running",
        &[
            ("role", "web"),
            ("aws:autoscaling:groupName", "web-staging"),
        ],
    );
    ec2.add("i-0bbb", "running", &[("role", "web")]);
    let server = start_server(
        Some(aws_table(&ec2, "autoscaling_groups = [\"web-prod\"]")),
        credentials(),
    )
    .await;
    let signer = TestSigner::from_fixture("aws-test");
    for (instance, group) in [("i-0aaa", "\"web-staging\""), ("i-0bbb", "\"\"")] {
        let document = identity_document(instance, ACCOUNT, REGION);
        let signature = signer.sign(document.as_bytes());
        assert_refused(
            send(&server, attested(&document, &signature)).await,
            &format!("is in autoscaling group {group}, which is not allowed"),
        );
    }
    assert_eq!(server.store.nodes().unwrap(), []);
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_and_a_name_the_agent_reports_are_ignored_for_those_of_ec2() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web"), ("env", "staging")]);
    let server = start_server(Some(aws_table(&ec2, "")), credentials()).await;
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    let mut request = attested(&document, &signature);
    request.tags = tags(&[("role", "db"), ("env", "prod")])
        .into_iter()
        .collect();
    request.node_name = "db-prod-1".into();
    let response = send(&server, request).await.expect("enrolled");
    assert_eq!(response.node_id, "i-0aaa");
    assert_eq!(
        response.bound_tags.into_iter().collect::<BTreeMap<_, _>>(),
        tags(&[("env", "staging"), ("role", "web")])
    );
    assert_eq!(server.store.node("db-prod-1").unwrap(), None);
    assert_eq!(
        server.store.node("i-0aaa").unwrap().unwrap().tags,
        tags(&[("env", "staging"), ("role", "web")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copied_document_of_a_live_instance_is_refused() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web")]);
    let server = start_server(Some(aws_table(&ec2, "")), credentials()).await;
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    let first = send(&server, attested(&document, &signature))
        .await
        .expect("the instance enrolls");
    // The document is static per instance: a copy replayed from elsewhere.
    assert_refused(
        send(&server, attested(&document, &signature)).await,
        "node i-0aaa is live",
    );
    let node = server.store.node("i-0aaa").unwrap().unwrap();
    let first_serial = serial_of(&first.certificate_pem);
    assert_eq!(node.certificate_serial, first_serial);
    assert!(!server.store.is_revoked(&first_serial).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enrolled_node_cannot_use_its_certificate_to_take_another_live_instances_name() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web")]);
    ec2.add("i-0bbb", "running", &[("role", "db")]);
    let server = start_server(Some(aws_table(&ec2, "")), credentials()).await;
    let signer = TestSigner::from_fixture("aws-test");
    let victim_document = identity_document("i-0bbb", ACCOUNT, REGION);
    let victim_signature = signer.sign(victim_document.as_bytes());
    let victim = send(&server, attested(&victim_document, &victim_signature))
        .await
        .expect("the victim enrolls");
    let own_document = identity_document("i-0aaa", ACCOUNT, REGION);
    let (csr_pem, key_pem) = csr_and_key("i-0aaa");
    let mut own = attested(&own_document, &signer.sign(own_document.as_bytes()));
    own.csr_pem = csr_pem;
    let attacker = send(&server, own)
        .await
        .expect("the attacker enrolls as itself");
    // With its own (valid) certificate and its own name in the request, the
    // attacker replays the victim's copied document.
    let mut replay = attested(&victim_document, &victim_signature);
    replay.node_name = "i-0aaa".into();
    assert_refused(
        send_as_node(&server, &attacker.certificate_pem, &key_pem, replay).await,
        "node i-0bbb is live",
    );
    let node = server.store.node("i-0bbb").unwrap().unwrap();
    assert_eq!(node.certificate_serial, serial_of(&victim.certificate_pem));
    assert!(
        !server
            .store
            .is_revoked(&serial_of(&victim.certificate_pem))
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_simultaneous_attested_enrollments_of_one_instance_give_one_certificate() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web")]);
    let server = start_server(Some(aws_table(&ec2, "")), credentials()).await;
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    let (a, b) = tokio::join!(
        send(&server, attested(&document, &signature)),
        send(&server, attested(&document, &signature)),
    );
    let won = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{a:?} {b:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_or_unknown_instance_cannot_enroll() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "stopped", &[("role", "web")]);
    let server = start_server(Some(aws_table(&ec2, "")), credentials()).await;
    let signer = TestSigner::from_fixture("aws-test");
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    assert_refused(
        send(
            &server,
            attested(&document, &signer.sign(document.as_bytes())),
        )
        .await,
        "instance i-0aaa is stopped, not running",
    );
    let unknown = identity_document("i-0ccc", ACCOUNT, REGION);
    assert_refused(
        send(
            &server,
            attested(&unknown, &signer.sign(unknown.as_bytes())),
        )
        .await,
        "InvalidInstanceID.NotFound",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_to_ec2_are_signed_with_the_servers_credentials() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web")]);
    let mut wrong = credentials();
    wrong.insert("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into());
    let server = start_server(Some(aws_table(&ec2, "")), wrong).await;
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    assert_refused(
        send(&server, attested(&document, &signature)).await,
        "AuthFailure",
    );
    assert!(ec2.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(ec2.answered.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_in_its_environment_the_server_uses_its_instance_role() {
    let ec2 = Ec2ApiDouble::start();
    ec2.add("i-0aaa", "running", &[("role", "web")]);
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    // The server's host's metadata service, serving its role's credentials.
    let host = ImdsDouble::start(String::new(), String::new());
    let server = start_server(
        Some(aws_table(
            &ec2,
            &format!("metadata_endpoint = \"{}\"", host.address),
        )),
        BTreeMap::new(),
    )
    .await;
    let response = send(&server, attested(&document, &signature))
        .await
        .expect("enrolled with the role's credentials");
    assert_eq!(response.node_id, "i-0aaa");
    assert_eq!(ec2.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_aws_settings_refuses_identity_documents() {
    let server = start_server(None, BTreeMap::new()).await;
    let document = identity_document("i-0aaa", ACCOUNT, REGION);
    let signature = TestSigner::from_fixture("aws-test").sign(document.as_bytes());
    assert_refused(
        send(&server, attested(&document, &signature)).await,
        "this server does not accept identity documents",
    );
}

#[test]
fn an_enrollment_file_naming_a_missing_certificate_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enrollment.toml");
    std::fs::write(
        &path,
        "[aws]\naccounts = [\"1\"]\n[aws.certificates]\neu-west-1 = \"missing.pem\"\n",
    )
    .unwrap();
    let error = cms_server::aws::load_config(&path, &BTreeMap::new(), cms_server::clock::system())
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("region eu-west-1"), "{message}");
    assert!(message.contains("missing.pem"), "{message}");
    assert!(message.contains("enrollment.toml"), "{message}");
}
