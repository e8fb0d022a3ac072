//! Test doubles of the two AWS services attested enrollment talks to, since
//! tests never reach AWS: `ImdsDouble`, the instance metadata service
//! (IMDSv2 session tokens, the instance identity document and its
//! signature, made with a test RSA key, `TestSigner`), and `Ec2ApiDouble`,
//! the EC2 Query API's `DescribeTags` and `DescribeInstances`, which
//! refuses any request whose SigV4 signature is not the one the test
//! credentials give.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject as _;

/// The folder of the test keys and certificates.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Signs identity documents as AWS would, with a test key: `aws-test`
/// (whose certificate the server is configured with) or `aws-other`.
pub struct TestSigner {
    key: ring::signature::RsaKeyPair,
}

impl TestSigner {
    pub fn from_fixture(name: &str) -> TestSigner {
        let pem = std::fs::read(fixtures().join(format!("{name}-key.pem"))).expect("test key");
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).expect("a PKCS#8 key");
        TestSigner {
            key: ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .expect("an RSA key"),
        }
    }

    /// The base64 RSA-SHA256 signature of `document`, as the metadata
    /// service serves it (wrapped at 64 columns).
    pub fn sign(&self, document: &[u8]) -> String {
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                document,
                &mut signature,
            )
            .expect("sign");
        let encoded = base64::engine::general_purpose::STANDARD.encode(signature);
        encoded
            .as_bytes()
            .chunks(64)
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// An instance identity document in the shape EC2 serves it.
pub fn identity_document(instance_id: &str, account_id: &str, region: &str) -> String {
    format!(
        r#"{{
  "accountId" : "{account_id}",
  "architecture" : "x86_64",
  "availabilityZone" : "{region}a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0123456789abcdef0",
  "instanceId" : "{instance_id}",
  "instanceType" : "t3.micro",
  "kernelId" : null,
  "pendingTime" : "2026-12-02T18:00:00Z",
  "privateIp" : "10.0.0.12",
  "ramdiskId" : null,
  "region" : "{region}",
  "version" : "2017-09-30"
}}"#
    )
}

/// One HTTP/1.1 request as a double received it.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// A small HTTP/1.1 server on loopback, one thread per connection, one
/// request per connection; runs until the test process ends.
fn serve(handler: Arc<Handler>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &*handler);
            });
        }
    });
    address
}

fn answer(stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (status, text) = handler(&Request {
        method,
        path,
        headers,
        body,
    });
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

/// The instance metadata service of one instance, IMDSv2 only: a GET
/// without a session token from `PUT /latest/api/token` gets 401.
pub struct ImdsDouble {
    pub address: SocketAddr,
}

impl ImdsDouble {
    pub fn start(document: String, signature: String) -> ImdsDouble {
        const TOKEN: &str = "imds-double-session-token";
        let handler = move |request: &Request| -> (u16, String) {
            if request.method == "PUT" && request.path == "/latest/api/token" {
                return (200, TOKEN.to_string());
            }
            if request
                .headers
                .get("x-aws-ec2-metadata-token")
                .map(String::as_str)
                != Some(TOKEN)
            {
                return (401, String::new());
            }
            match request.path.as_str() {
                "/latest/dynamic/instance-identity/document" => (200, document.clone()),
                "/latest/dynamic/instance-identity/signature" => (200, signature.clone()),
                // The role of the host, for a server that runs on EC2.
                "/latest/meta-data/iam/security-credentials/" => (200, ROLE.to_string()),
                path if path == format!("/latest/meta-data/iam/security-credentials/{ROLE}") => (
                    200,
                    format!(
                        r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{ACCESS_KEY_ID}","SecretAccessKey":"{SECRET_ACCESS_KEY}","Token":null,"Expiration":"2026-12-02T23:00:00Z"}}"#
                    ),
                ),
                _ => (404, String::new()),
            }
        };
        ImdsDouble {
            address: serve(Arc::new(handler)),
        }
    }
}

/// An instance as the EC2 double knows it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub state: String,
    pub tags: BTreeMap<String, String>,
}

/// The EC2 API's `DescribeTags` and `DescribeInstances`, answering only
/// requests SigV4-signed with `ACCESS_KEY_ID`/`SECRET_ACCESS_KEY`.
pub struct Ec2ApiDouble {
    pub url: String,
    pub instances: Arc<Mutex<BTreeMap<String, Instance>>>,
    /// Requests answered, and requests refused for their signature.
    pub answered: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
}

pub const ACCESS_KEY_ID: &str = "AKIDEC2DOUBLE";
/// The instance role `ImdsDouble` serves credentials of.
pub const ROLE: &str = "cms-server-role";
pub const SECRET_ACCESS_KEY: &str = "ec2-double-secret-key";

impl Ec2ApiDouble {
    pub fn start() -> Ec2ApiDouble {
        let instances: Arc<Mutex<BTreeMap<String, Instance>>> = Arc::default();
        let answered = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let url_cell: Arc<Mutex<String>> = Arc::default();
        let handler = {
            let (instances, answered, refused, url_cell) = (
                instances.clone(),
                answered.clone(),
                refused.clone(),
                url_cell.clone(),
            );
            move |request: &Request| -> (u16, String) {
                let url = url_cell.lock().unwrap().clone();
                if !signed_correctly(request, &url) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return (
                        401,
                        "<Response><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate the provided access credentials</Message></Error></Errors></Response>".into(),
                    );
                }
                answered.fetch_add(1, Ordering::SeqCst);
                let form: BTreeMap<String, String> =
                    form_urlencoded::parse(&request.body).into_owned().collect();
                let instances = instances.lock().unwrap();
                match form.get("Action").map(String::as_str) {
                    Some("DescribeTags") => {
                        let id = form.get("Filter.1.Value.1").cloned().unwrap_or_default();
                        let items: String = instances
                            .get(&id)
                            .map(|i| {
                                i.tags
                                    .iter()
                                    .map(|(k, v)| format!("<item><resourceId>{id}</resourceId><resourceType>instance</resourceType><key>{}</key><value>{}</value></item>", escape(k), escape(v)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        (
                            200,
                            format!(
                                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeTagsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>double</requestId><tagSet>{items}</tagSet></DescribeTagsResponse>"
                            ),
                        )
                    }
                    Some("DescribeInstances") => {
                        let id = form.get("InstanceId.1").cloned().unwrap_or_default();
                        match instances.get(&id) {
                            Some(instance) => (
                                200,
                                format!(
                                    "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><reservationSet><item><instancesSet><item><instanceId>{id}</instanceId><instanceState><code>16</code><name>{}</name></instanceState></item></instancesSet></item></reservationSet></DescribeInstancesResponse>",
                                    instance.state
                                ),
                            ),
                            None => (
                                400,
                                format!(
                                    "<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID '{id}' does not exist</Message></Error></Errors></Response>"
                                ),
                            ),
                        }
                    }
                    other => (
                        400,
                        format!(
                            "<Response><Errors><Error><Code>InvalidAction</Code><Message>{other:?}</Message></Error></Errors></Response>"
                        ),
                    ),
                }
            }
        };
        let address = serve(Arc::new(handler));
        let url = format!("http://{address}");
        *url_cell.lock().unwrap() = format!("{url}/");
        Ec2ApiDouble {
            url,
            instances,
            answered,
            refused,
        }
    }

    pub fn add(&self, instance_id: &str, state: &str, tags: &[(&str, &str)]) {
        self.instances.lock().unwrap().insert(
            instance_id.to_string(),
            Instance {
                state: state.to_string(),
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Whether the request carries the SigV4 signature that the double's
/// credentials give for it at the time it names (`X-Amz-Date`).
fn signed_correctly(request: &Request, url: &str) -> bool {
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    cms_aws::signing::verify(&request.method, url, &headers, &request.body, |key| {
        (key == ACCESS_KEY_ID).then(|| cms_aws::Credentials {
            access_key_id: ACCESS_KEY_ID.into(),
            secret_access_key: SECRET_ACCESS_KEY.into(),
            session_token: None,
        })
    })
    .is_ok_and(|verified| verified.service == "ec2")
}
