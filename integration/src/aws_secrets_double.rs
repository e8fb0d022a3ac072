//! `AwsSecretsDouble`: a test double of the two AWS secret stores the
//! server reads, since tests never reach AWS. A small HTTP/1.1 server on
//! loopback that answers the AWS JSON 1.1 calls SSM `GetParameter` and
//! Secrets Manager `GetSecretValue` (told apart by `X-Amz-Target`), refuses
//! a request without a SigV4-shaped `Authorization` header, and lets a test
//! set, rotate and remove values, or make every call fail, as it runs.
//! One thread accepts; each connection is served on its own thread, one
//! request, then closed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Values {
    parameters: BTreeMap<String, String>,
    secret_strings: BTreeMap<String, String>,
    /// Base64, as Secrets Manager sends `SecretBinary`.
    secret_binaries: BTreeMap<String, String>,
}

struct Shared {
    values: Mutex<Values>,
    failing: AtomicBool,
    calls: AtomicUsize,
    unsigned: AtomicUsize,
    stopping: AtomicBool,
    /// The `X-Amz-Target` of every call answered, in order.
    targets: Mutex<Vec<String>>,
}

/// The double, running; stops when dropped.
pub struct AwsSecretsDouble {
    address: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AwsSecretsDouble {
    /// Starts on a free loopback port.
    pub fn start() -> std::io::Result<AwsSecretsDouble> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            values: Mutex::new(Values::default()),
            failing: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            unsigned: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            targets: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = accepting.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        Ok(AwsSecretsDouble {
            address,
            shared,
            thread: Some(thread),
        })
    }

    /// The base URL of both services (`--ssm-endpoint`,
    /// `--secretsmanager-endpoint`).
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Sets (or rotates) an SSM parameter.
    pub fn set_parameter(&self, name: &str, value: &str) {
        self.values().parameters.insert(name.into(), value.into());
    }

    /// Sets (or rotates) a Secrets Manager secret's `SecretString`.
    pub fn set_secret_string(&self, name: &str, value: &str) {
        let mut values = self.values();
        values.secret_binaries.remove(name);
        values.secret_strings.insert(name.into(), value.into());
    }

    /// Sets a Secrets Manager secret's `SecretBinary` (given base64).
    pub fn set_secret_binary_base64(&self, name: &str, base64: &str) {
        let mut values = self.values();
        values.secret_strings.remove(name);
        values.secret_binaries.insert(name.into(), base64.into());
    }

    /// Removes a parameter or secret: calls for it get `ParameterNotFound`
    /// or `ResourceNotFoundException`.
    pub fn remove(&self, name: &str) {
        let mut values = self.values();
        values.parameters.remove(name);
        values.secret_strings.remove(name);
        values.secret_binaries.remove(name);
    }

    /// While set, every call is answered 500 `InternalFailure`.
    pub fn fail_every_call(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Calls answered (any outcome).
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Calls refused for a missing or malformed `Authorization`.
    pub fn unsigned_calls(&self) -> usize {
        self.shared.unsigned.load(Ordering::SeqCst)
    }

    /// The `X-Amz-Target` of every call, in order.
    pub fn targets(&self) -> Vec<String> {
        self.shared.targets.lock().expect("targets").clone()
    }

    fn values(&self) -> std::sync::MutexGuard<'_, Values> {
        self.shared.values.lock().expect("values")
    }
}

impl Drop for AwsSecretsDouble {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let target = headers.get("x-amz-target").cloned().unwrap_or_default();
    shared.targets.lock().expect("targets").push(target.clone());
    let (status, answer) = answer(shared, &request_line, &headers, &target, &body);
    let text = answer.to_string();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

fn answer(
    shared: &Shared,
    request_line: &str,
    headers: &BTreeMap<String, String>,
    target: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let error = |code: &str, message: &str| serde_json::json!({"__type": code, "message": message});
    if !request_line.starts_with("POST ") {
        return (405, error("MethodNotAllowed", "POST only"));
    }
    let signed = headers.get("authorization").is_some_and(|value| {
        value.starts_with("AWS4-HMAC-SHA256 Credential=")
            && value.contains("SignedHeaders=")
            && value.contains("Signature=")
    }) && headers.contains_key("x-amz-date");
    if !signed {
        shared.unsigned.fetch_add(1, Ordering::SeqCst);
        return (
            400,
            error("MissingAuthenticationTokenException", "no SigV4 signature"),
        );
    }
    if shared.failing.load(Ordering::SeqCst) {
        return (500, error("InternalFailure", "the double was told to fail"));
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (400, error("SerializationException", "not JSON"));
    };
    let values = shared.values.lock().expect("values");
    match target {
        "AmazonSSM.GetParameter" => {
            let name = request["Name"].as_str().unwrap_or_default();
            if request["WithDecryption"] != serde_json::json!(true) {
                return (
                    400,
                    error("ValidationException", "the double expects WithDecryption"),
                );
            }
            match values.parameters.get(name) {
                Some(value) => (
                    200,
                    serde_json::json!({"Parameter": {"Name": name, "Type": "SecureString", "Value": value, "Version": 1}}),
                ),
                None => (400, error("ParameterNotFound", name)),
            }
        }
        "secretsmanager.GetSecretValue" => {
            let name = request["SecretId"].as_str().unwrap_or_default();
            if let Some(value) = values.secret_strings.get(name) {
                (
                    200,
                    serde_json::json!({"Name": name, "SecretString": value}),
                )
            } else if let Some(value) = values.secret_binaries.get(name) {
                (
                    200,
                    serde_json::json!({"Name": name, "SecretBinary": value}),
                )
            } else {
                (
                    400,
                    error(
                        "ResourceNotFoundException",
                        "Secrets Manager can't find the specified secret.",
                    ),
                )
            }
        }
        other => (400, error("UnknownOperationException", other)),
    }
}
