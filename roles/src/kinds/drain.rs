//! `drain`: taking an instance out of its load balancers' target groups
//! around a restart, shared by `service` and `java_app`. The agent
//! deregisters the instance, waits for the target group's deregistration
//! delay (bounded by `timeout`), restarts, waits for the health check, and
//! registers the instance again; docs/roles.md describes it.

use serde::{Deserialize, Serialize};

use super::{Problems, Seconds};

/// How long the agent waits, at most, for a target to drain and, after
/// registering it again, to be healthy, when `timeout` is not given.
pub const DRAIN_TIMEOUT_DEFAULT: Seconds = Seconds(300);

/// The longest `timeout`: an ELBv2 deregistration delay is at most an hour.
const DRAIN_TIMEOUT_MAX: u64 = 3600;

/// `drain = { target_groups = [...], port = 8080, timeout = "5m" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// The ARNs of the ELBv2 target groups the instance is registered in
    /// (`arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID`).
    pub target_groups: Vec<String>,
    /// The port the instance is registered with; without it, the target
    /// group's own port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How long to wait for the instance to drain, and then to be healthy
    /// in every target group again (default 5 minutes, at most 1 hour).
    #[serde(default = "default_timeout")]
    pub timeout: Seconds,
}

fn default_timeout() -> Seconds {
    DRAIN_TIMEOUT_DEFAULT
}

/// Checks a `drain` table; problems are reported at the field `drain`.
pub(crate) fn check_drain(drain: &Drain, problems: &mut Problems) {
    if drain.target_groups.is_empty() {
        problems.push((
            "drain",
            "drain.target_groups is empty: name the ARN of each target group the instance serves in, e.g. target_groups = [\"arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/orders/0123456789abcdef\"]".into(),
        ));
    }
    for arn in &drain.target_groups {
        if let Err(reason) = check_target_group_arn(arn) {
            problems.push((
                "drain",
                format!(
                    "drain.target_groups: `{arn}` is not a target group ARN: {reason}; write arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID"
                ),
            ));
        }
    }
    if drain.port == Some(0) {
        problems.push((
            "drain",
            "drain.port = 0 is not a port: write the port the instance is registered with (1 to 65535), or leave it out for the target group's port".into(),
        ));
    }
    if drain.timeout.0 == 0 || drain.timeout.0 > DRAIN_TIMEOUT_MAX {
        problems.push((
            "drain",
            format!(
                "drain.timeout = {} s is out of range: write a duration from 1s to 1h (a target group's deregistration delay is at most an hour), e.g. timeout = \"5m\"",
                drain.timeout.0
            ),
        ));
    }
}

/// What is wrong with a target group ARN, if anything.
fn check_target_group_arn(arn: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_word, partition, service, region, account, resource] = parts[..] else {
        return Err("it has fewer than six `:`-separated parts");
    };
    if arn_word != "arn" || !partition.starts_with("aws") {
        return Err("it does not start with arn:aws");
    }
    if service != "elasticloadbalancing" {
        return Err("its service is not elasticloadbalancing");
    }
    if region.is_empty() {
        return Err("it names no region");
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err("its account is not 12 digits");
    }
    let mut resource = resource.split('/');
    match (
        resource.next(),
        resource.next(),
        resource.next(),
        resource.next(),
    ) {
        (Some("targetgroup"), Some(name), Some(id), None) if !name.is_empty() && !id.is_empty() => {
            Ok(())
        }
        _ => Err("its resource is not targetgroup/NAME/ID"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(drain: &Drain) -> Vec<String> {
        let mut problems = Problems::default();
        check_drain(drain, &mut problems);
        problems.into_iter().map(|(_, message)| message).collect()
    }

    const ARN: &str =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/orders/0123456789abcdef";

    #[test]
    fn a_target_group_arn_is_accepted_and_anything_else_is_refused_with_the_reason() {
        let drain = |groups: &[&str]| Drain {
            target_groups: groups.iter().map(|g| g.to_string()).collect(),
            port: Some(8080),
            timeout: DRAIN_TIMEOUT_DEFAULT,
        };
        assert!(problems_of(&drain(&[ARN])).is_empty());
        let refused = problems_of(&drain(&[
            "orders",
            "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/x/1",
            "arn:aws:ec2:eu-west-1:123456789012:targetgroup/orders/1",
            "arn:aws:elasticloadbalancing:eu-west-1:12345:targetgroup/orders/1",
        ]));
        assert_eq!(refused.len(), 4, "{refused:#?}");
        assert!(refused[0].contains("fewer than six"));
        assert!(refused[1].contains("not targetgroup/NAME/ID"));
        assert!(refused[2].contains("not elasticloadbalancing"));
        assert!(refused[3].contains("not 12 digits"));
        assert!(problems_of(&drain(&[]))[0].contains("target_groups is empty"));
    }

    #[test]
    fn a_drain_timeout_is_one_second_to_one_hour_and_port_zero_is_refused() {
        let drain = |port, timeout| Drain {
            target_groups: vec![ARN.into()],
            port,
            timeout: Seconds(timeout),
        };
        assert!(problems_of(&drain(None, 3600)).is_empty());
        assert!(problems_of(&drain(None, 3601))[0].contains("from 1s to 1h"));
        assert!(problems_of(&drain(None, 0))[0].contains("from 1s to 1h"));
        assert!(problems_of(&drain(Some(0), 60))[0].contains("drain.port = 0"));
    }
}
