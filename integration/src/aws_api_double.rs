//! `AwsApiDouble`: a test double of the AWS APIs the agent calls, since
//! tests never reach AWS. One HTTP/1.1 server (`http_double`) answers:
//!
//! - the instance metadata service, IMDSv2 only, for several instances
//!   told apart by the source address of the connection
//!   ([`AwsApiDouble::add_instance`]): a session token (`PUT
//!   /latest/api/token`), then `instance-id`, `placement/region`,
//!   `iam/security-credentials/` and the role's credentials, which the
//!   double issued for that instance;
//! - AutoScaling `CompleteLifecycleAction` (refusing an unknown group or
//!   hook, or an action already completed, with `ValidationError`, as AWS
//!   does) and `DescribeAutoScalingInstances`;
//! - ELBv2 `RegisterTargets`, `DeregisterTargets` and
//!   `DescribeTargetHealth`, with simulated states: a registered target is
//!   `initial` for the group's health delay, then `healthy`; a
//!   deregistered one `draining` for its deregistration delay, then gone.
//!
//! Every API call must be SigV4-signed with credentials the double issued:
//! it signs the request again with the issued secret
//! (`cms_aws::signing::verify`) and answers 403 `SignatureDoesNotMatch`
//! (or `InvalidClientTokenId`) otherwise. Every API call is recorded in
//! order, with its time, the calling instance, the action and its
//! parameters; the next N calls can be made to fail (throttling or 500)
//! for retry tests.
//!
//! In the testbed, start it on the bridge address
//! (`AwsApiDouble::start(SocketAddr::from((testbed.host_address(), 0)))`)
//! and give instances [`AwsApiDouble::endpoint_for_instances`] as
//! `[aws] endpoint` and [`AwsApiDouble::metadata_endpoint_for_instances`]
//! as `metadata_endpoint`; instances reach the host's bridge address, and
//! the double sees each instance's own address as the source. On the host
//! alone, [`AwsApiDouble::start_on_loopback`] and
//! `add_instance(127.0.0.1, …)`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use cms_aws::Credentials;
use cms_aws::xml::escape;

use crate::http_double::{Answer, DoubleServer, ReceivedRequest};

/// The role every instance of the double has.
pub const INSTANCE_ROLE: &str = "cms-instance-role";

/// One AWS API call the double received (IMDS requests are not calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    pub time_unix_ms: u64,
    /// The source address of the connection.
    pub peer: IpAddr,
    /// The instance of that address, if one was added.
    pub instance_id: Option<String>,
    pub action: String,
    /// Every form parameter but `Action` and `Version`.
    pub parameters: BTreeMap<String, String>,
    pub status: u16,
    /// The error code of a refused or failed call.
    pub error_code: Option<String>,
}

/// A completed lifecycle action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleCompletion {
    pub time_unix_ms: u64,
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    /// `CONTINUE` or `ABANDON`, as sent.
    pub result: String,
}

/// A change of a target group's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEvent {
    pub time_unix_ms: u64,
    pub instance_id: String,
    pub port: Option<u16>,
    pub kind: TargetEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetEventKind {
    Registered,
    Deregistered,
}

/// How the next calls fail, for [`AwsApiDouble::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFailure {
    /// 400 `Throttling`, as AutoScaling and ELBv2 throttle.
    Throttling,
    /// 500 `InternalFailure`.
    ServerError,
}

/// The double, running; stops when dropped.
pub struct AwsApiDouble {
    state: Arc<Mutex<State>>,
    server: DoubleServer,
}

#[derive(Default)]
struct State {
    region: String,
    /// Source address → instance id.
    instances: BTreeMap<IpAddr, String>,
    /// Access key id → (credentials, instance id).
    issued: BTreeMap<String, (Credentials, String)>,
    metadata_tokens: BTreeSet<String>,
    groups: BTreeMap<String, String>,
    hooks: BTreeSet<(String, String)>,
    lifecycle: Vec<LifecycleCompletion>,
    target_groups: BTreeMap<String, TargetGroup>,
    target_events: BTreeMap<String, Vec<TargetEvent>>,
    calls: Vec<ApiCall>,
    failures: Vec<ApiFailure>,
    counter: u64,
}

struct TargetGroup {
    draining: Duration,
    initial: Duration,
    /// (instance id, port) → (registered, since when).
    targets: BTreeMap<(String, Option<u16>), (bool, u64)>,
}

impl AwsApiDouble {
    /// Starts on `bind_address` (port 0 picks one): the testbed's bridge
    /// address for instances to reach it.
    pub fn start(bind_address: SocketAddr) -> Result<AwsApiDouble> {
        let listener = TcpListener::bind(bind_address)
            .with_context(|| format!("Failed to listen on {bind_address} for the AWS double"))?;
        let state = Arc::new(Mutex::new(State {
            region: "eu-west-1".into(),
            ..State::default()
        }));
        let serving = state.clone();
        let server = DoubleServer::start(
            listener,
            Arc::new(move |request: &ReceivedRequest| answer(&serving, request)),
        )
        .context("Failed to start the AWS double")?;
        Ok(AwsApiDouble { state, server })
    }

    /// Starts on a free loopback port, for tests on the host alone.
    pub fn start_on_loopback() -> Result<AwsApiDouble> {
        AwsApiDouble::start(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn address(&self) -> SocketAddr {
        self.server.address()
    }

    /// The base URL of every API, for agent.toml's `[aws] endpoint`.
    pub fn endpoint_for_instances(&self) -> String {
        format!("http://{}", self.address())
    }

    /// `host:port` of the metadata service, for agent.toml's
    /// `metadata_endpoint`.
    pub fn metadata_endpoint_for_instances(&self) -> String {
        self.address().to_string()
    }

    /// The region `placement/region` answers [default: `eu-west-1`].
    pub fn set_region(&self, region: &str) {
        self.state().region = region.into();
    }

    /// Connections from `address` are instance `instance_id`'s; issues
    /// its role's credentials.
    pub fn add_instance(&self, address: IpAddr, instance_id: &str) {
        let mut state = self.state();
        state.counter += 1;
        let n = state.counter;
        let credentials = Credentials {
            access_key_id: format!("ASIADOUBLE{n:06}"),
            secret_access_key: format!("double-secret-{n}-{instance_id}"),
            session_token: Some(format!("double-session-token-{n}")),
        };
        state.instances.insert(address, instance_id.into());
        state.issued.insert(
            credentials.access_key_id.clone(),
            (credentials, instance_id.into()),
        );
    }

    /// The role credentials issued for the instance.
    pub fn credentials_of(&self, instance_id: &str) -> Option<Credentials> {
        self.state()
            .issued
            .values()
            .find(|(_, owner)| owner == instance_id)
            .map(|(credentials, _)| credentials.clone())
    }

    /// `DescribeAutoScalingInstances` puts the instance in `group`.
    pub fn set_autoscaling_group(&self, instance_id: &str, group: &str) {
        self.state().groups.insert(instance_id.into(), group.into());
    }

    /// The group has a lifecycle hook named `hook`.
    pub fn add_lifecycle_hook(&self, group: &str, hook: &str) {
        self.state().hooks.insert((group.into(), hook.into()));
    }

    /// A target group whose deregistered targets drain for `draining` and
    /// whose registered targets are `initial` for `initial`.
    pub fn add_target_group(&self, arn: &str, draining: Duration, initial: Duration) {
        self.state().target_groups.insert(
            arn.into(),
            TargetGroup {
                draining,
                initial,
                targets: BTreeMap::new(),
            },
        );
    }

    /// The instance is a healthy target of the group already.
    pub fn add_healthy_target(&self, arn: &str, instance_id: &str, port: Option<u16>) {
        let mut state = self.state();
        let group = state
            .target_groups
            .get_mut(arn)
            .expect("add_target_group first");
        group.targets.insert((instance_id.into(), port), (true, 0));
    }

    /// The next `count` API calls (signed correctly) fail so.
    pub fn fail_next(&self, count: usize, failure: ApiFailure) {
        self.state()
            .failures
            .extend(std::iter::repeat_n(failure, count));
    }

    /// Every API call, in the order received.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.state().calls.clone()
    }

    /// Every completed lifecycle action, in order.
    pub fn lifecycle_results(&self) -> Vec<LifecycleCompletion> {
        self.state().lifecycle.clone()
    }

    /// Every registration and deregistration in the target group, in order.
    pub fn target_events(&self, target_group_arn: &str) -> Vec<TargetEvent> {
        self.state()
            .target_events
            .get(target_group_arn)
            .cloned()
            .unwrap_or_default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn answer(state: &Mutex<State>, request: &ReceivedRequest) -> Answer {
    if request.target.starts_with("/latest/") {
        let (status, body) = metadata(&mut lock(state), request);
        return Answer {
            status,
            content_type: "text/plain",
            body,
        };
    }
    let (status, body) = api_call(state, request);
    Answer {
        status,
        content_type: "text/xml",
        body,
    }
}

/// IMDSv2: a token first, then GETs carrying it.
fn metadata(state: &mut State, request: &ReceivedRequest) -> (u16, String) {
    if request.method == "PUT" && request.target == "/latest/api/token" {
        if request
            .header("x-aws-ec2-metadata-token-ttl-seconds")
            .is_none()
        {
            return (400, String::new());
        }
        state.counter += 1;
        let token = format!("imds-double-token-{}", state.counter);
        state.metadata_tokens.insert(token.clone());
        return (200, token);
    }
    let known_token = request
        .header("x-aws-ec2-metadata-token")
        .is_some_and(|token| state.metadata_tokens.contains(token));
    if request.method != "GET" || !known_token {
        return (401, String::new());
    }
    let Some(instance_id) = state.instances.get(&request.peer.ip()).cloned() else {
        return (404, String::new());
    };
    let role_path = format!("/latest/meta-data/iam/security-credentials/{INSTANCE_ROLE}");
    match request.target.as_str() {
        "/latest/meta-data/instance-id" => (200, instance_id),
        "/latest/meta-data/placement/region" => (200, state.region.clone()),
        "/latest/meta-data/iam/security-credentials/" => (200, INSTANCE_ROLE.into()),
        path if path == role_path => {
            let Some((credentials, _)) = state.issued.values().find(|(_, i)| *i == instance_id)
            else {
                return (404, String::new());
            };
            let json = serde_json::json!({
                "Code": "Success",
                "LastUpdated": "2026-12-02T18:00:00Z",
                "Type": "AWS-HMAC",
                "AccessKeyId": credentials.access_key_id,
                "SecretAccessKey": credentials.secret_access_key,
                "Token": credentials.session_token,
                "Expiration": "2099-12-02T23:00:00Z",
            });
            (200, json.to_string())
        }
        _ => (404, String::new()),
    }
}

/// One Query API call: verified, perhaps failed on demand, answered,
/// recorded.
fn api_call(state: &Mutex<State>, request: &ReceivedRequest) -> (u16, String) {
    let time_unix_ms = now_unix_ms();
    let mut parameters: BTreeMap<String, String> =
        form_urlencoded::parse(&request.body).into_owned().collect();
    let action = parameters.remove("Action").unwrap_or_default();
    parameters.remove("Version");
    let mut state = lock(state);
    let outcome = answer_call(&mut state, request, &action, &parameters, time_unix_ms);
    let (status, body, error_code) = match outcome {
        Ok(body) => (200, body, None),
        Err((status, code, message)) => {
            let body = format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>double</RequestId></ErrorResponse>",
                escape(&code),
                escape(&message)
            );
            (status, body, Some(code))
        }
    };
    let instance_id = state.instances.get(&request.peer.ip()).cloned();
    state.calls.push(ApiCall {
        time_unix_ms,
        peer: request.peer.ip(),
        instance_id,
        action,
        parameters,
        status,
        error_code,
    });
    (status, body)
}

type Refusal = (u16, String, String);

fn refuse(code: &str, message: impl Into<String>) -> Refusal {
    (400, code.into(), message.into())
}

fn answer_call(
    state: &mut State,
    request: &ReceivedRequest,
    action: &str,
    parameters: &BTreeMap<String, String>,
    now: u64,
) -> Result<String, Refusal> {
    if request.method != "POST" {
        return Err(refuse("InvalidAction", "the Query API takes POST"));
    }
    let url = format!(
        "http://{}{}",
        request.header("host").unwrap_or_default(),
        request.target
    );
    cms_aws::signing::verify(
        &request.method,
        &url,
        &request.headers,
        &request.body,
        |key| {
            state
                .issued
                .get(key)
                .map(|(credentials, _)| credentials.clone())
        },
    )
    .map_err(|error| (403, error.code().to_string(), error.to_string()))?;
    if !state.failures.is_empty() {
        return Err(match state.failures.remove(0) {
            ApiFailure::Throttling => refuse("Throttling", "Rate exceeded"),
            ApiFailure::ServerError => (
                500,
                "InternalFailure".into(),
                "the double was told to fail".into(),
            ),
        });
    }
    let parameter = |name: &str| {
        parameters
            .get(name)
            .cloned()
            .ok_or_else(|| refuse("ValidationError", format!("{name} is required")))
    };
    let (namespace, result) = match action {
        "DescribeAutoScalingInstances" => {
            let instance_id = parameter("InstanceIds.member.1")?;
            let members = match state.groups.get(&instance_id) {
                Some(group) => format!(
                    "<member><InstanceId>{}</InstanceId><AutoScalingGroupName>{}</AutoScalingGroupName><AvailabilityZone>{}a</AvailabilityZone><LifecycleState>Pending:Wait</LifecycleState><HealthStatus>HEALTHY</HealthStatus><ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>",
                    escape(&instance_id),
                    escape(group),
                    escape(&state.region)
                ),
                None => String::new(),
            };
            (
                "autoscaling",
                format!("<AutoScalingInstances>{members}</AutoScalingInstances>"),
            )
        }
        "CompleteLifecycleAction" => {
            let group = parameter("AutoScalingGroupName")?;
            let hook = parameter("LifecycleHookName")?;
            let instance_id = parameter("InstanceId")?;
            let result = parameter("LifecycleActionResult")?;
            if !matches!(result.as_str(), "CONTINUE" | "ABANDON") {
                return Err(refuse(
                    "ValidationError",
                    format!("LifecycleActionResult {result} is neither CONTINUE nor ABANDON"),
                ));
            }
            let in_group = state.groups.get(&instance_id).is_none_or(|g| *g == group);
            let completed = state
                .lifecycle
                .iter()
                .any(|c| c.group == group && c.hook == hook && c.instance_id == instance_id);
            if !state.hooks.contains(&(group.clone(), hook.clone())) || !in_group || completed {
                return Err(refuse(
                    "ValidationError",
                    format!("No active Lifecycle Action found with instance ID {instance_id}"),
                ));
            }
            state.lifecycle.push(LifecycleCompletion {
                time_unix_ms: now,
                group,
                hook,
                instance_id,
                result,
            });
            ("autoscaling", String::new())
        }
        "RegisterTargets" | "DeregisterTargets" | "DescribeTargetHealth" => {
            let arn = parameter("TargetGroupArn")?;
            let instance_id = parameter("Targets.member.1.Id")?;
            let port = match parameters.get("Targets.member.1.Port") {
                Some(port) => Some(
                    port.parse::<u16>()
                        .map_err(|_| refuse("ValidationError", format!("{port} is not a port")))?,
                ),
                None => None,
            };
            let Some(group) = state.target_groups.get_mut(&arn) else {
                return Err(refuse(
                    "TargetGroupNotFound",
                    format!("One or more target groups not found: {arn}"),
                ));
            };
            let key = (instance_id.clone(), port);
            let event = |kind| TargetEvent {
                time_unix_ms: now,
                instance_id: instance_id.clone(),
                port,
                kind,
            };
            match action {
                "RegisterTargets" => {
                    if !group
                        .targets
                        .get(&key)
                        .is_some_and(|(registered, _)| *registered)
                    {
                        group.targets.insert(key, (true, now));
                    }
                    let event = event(TargetEventKind::Registered);
                    state.target_events.entry(arn).or_default().push(event);
                }
                "DeregisterTargets" => {
                    if group
                        .targets
                        .get(&key)
                        .is_some_and(|(registered, _)| *registered)
                    {
                        group.targets.insert(key, (false, now));
                    }
                    let event = event(TargetEventKind::Deregistered);
                    state.target_events.entry(arn).or_default().push(event);
                }
                _ => {
                    let (state_name, reason) = target_health(group, &instance_id, port, now);
                    let port_text = port
                        .map(|p| format!("<Port>{p}</Port>"))
                        .unwrap_or_default();
                    return Ok(response(
                        "elasticloadbalancing",
                        action,
                        &format!(
                            "<TargetHealthDescriptions><member><TargetHealth><State>{state_name}</State><Reason>{reason}</Reason></TargetHealth><Target>{port_text}<Id>{}</Id></Target></member></TargetHealthDescriptions>",
                            escape(&instance_id)
                        ),
                    ));
                }
            }
            ("elasticloadbalancing", String::new())
        }
        other => {
            return Err(refuse(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            ));
        }
    };
    Ok(response(namespace, action, &result))
}

/// The target's simulated state now, and AWS's reason for it.
fn target_health(
    group: &TargetGroup,
    instance_id: &str,
    port: Option<u16>,
    now: u64,
) -> (&'static str, &'static str) {
    let found = group
        .targets
        .iter()
        .find(|((id, p), _)| id == instance_id && (port.is_none() || *p == port));
    match found {
        Some((_, (true, since))) if now < since + group.initial.as_millis() as u64 => {
            ("initial", "Elb.RegistrationInProgress")
        }
        Some((_, (true, _))) => ("healthy", ""),
        Some((_, (false, since))) if now < since + group.draining.as_millis() as u64 => {
            ("draining", "Target.DeregistrationInProgress")
        }
        _ => ("unused", "Target.NotRegistered"),
    }
}

/// A Query API answer: `<ActionResponse><ActionResult>…`.
fn response(service: &str, action: &str, result: &str) -> String {
    let version = if service == "autoscaling" {
        "2011-01-01"
    } else {
        "2015-12-01"
    };
    format!(
        r#"<{action}Response xmlns="http://{service}.amazonaws.com/doc/{version}/"><{action}Result>{result}</{action}Result><ResponseMetadata><RequestId>double</RequestId></ResponseMetadata></{action}Response>"#
    )
}
