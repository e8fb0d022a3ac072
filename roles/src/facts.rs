//! The facts an agent reports, as one schema: their names, types, when a
//! node has them, and an example value.
//!
//! The agent's gathering (`cms-agent/src/facts.rs`) is tested against this
//! list, and `cms-server check` compiles with [`example_facts`] built from
//! it, so a template that reads a fact `check` accepts reads a fact real
//! nodes send (on EC2 for the [`When::Ec2`] ones).

use std::collections::BTreeMap;

use serde_json::Value;

/// The JSON type of a fact's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactType {
    String,
    Integer,
    /// A list of strings.
    StringList,
    /// An object of custom facts (`/etc/cms/facts.d`).
    Object,
}

impl std::fmt::Display for FactType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FactType::String => "a string",
            FactType::Integer => "an integer",
            FactType::StringList => "a list of strings",
            FactType::Object => "an object",
        })
    }
}

impl FactType {
    /// The type of `value`, when it is one of these.
    pub fn of(value: &Value) -> Option<FactType> {
        match value {
            Value::String(_) => Some(FactType::String),
            Value::Number(n) if n.is_u64() || n.is_i64() => Some(FactType::Integer),
            Value::Array(items) if items.iter().all(Value::is_string) => Some(FactType::StringList),
            Value::Object(_) => Some(FactType::Object),
            _ => None,
        }
    }
}

/// When a node reports a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// On every node.
    Always,
    /// Where the machine has it (`/etc/machine-id`, a release codename).
    WhereKnown,
    /// On an EC2 instance, from its instance metadata (IMDSv2).
    Ec2,
    /// On an EC2 instance launched by an Auto Scaling group whose tags are
    /// allowed in its metadata.
    Ec2AutoScaling,
}

/// One fact of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Fact {
    pub name: &'static str,
    pub kind: FactType,
    pub when: When,
    /// The value `check` compiles with, as JSON.
    pub example: &'static str,
    /// What it is, for the docs.
    pub about: &'static str,
}

/// Every fact an agent reports. `custom` holds what `/etc/cms/facts.d`
/// adds, so no custom fact can shadow one of these.
pub const FACTS: &[Fact] = &[
    fact(
        "hostname",
        FactType::String,
        When::Always,
        r#""example""#,
        "the kernel's host name",
    ),
    fact(
        "fqdn",
        FactType::String,
        When::Always,
        r#""example.internal""#,
        "host name and NIS domain, when there is one",
    ),
    fact(
        "os",
        FactType::String,
        When::Always,
        r#""debian""#,
        "`ID` of os-release",
    ),
    fact(
        "os_family",
        FactType::String,
        When::Always,
        r#""debian""#,
        "the first `ID_LIKE` of os-release, else `os`",
    ),
    fact(
        "os_version",
        FactType::String,
        When::Always,
        r#""12""#,
        "`VERSION_ID` of os-release",
    ),
    fact(
        "os_codename",
        FactType::String,
        When::WhereKnown,
        r#""bookworm""#,
        "`VERSION_CODENAME` of os-release",
    ),
    fact(
        "architecture",
        FactType::String,
        When::Always,
        r#""x86_64""#,
        "the agent's architecture",
    ),
    fact(
        "kernel",
        FactType::String,
        When::Always,
        r#""6.1.0-28-cloud-amd64""#,
        "the kernel release",
    ),
    fact(
        "cpus",
        FactType::Integer,
        When::Always,
        "2",
        "processors in /proc/cpuinfo",
    ),
    fact(
        "memory_mb",
        FactType::Integer,
        When::Always,
        "4096",
        "MemTotal in MiB",
    ),
    fact(
        "ipv4",
        FactType::StringList,
        When::Always,
        r#"["192.0.2.10"]"#,
        "the addresses of interfaces that are up, loopback excluded",
    ),
    fact(
        "ipv6",
        FactType::StringList,
        When::Always,
        "[]",
        "likewise, link-local excluded",
    ),
    fact(
        "machine_id",
        FactType::String,
        When::WhereKnown,
        r#""0123456789abcdef0123456789abcdef""#,
        "/etc/machine-id",
    ),
    fact(
        "custom",
        FactType::Object,
        When::Always,
        "{}",
        "the facts of /etc/cms/facts.d (empty when there are none)",
    ),
    fact(
        "instance_id",
        FactType::String,
        When::Ec2,
        r#""i-0123456789abcdef0""#,
        "the EC2 instance id",
    ),
    fact(
        "region",
        FactType::String,
        When::Ec2,
        r#""us-east-1""#,
        "the instance's region",
    ),
    fact(
        "availability_zone",
        FactType::String,
        When::Ec2,
        r#""us-east-1a""#,
        "its availability zone",
    ),
    fact(
        "instance_type",
        FactType::String,
        When::Ec2,
        r#""t3.medium""#,
        "its instance type",
    ),
    fact(
        "image_id",
        FactType::String,
        When::Ec2,
        r#""ami-0123456789abcdef0""#,
        "the AMI it booted from",
    ),
    fact(
        "account_id",
        FactType::String,
        When::Ec2,
        r#""123456789012""#,
        "the AWS account that owns it",
    ),
    fact(
        "lifecycle",
        FactType::String,
        When::Ec2,
        r#""on-demand""#,
        "`spot` or `on-demand`",
    ),
    fact(
        "autoscaling_group",
        FactType::String,
        When::Ec2AutoScaling,
        r#""web-asg""#,
        "the Auto Scaling group (its `aws:autoscaling:groupName` tag)",
    ),
];

const fn fact(
    name: &'static str,
    kind: FactType,
    when: When,
    example: &'static str,
    about: &'static str,
) -> Fact {
    Fact {
        name,
        kind,
        when,
        example,
        about,
    }
}

/// The schema's entry for `name`.
pub fn fact_named(name: &str) -> Option<&'static Fact> {
    FACTS.iter().find(|fact| fact.name == name)
}

/// Facts used where no real node is at hand: a small Debian instance on
/// EC2, launched by an Auto Scaling group, with every fact of [`FACTS`].
pub fn example_facts() -> BTreeMap<String, Value> {
    FACTS
        .iter()
        .map(|fact| {
            let value = serde_json::from_str(fact.example).expect("schema examples are JSON");
            (fact.name.to_string(), value)
        })
        .collect()
}

/// How `facts` differ from the schema: unknown names, wrong types, and
/// missing facts a node of that kind always has (`on_ec2` says whether the
/// EC2 ones must be there). Empty when they agree.
pub fn schema_mismatches(facts: &BTreeMap<String, Value>, on_ec2: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, value) in facts {
        match fact_named(name) {
            None => problems.push(format!("fact `{name}` is not in the schema")),
            Some(fact) if FactType::of(value) != Some(fact.kind) => {
                problems.push(format!("fact `{name}` is {value}, not {}", fact.kind))
            }
            Some(_) => {}
        }
    }
    for fact in FACTS {
        let required = match fact.when {
            When::Always => true,
            When::Ec2 => on_ec2,
            When::WhereKnown | When::Ec2AutoScaling => false,
        };
        if required && !facts.contains_key(fact.name) {
            problems.push(format!("fact `{}` is missing", fact.name));
        }
        if !on_ec2
            && matches!(fact.when, When::Ec2 | When::Ec2AutoScaling)
            && facts.contains_key(fact.name)
        {
            problems.push(format!("fact `{}` is reported off EC2", fact.name));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_has_the_type_its_fact_declares() {
        let examples = example_facts();
        assert_eq!(examples.len(), FACTS.len(), "fact names are unique");
        assert_eq!(schema_mismatches(&examples, true), Vec::<String>::new());
    }

    #[test]
    fn a_missing_fact_an_unknown_one_and_a_wrong_type_are_each_named() {
        let mut facts = example_facts();
        facts.remove("hostname");
        facts.insert("hostnme".into(), Value::from("x"));
        facts.insert("cpus".into(), Value::from("2"));
        let problems = schema_mismatches(&facts, true).join("\n");
        assert!(
            problems.contains("fact `hostname` is missing"),
            "{problems}"
        );
        assert!(
            problems.contains("fact `hostnme` is not in the schema"),
            "{problems}"
        );
        assert!(
            problems.contains("fact `cpus` is \"2\", not an integer"),
            "{problems}"
        );
    }

    #[test]
    fn ec2_facts_reported_off_ec2_are_a_mismatch() {
        let facts = example_facts();
        let problems = schema_mismatches(&facts, false).join("\n");
        assert!(
            problems.contains("fact `region` is reported off EC2"),
            "{problems}"
        );
    }
}
