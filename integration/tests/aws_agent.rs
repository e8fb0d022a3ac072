//! The agent's AWS client (`cms_agent::aws::Aws`) against `AwsApiDouble`,
//! on the host alone: the lifecycle hook's completion, a target group's
//! deregistration and registration as `target_state` sees them, the
//! instance role's credentials, a refused signature, and retries after
//! throttling. Every connection comes from 127.0.0.1, the double's
//! instance `i-0aws0agent0test`.

// A test measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use cms_agent::aws::{Aws, AwsError, AwsSettings, LifecycleResult, TargetState};
use cms_integration::AwsApiDouble;
use cms_integration::aws_api_double::{ApiFailure, TargetEventKind};

const INSTANCE: &str = "i-0aws0agent0test";
const GROUP: &str = "web-asg";
const HOOK: &str = "cms-converged";
const TARGET_GROUP: &str =
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn double() -> AwsApiDouble {
    let double = AwsApiDouble::start_on_loopback().expect("the AWS double starts");
    double.add_instance(LOOPBACK, INSTANCE);
    double.set_autoscaling_group(INSTANCE, GROUP);
    double.add_lifecycle_hook(GROUP, HOOK);
    double
}

fn settings(double: &AwsApiDouble) -> AwsSettings {
    AwsSettings {
        endpoint: Some(double.endpoint_for_instances()),
        region: None,
        metadata_endpoint: Some(double.metadata_endpoint_for_instances()),
    }
}

/// The agent's client with the instance role's credentials (an empty
/// environment).
fn agent(double: &AwsApiDouble) -> Aws {
    Aws::with_environment(settings(double), |_| None)
}

fn actions(double: &AwsApiDouble) -> Vec<(String, u16)> {
    double
        .calls()
        .into_iter()
        .map(|call| (call.action, call.status))
        .collect()
}

/// Polls `target_state` until it is `wanted`, returning every state seen
/// (consecutive repeats folded).
fn states_until(aws: &Aws, wanted: TargetState, within: Duration) -> Vec<TargetState> {
    let start = Instant::now();
    let mut seen: Vec<TargetState> = Vec::new();
    loop {
        let state = aws
            .target_state(TARGET_GROUP, Some(8080))
            .expect("DescribeTargetHealth answers");
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        if state == wanted {
            return seen;
        }
        assert!(
            start.elapsed() < within,
            "the target never became {wanted:?}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn continue_completes_the_action_in_the_group_describe_auto_scaling_instances_gives() {
    let double = double();
    let aws = agent(&double);
    let group = aws
        .complete_lifecycle_action(HOOK, None, LifecycleResult::Continue)
        .expect("the lifecycle action completes");
    assert_eq!(group, GROUP);
    let completions = double.lifecycle_results();
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert_eq!(
        (
            completions[0].group.as_str(),
            completions[0].hook.as_str(),
            completions[0].instance_id.as_str(),
            completions[0].result.as_str()
        ),
        (GROUP, HOOK, INSTANCE, "CONTINUE")
    );
    assert_eq!(
        actions(&double),
        [
            ("DescribeAutoScalingInstances".to_string(), 200),
            ("CompleteLifecycleAction".to_string(), 200)
        ]
    );
    let calls = double.calls();
    assert_eq!(calls[1].instance_id.as_deref(), Some(INSTANCE));
    assert_eq!(
        calls[1]
            .parameters
            .get("LifecycleHookName")
            .map(String::as_str),
        Some(HOOK)
    );
}

#[test]
fn abandon_is_recorded_for_the_group_given_without_asking_autoscaling() {
    let double = double();
    let group = agent(&double)
        .complete_lifecycle_action(HOOK, Some(GROUP), LifecycleResult::Abandon)
        .expect("the lifecycle action completes");
    assert_eq!(group, GROUP);
    let results: Vec<String> = double
        .lifecycle_results()
        .into_iter()
        .map(|completion| completion.result)
        .collect();
    assert_eq!(results, ["ABANDON"]);
    assert_eq!(
        actions(&double),
        [("CompleteLifecycleAction".to_string(), 200)]
    );
}

#[test]
fn an_unknown_hook_is_refused_once_with_what_aws_said_and_what_to_check() {
    let double = double();
    let error = agent(&double)
        .complete_lifecycle_action("no-such-hook", Some(GROUP), LifecycleResult::Continue)
        .expect_err("AutoScaling refuses an unknown hook");
    let text = error.to_string();
    assert!(
        text.contains("CompleteLifecycleAction")
            && text.contains(&double.endpoint_for_instances())
            && text.contains("ValidationError")
            && text.contains("hint: check the hook name"),
        "{text}"
    );
    assert_eq!(
        actions(&double),
        [("CompleteLifecycleAction".to_string(), 400)],
        "a refusal is not retried"
    );
    assert!(double.lifecycle_results().is_empty());
}

#[test]
fn a_wrong_secret_is_refused_with_an_error_naming_the_call_the_code_and_the_credentials() {
    let double = double();
    let issued = double.credentials_of(INSTANCE).expect("issued credentials");
    let aws = Aws::with_environment(settings(&double), |name| match name {
        "AWS_ACCESS_KEY_ID" => Some(issued.access_key_id.clone()),
        "AWS_SECRET_ACCESS_KEY" => Some("not-the-issued-secret".to_string()),
        "AWS_SESSION_TOKEN" => issued.session_token.clone(),
        _ => None,
    });
    let error = aws
        .register_target(TARGET_GROUP, Some(8080))
        .expect_err("a wrong signature is refused");
    assert!(
        matches!(&error, AwsError::Refused { status: 403, code, .. } if code == "SignatureDoesNotMatch"),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("RegisterTargets")
            && text.contains(&double.endpoint_for_instances())
            && text.contains("AWS_SECRET_ACCESS_KEY"),
        "{text}"
    );
    assert_eq!(actions(&double), [("RegisterTargets".to_string(), 403)]);
    assert!(double.target_events(TARGET_GROUP).is_empty());
}

#[test]
fn two_throttled_answers_are_retried_and_the_third_attempt_succeeds() {
    let double = double();
    double.add_target_group(TARGET_GROUP, Duration::ZERO, Duration::ZERO);
    double.fail_next(2, ApiFailure::Throttling);
    agent(&double)
        .register_target(TARGET_GROUP, Some(8080))
        .expect("registered on the third attempt");
    assert_eq!(
        actions(&double),
        [
            ("RegisterTargets".to_string(), 400),
            ("RegisterTargets".to_string(), 400),
            ("RegisterTargets".to_string(), 200)
        ]
    );
    let calls = double.calls();
    assert_eq!(calls[0].error_code.as_deref(), Some("Throttling"));
    assert!(
        calls[2].time_unix_ms - calls[0].time_unix_ms >= 400,
        "attempts are spaced by a backoff: {calls:?}"
    );
}

#[test]
fn three_failed_answers_give_up_saying_how_many_attempts_were_made() {
    let double = double();
    double.add_target_group(TARGET_GROUP, Duration::ZERO, Duration::ZERO);
    double.fail_next(3, ApiFailure::ServerError);
    let error = agent(&double)
        .deregister_target(TARGET_GROUP, Some(8080))
        .expect_err("every attempt failed");
    let text = error.to_string();
    assert!(
        text.contains("DeregisterTargets") && text.contains("3 attempts") && text.contains("500"),
        "{text}"
    );
    assert_eq!(double.calls().len(), 3);
}

#[test]
fn a_deregistered_target_drains_then_is_no_longer_registered() {
    let double = double();
    double.add_target_group(TARGET_GROUP, Duration::from_millis(1500), Duration::ZERO);
    double.add_healthy_target(TARGET_GROUP, INSTANCE, Some(8080));
    let aws = agent(&double);
    assert_eq!(
        aws.target_state(TARGET_GROUP, Some(8080)).expect("answers"),
        TargetState::Healthy
    );
    aws.deregister_target(TARGET_GROUP, Some(8080))
        .expect("deregisters");
    let seen = states_until(&aws, TargetState::NotRegistered, Duration::from_secs(10));
    assert_eq!(seen, [TargetState::Draining, TargetState::NotRegistered]);
    let events: Vec<TargetEventKind> = double
        .target_events(TARGET_GROUP)
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert_eq!(events, [TargetEventKind::Deregistered]);
}

#[test]
fn a_registered_target_is_initial_then_healthy() {
    let double = double();
    double.add_target_group(TARGET_GROUP, Duration::ZERO, Duration::from_millis(1500));
    let aws = agent(&double);
    assert_eq!(
        aws.target_state(TARGET_GROUP, Some(8080)).expect("answers"),
        TargetState::NotRegistered
    );
    aws.register_target(TARGET_GROUP, Some(8080))
        .expect("registers");
    let seen = states_until(&aws, TargetState::Healthy, Duration::from_secs(10));
    assert_eq!(seen, [TargetState::Initial, TargetState::Healthy]);
    let events = double.target_events(TARGET_GROUP);
    assert_eq!(
        (events.len(), events[0].kind, events[0].port),
        (1, TargetEventKind::Registered, Some(8080))
    );
}

#[test]
fn without_credentials_in_the_environment_the_instance_roles_are_read_through_imds() {
    let double = double();
    double.add_target_group(TARGET_GROUP, Duration::ZERO, Duration::ZERO);
    let aws = agent(&double);
    assert_eq!(aws.instance_id().expect("the instance id"), INSTANCE);
    // The double accepts only signatures made with the credentials it
    // issued to this instance's role, which it serves only through IMDSv2.
    aws.register_target(TARGET_GROUP, None).expect("registers");
    aws.deregister_target(TARGET_GROUP, None)
        .expect("deregisters");
    assert_eq!(
        actions(&double),
        [
            ("RegisterTargets".to_string(), 200),
            ("DeregisterTargets".to_string(), 200)
        ]
    );
    let unknown = AwsApiDouble::start_on_loopback().expect("a second double");
    let error = Aws::with_environment(settings(&unknown), |_| None)
        .instance_id()
        .expect_err("the double knows no instance at 127.0.0.1");
    assert!(
        error.to_string().contains("instance metadata service"),
        "{error}"
    );
}
