//! The agent's AWS calls: completing its instance's launch lifecycle
//! action (AutoScaling) and taking it out of, and back into, load-balancer
//! target groups (ELBv2), for the lifecycle hook and a restart's drain.
//!
//! Both APIs speak the Query protocol (a form POST, an XML answer), signed
//! with SigV4 (`cms_aws::signing`) with the credentials of the agent's
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`) or else the instance role's, read from the
//! instance metadata service with IMDSv2 (`imds`) and kept five minutes.
//! The instance id and, unless configured, the region come from the
//! metadata service too, read once.
//!
//! Everything here blocks (HTTP/1.1 through `cms_modules::host::http`, a
//! timeout per request, three attempts on failed connections, server
//! errors and throttling, none on a refusal): it runs on blocking threads
//! during a converge. Errors name the call, the endpoint, what AWS
//! answered and what to check.

pub mod imds;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cms_aws::Credentials;
use cms_aws::credentials::{ROLE_CREDENTIALS_KEPT, ROLE_CREDENTIALS_PATH};
use cms_aws::retry::{ATTEMPTS, REQUEST_TIMEOUT};
use cms_modules::Host;
use cms_modules::host::http::HttpRequest;

use self::imds::{EC2_METADATA_ENDPOINT, MetadataClient};

/// Where the agent's AWS calls go.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// One base URL for every API instead of
    /// `https://SERVICE.REGION.amazonaws.com/` (a test double, a proxy).
    pub endpoint: Option<String>,
    /// The region of the calls; read from the metadata service
    /// (`placement/region`) when unset.
    pub region: Option<String>,
    /// `host:port` of the instance metadata service [default: EC2's].
    pub metadata_endpoint: Option<String>,
}

/// How a lifecycle action is completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleResult {
    /// The instance is ready: the group goes on with it.
    Continue,
    /// The instance is not ready: the group terminates it.
    Abandon,
}

impl LifecycleResult {
    /// As AutoScaling spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

/// A target's state in a target group, as `DescribeTargetHealth` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Registered, its first health checks under way.
    Initial,
    Healthy,
    Unhealthy,
    /// Registered but not in use (no listener, an availability zone the
    /// load balancer does not serve, …).
    Unused,
    /// Deregistered, connections draining.
    Draining,
    /// Health checks are disabled.
    Unavailable,
    /// Not a target of the group (`unused` with `Target.NotRegistered`).
    NotRegistered,
}

/// Why an AWS call failed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(
        "Failed to read {what} from the instance metadata service at {endpoint}: {message}\nhint: on EC2, check the instance's metadata options (IMDSv2 enabled, hop limit); elsewhere, set metadata_endpoint{also}"
    )]
    Metadata {
        what: &'static str,
        endpoint: String,
        message: String,
        /// What else avoids the metadata service for this value.
        also: &'static str,
    },
    #[error("Failed to sign {call} for {url}: {message}")]
    Sign {
        call: &'static str,
        url: String,
        message: String,
    },
    #[error("{call} at {url} was refused ({status}): {code}: {message}{hint}")]
    Refused {
        call: &'static str,
        url: String,
        status: u16,
        code: String,
        message: String,
        /// `\nhint: …` naming what to check, or empty.
        hint: String,
    },
    #[error(
        "{call} at {url} failed after {ATTEMPTS} attempts: {last}\nhint: check that this instance reaches {url} (a VPC endpoint or a NAT gateway for private subnets)"
    )]
    Unreachable {
        call: &'static str,
        url: String,
        last: String,
    },
    #[error("{call} at {url} answered something unreadable: {message}")]
    Malformed {
        call: &'static str,
        url: String,
        message: String,
    },
    #[error(
        "DescribeAutoScalingInstances at {url} does not list instance {instance_id}: it is in no autoscaling group\nhint: name the group in agent.toml ([lifecycle] group = \"NAME\"), or check that the instance was launched by an autoscaling group"
    )]
    NotInGroup { url: String, instance_id: String },
}

/// The AutoScaling Query API.
const AUTOSCALING: Api = Api {
    name: "autoscaling",
    version: "2011-01-01",
};
/// The ELBv2 Query API.
const ELBV2: Api = Api {
    name: "elasticloadbalancing",
    version: "2015-12-01",
};

#[derive(Debug, Clone, Copy)]
struct Api {
    /// The signing name, the endpoint's first label and the IAM prefix.
    name: &'static str,
    version: &'static str,
}

/// How long one metadata request may take, and all of one operation's.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
const METADATA_BUDGET: Duration = Duration::from_secs(10);
/// Answers longer than this are refused.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The agent's AWS client; blocking.
#[derive(Debug)]
pub struct Aws {
    settings: AwsSettings,
    environment_credentials: Option<Credentials>,
    instance_id: OnceLock<String>,
    region: OnceLock<String>,
    role_credentials: Mutex<Option<(Credentials, Instant)>>,
}

impl Aws {
    /// A client with the credentials of the process environment, if set.
    pub fn new(settings: AwsSettings) -> Aws {
        Aws::with_environment(settings, |name| std::env::var(name).ok())
    }

    /// A client with the credentials of the environment `var` reads (the
    /// instance role's when it holds none).
    pub fn with_environment(settings: AwsSettings, var: impl Fn(&str) -> Option<String>) -> Aws {
        Aws {
            settings,
            environment_credentials: Credentials::from_environment(var),
            instance_id: OnceLock::new(),
            region: OnceLock::new(),
            role_credentials: Mutex::new(None),
        }
    }

    /// This instance's id, from the metadata service (read once).
    pub fn instance_id(&self) -> Result<String, AwsError> {
        if let Some(id) = self.instance_id.get() {
            return Ok(id.clone());
        }
        let id = self.metadata_value("the instance id", "", "/latest/meta-data/instance-id")?;
        Ok(self.instance_id.get_or_init(|| id).clone())
    }

    /// Completes this instance's lifecycle action of `hook` in `group`
    /// (when `None`, the group `DescribeAutoScalingInstances` gives);
    /// returns the group.
    pub fn complete_lifecycle_action(
        &self,
        hook: &str,
        group: Option<&str>,
        result: LifecycleResult,
    ) -> Result<String, AwsError> {
        let instance_id = self.instance_id()?;
        let group = match group {
            Some(group) => group.to_string(),
            None => self.autoscaling_group(&instance_id)?,
        };
        self.call(
            AUTOSCALING,
            "CompleteLifecycleAction",
            &[
                ("AutoScalingGroupName", &group),
                ("LifecycleHookName", hook),
                ("InstanceId", &instance_id),
                ("LifecycleActionResult", result.as_str()),
            ],
        )?;
        Ok(group)
    }

    /// Takes this instance out of the target group (on `port`, or the
    /// group's); the target drains for the group's deregistration delay.
    pub fn deregister_target(
        &self,
        target_group_arn: &str,
        port: Option<u16>,
    ) -> Result<(), AwsError> {
        self.target_call("DeregisterTargets", target_group_arn, port)
            .map(drop)
    }

    /// Puts this instance (back) into the target group.
    pub fn register_target(
        &self,
        target_group_arn: &str,
        port: Option<u16>,
    ) -> Result<(), AwsError> {
        self.target_call("RegisterTargets", target_group_arn, port)
            .map(drop)
    }

    /// This instance's state in the target group.
    pub fn target_state(
        &self,
        target_group_arn: &str,
        port: Option<u16>,
    ) -> Result<TargetState, AwsError> {
        let instance_id = self.instance_id()?;
        let (url, answer) = self.target_call("DescribeTargetHealth", target_group_arn, port)?;
        target_state_of(&answer, &instance_id, port).map_err(|message| AwsError::Malformed {
            call: "DescribeTargetHealth",
            url,
            message,
        })
    }

    /// The autoscaling group of the instance.
    fn autoscaling_group(&self, instance_id: &str) -> Result<String, AwsError> {
        let (url, answer) = self.call(
            AUTOSCALING,
            "DescribeAutoScalingInstances",
            &[("InstanceIds.member.1", instance_id)],
        )?;
        match cms_aws::xml::first_text(&answer, "AutoScalingGroupName") {
            Ok(Some(group)) if !group.is_empty() => Ok(group),
            Ok(_) => Err(AwsError::NotInGroup {
                url,
                instance_id: instance_id.to_string(),
            }),
            Err(message) => Err(AwsError::Malformed {
                call: "DescribeAutoScalingInstances",
                url,
                message,
            }),
        }
    }

    /// An ELBv2 call about this instance as a target of the group.
    fn target_call(
        &self,
        action: &'static str,
        target_group_arn: &str,
        port: Option<u16>,
    ) -> Result<(String, String), AwsError> {
        let instance_id = self.instance_id()?;
        let port = port.map(|port| port.to_string());
        let mut parameters = vec![
            ("TargetGroupArn", target_group_arn),
            ("Targets.member.1.Id", instance_id.as_str()),
        ];
        if let Some(port) = &port {
            parameters.push(("Targets.member.1.Port", port));
        }
        self.call(ELBV2, action, &parameters)
    }

    /// One signed Query call, retried; the URL and the body of its 200
    /// answer.
    fn call(
        &self,
        api: Api,
        action: &'static str,
        parameters: &[(&str, &str)],
    ) -> Result<(String, String), AwsError> {
        let region = self.region()?;
        let url = match &self.settings.endpoint {
            Some(endpoint) => format!("{}/", endpoint.trim_end_matches('/')),
            None => format!("https://{}.{region}.amazonaws.com/", api.name),
        };
        let body = cms_aws::query::form_body(action, api.version, parameters);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            std::thread::sleep(cms_aws::retry::backoff(attempt));
            let (credentials, from) = self.credentials()?;
            let content_type = cms_aws::query::CONTENT_TYPE;
            let signature = cms_aws::signing::signature_headers(
                &credentials,
                cms_aws::signing::Scope {
                    region: &region,
                    service: api.name,
                    time_unix_ms: crate::clock::unix_ms(),
                },
                cms_aws::signing::Request {
                    method: "POST",
                    url: &url,
                    headers: &[("content-type", content_type)],
                    body: body.as_bytes(),
                },
            )
            .map_err(|message| AwsError::Sign {
                call: action,
                url: url.clone(),
                message,
            })?;
            let mut headers = vec![("Content-Type", content_type)];
            headers.extend(
                signature
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            );
            let sent = Host::system().http_request(&HttpRequest {
                method: "POST",
                url: &url,
                headers: &headers,
                body: body.as_bytes(),
                timeout: REQUEST_TIMEOUT,
                max_body_bytes: MAX_ANSWER_BYTES,
            });
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    last = cms_modules::error_text(&error);
                    continue;
                }
            };
            let text = response.text();
            if response.status == 200 {
                return Ok((url, text));
            }
            let (code, message) = cms_aws::xml::error_of(&text);
            if !cms_aws::retry::is_retryable(response.status, &code) {
                let hint = hint_for(api, action, &code, from);
                return Err(AwsError::Refused {
                    call: action,
                    url,
                    status: response.status,
                    code,
                    message,
                    hint,
                });
            }
            last = format!("{}: {code}: {message}", response.status);
        }
        Err(AwsError::Unreachable {
            call: action,
            url,
            last,
        })
    }

    fn region(&self) -> Result<String, AwsError> {
        if let Some(region) = self.settings.region.as_ref().or(self.region.get()) {
            return Ok(region.clone());
        }
        let region = self.metadata_value(
            "the region",
            ", or set region in agent.toml's [aws]",
            "/latest/meta-data/placement/region",
        )?;
        Ok(self.region.get_or_init(|| region).clone())
    }

    /// Credentials valid now, and where they come from (for hints).
    fn credentials(&self) -> Result<(Credentials, CredentialsFrom), AwsError> {
        if let Some(credentials) = &self.environment_credentials {
            return Ok((credentials.clone(), CredentialsFrom::Environment));
        }
        let mut kept = self
            .role_credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((credentials, read)) = kept.as_ref()
            && read.elapsed() < ROLE_CREDENTIALS_KEPT
        {
            return Ok((credentials.clone(), CredentialsFrom::InstanceRole));
        }
        let what = "the instance role's credentials";
        let also =
            ", or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the agent's environment";
        let client = self.metadata_client();
        let failed = |message: String| self.metadata_error(what, also, message);
        let token = client.token().map_err(|e| failed(format!("{e:#}")))?;
        let listing = client
            .value(&token, ROLE_CREDENTIALS_PATH)
            .map_err(|e| failed(format!("{e:#} (does the instance have a role?)")))?;
        let role = cms_aws::credentials::first_role(&listing).map_err(|e| failed(e.to_string()))?;
        let json = client
            .value(&token, &format!("{ROLE_CREDENTIALS_PATH}{role}"))
            .map_err(|e| failed(format!("{e:#}")))?;
        let credentials = cms_aws::credentials::parse_role_credentials(&json)
            .map_err(|e| failed(e.to_string()))?;
        *kept = Some((credentials.clone(), crate::clock::instant()));
        Ok((credentials, CredentialsFrom::InstanceRole))
    }

    fn metadata_client(&self) -> MetadataClient {
        MetadataClient::new(
            self.metadata_endpoint().to_string(),
            METADATA_TIMEOUT,
            METADATA_BUDGET,
        )
    }

    fn metadata_endpoint(&self) -> &str {
        self.settings
            .metadata_endpoint
            .as_deref()
            .unwrap_or(EC2_METADATA_ENDPOINT)
    }

    fn metadata_error(&self, what: &'static str, also: &'static str, message: String) -> AwsError {
        AwsError::Metadata {
            what,
            endpoint: self.metadata_endpoint().to_string(),
            message,
            also,
        }
    }

    /// One value of the metadata service, with a token of its own.
    fn metadata_value(
        &self,
        what: &'static str,
        also: &'static str,
        path: &str,
    ) -> Result<String, AwsError> {
        let client = self.metadata_client();
        client
            .token()
            .and_then(|token| client.value(&token, path))
            .map_err(|e| self.metadata_error(what, also, format!("{e:#}")))
    }
}

/// Where the credentials of a call came from.
#[derive(Debug, Clone, Copy)]
enum CredentialsFrom {
    Environment,
    InstanceRole,
}

/// What to check after a refusal, by the AWS error code.
fn hint_for(api: Api, action: &str, code: &str, from: CredentialsFrom) -> String {
    let whose = match from {
        CredentialsFrom::Environment => {
            "the credentials in the agent's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)"
        }
        CredentialsFrom::InstanceRole => "the instance role's credentials",
    };
    let hint = match code {
        "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => match from {
            CredentialsFrom::InstanceRole => format!(
                "the instance role's policy needs {}:{action}",
                api.name
            ),
            CredentialsFrom::Environment => format!(
                "the policy of the user or role of AWS_ACCESS_KEY_ID needs {}:{action}",
                api.name
            ),
        },
        "SignatureDoesNotMatch" | "IncompleteSignature" => format!(
            "AWS did not accept the signature made with {whose}: check the secret access key, and this machine's clock"
        ),
        "InvalidClientTokenId" | "UnrecognizedClientException" | "ExpiredToken" => {
            format!("AWS does not know or no longer accepts {whose}")
        }
        "ValidationError" if action == "CompleteLifecycleAction" => "check the hook name and the autoscaling group, and that the instance is waiting in that hook (it may have timed out or been completed already)".to_string(),
        "TargetGroupNotFound" => "check the target group's ARN, and that it is in this instance's region".to_string(),
        "InvalidTarget" => "check the port, and that the instance is in the target group's VPC".to_string(),
        _ => return String::new(),
    };
    format!("\nhint: {hint}")
}

/// The state of `instance_id` (on `port`, if given) in a
/// `DescribeTargetHealth` answer.
fn target_state_of(xml: &str, instance_id: &str, port: Option<u16>) -> Result<TargetState, String> {
    #[derive(Default)]
    struct Member {
        id: String,
        port: String,
        state: String,
        reason: String,
    }
    let mut members = Vec::new();
    let mut member = Member::default();
    cms_aws::xml::walk(xml, |path, text| {
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        match names.as_slice() {
            [.., "TargetHealthDescriptions", "member", "Target", "Id"] => member.id = text.into(),
            [.., "TargetHealthDescriptions", "member", "Target", "Port"] => {
                member.port = text.into()
            }
            [
                ..,
                "TargetHealthDescriptions",
                "member",
                "TargetHealth",
                "State",
            ] => member.state = text.into(),
            [
                ..,
                "TargetHealthDescriptions",
                "member",
                "TargetHealth",
                "Reason",
            ] => member.reason = text.into(),
            [.., "TargetHealthDescriptions", "member"] => members.push(std::mem::take(&mut member)),
            _ => {}
        }
    })?;
    let port = port.map(|port| port.to_string());
    let Some(member) = members
        .iter()
        .find(|m| m.id == instance_id && port.as_ref().is_none_or(|port| *port == m.port))
    else {
        return Ok(TargetState::NotRegistered);
    };
    Ok(match member.state.as_str() {
        "initial" => TargetState::Initial,
        "healthy" => TargetState::Healthy,
        "unhealthy" | "unhealthy.draining" => TargetState::Unhealthy,
        "unused" if member.reason == "Target.NotRegistered" => TargetState::NotRegistered,
        "unused" => TargetState::Unused,
        "draining" => TargetState::Draining,
        "unavailable" => TargetState::Unavailable,
        other => return Err(format!("unknown target state {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe_target_health(members: &[(&str, u16, &str, &str)]) -> String {
        let members: String = members
            .iter()
            .map(|(id, port, state, reason)| format!("<member><HealthCheckPort>{port}</HealthCheckPort><TargetHealth><State>{state}</State><Reason>{reason}</Reason></TargetHealth><Target><Port>{port}</Port><Id>{id}</Id></Target></member>"))
            .collect();
        format!(
            r#"<DescribeTargetHealthResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><DescribeTargetHealthResult><TargetHealthDescriptions>{members}</TargetHealthDescriptions></DescribeTargetHealthResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></DescribeTargetHealthResponse>"#
        )
    }

    #[test]
    fn target_states_are_read_for_this_instance_and_port() {
        let xml = describe_target_health(&[
            ("i-other", 8080, "healthy", ""),
            ("i-1", 8080, "draining", "Target.DeregistrationInProgress"),
            ("i-1", 9090, "initial", "Elb.RegistrationInProgress"),
        ]);
        let state = |port| target_state_of(&xml, "i-1", port).expect("parses");
        assert_eq!(state(Some(8080)), TargetState::Draining);
        assert_eq!(state(Some(9090)), TargetState::Initial);
        assert_eq!(state(None), TargetState::Draining);
        assert_eq!(state(Some(7070)), TargetState::NotRegistered);
    }

    #[test]
    fn an_unused_target_is_not_registered_only_when_aws_says_so() {
        let gone = describe_target_health(&[("i-1", 80, "unused", "Target.NotRegistered")]);
        let idle = describe_target_health(&[("i-1", 80, "unused", "Target.NotInUse")]);
        assert_eq!(
            target_state_of(&gone, "i-1", Some(80)).expect("parses"),
            TargetState::NotRegistered
        );
        assert_eq!(
            target_state_of(&idle, "i-1", Some(80)).expect("parses"),
            TargetState::Unused
        );
        let odd = describe_target_health(&[("i-1", 80, "sleeping", "")]);
        assert!(target_state_of(&odd, "i-1", None).is_err());
    }

    #[test]
    fn a_refusal_for_a_missing_permission_names_the_permission() {
        let hint = hint_for(
            AUTOSCALING,
            "CompleteLifecycleAction",
            "AccessDenied",
            CredentialsFrom::InstanceRole,
        );
        assert_eq!(
            hint,
            "\nhint: the instance role's policy needs autoscaling:CompleteLifecycleAction"
        );
        assert_eq!(
            hint_for(
                ELBV2,
                "RegisterTargets",
                "Whatever",
                CredentialsFrom::Environment
            ),
            ""
        );
    }
}
