//! `AwsSecretsDouble`: a test double of the two AWS secret stores the
//! server reads, since tests never reach AWS. A small HTTP/1.1 server on
//! loopback that answers the AWS JSON 1.1 calls SSM `GetParameter` and
//! Secrets Manager `GetSecretValue` (told apart by `X-Amz-Target`), refuses
//! a request without a SigV4-shaped `Authorization` header, and lets a test
//! set, rotate and remove values, or make every call fail, as it runs.
//! Its HTTP is `http_double`'s.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::http_double::{Answer, DoubleServer, ReceivedRequest};

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
    /// The `X-Amz-Target` of every call answered, in order.
    targets: Mutex<Vec<String>>,
}

/// The double, running; stops when dropped.
pub struct AwsSecretsDouble {
    shared: Arc<Shared>,
    server: DoubleServer,
}

impl AwsSecretsDouble {
    /// Starts on a free loopback port.
    pub fn start() -> std::io::Result<AwsSecretsDouble> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let shared = Arc::new(Shared {
            values: Mutex::new(Values::default()),
            failing: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            unsigned: AtomicUsize::new(0),
            targets: Mutex::new(Vec::new()),
        });
        let serving = shared.clone();
        let server = DoubleServer::start(
            listener,
            Arc::new(move |request: &ReceivedRequest| serve(request, &serving)),
        )?;
        Ok(AwsSecretsDouble { shared, server })
    }

    /// The base URL of both services (`--ssm-endpoint`,
    /// `--secretsmanager-endpoint`).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.address())
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

fn serve(request: &ReceivedRequest, shared: &Shared) -> Answer {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let target = request.header("x-amz-target").unwrap_or_default();
    shared
        .targets
        .lock()
        .expect("targets")
        .push(target.to_string());
    let (status, answer) = answer(shared, request, target);
    Answer {
        status,
        content_type: "application/x-amz-json-1.1",
        body: answer.to_string(),
    }
}

fn answer(shared: &Shared, request: &ReceivedRequest, target: &str) -> (u16, serde_json::Value) {
    let error = |code: &str, message: &str| serde_json::json!({"__type": code, "message": message});
    if request.method != "POST" {
        return (405, error("MethodNotAllowed", "POST only"));
    }
    let signed = request.header("authorization").is_some_and(|value| {
        value.starts_with("AWS4-HMAC-SHA256 Credential=")
            && value.contains("SignedHeaders=")
            && value.contains("Signature=")
    }) && request.header("x-amz-date").is_some();
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
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&request.body) else {
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
