//! Tag discovery against a test double of EC2's instance metadata service
//! (IMDSv2), since the real one cannot exist on this machine; and the
//! fallback to `/etc/cms/tags.toml` when the service is absent, slow, or has
//! instance tags switched off.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use cms_agent::tags::{TagSources, discover};

/// How the test double behaves.
#[derive(Clone, Copy, PartialEq)]
enum ImdsBehaviour {
    /// Serves tags `role=api`, `env=prod` to requests with a valid token.
    Tags,
    /// Instance tags not allowed in metadata: `tags/instance` is 404.
    TagsSwitchedOff,
    /// Accepts connections and never answers (holds them until dropped).
    Silent,
    /// Serves tags like `Tags`, each answer only when the test releases it
    /// (see [`ImdsTestDouble::start_held`]).
    Held,
    /// Serves 40 tags, `tag0` … `tag39`, each answer after this delay.
    SlowWithManyTags(Duration),
    /// Serves `role=api`, `env=prod` and the tag an Auto Scaling group
    /// puts on its instances, on a spot instance.
    AutoScalingSpot,
}

/// A test double of IMDSv2 on 127.0.0.1: a token from `PUT
/// /latest/api/token`, then tag keys and values, refusing requests without
/// the token (401) as IMDSv2 does.
struct ImdsTestDouble {
    address: String,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Connections a silent double holds open, closed when it is dropped.
    held: Arc<Mutex<Vec<TcpStream>>>,
}

/// A request a held double has read, and the way to let its answer go.
struct Waiting {
    release: mpsc::Sender<()>,
}

impl ImdsTestDouble {
    fn start(behaviour: ImdsBehaviour) -> ImdsTestDouble {
        let (waiting, _) = mpsc::channel();
        ImdsTestDouble::start_with(behaviour, waiting)
    }

    /// A double that reads each request, says so on `waiting`, and answers
    /// only when the test releases it.
    fn start_held(waiting: mpsc::Sender<Message>) -> ImdsTestDouble {
        ImdsTestDouble::start_with(ImdsBehaviour::Held, waiting)
    }

    fn start_with(behaviour: ImdsBehaviour, waiting: mpsc::Sender<Message>) -> ImdsTestDouble {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let held = Arc::new(Mutex::new(Vec::new()));
        let holding = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                if behaviour == ImdsBehaviour::Silent {
                    // Hold the connection open without a word.
                    holding.lock().expect("held").push(stream);
                    continue;
                }
                let waiting = waiting.clone();
                std::thread::spawn(move || serve(stream, behaviour, &waiting));
            }
        });
        ImdsTestDouble {
            address,
            stop,
            connections,
            held,
        }
    }
}

impl Drop for ImdsTestDouble {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.held.lock().expect("held").clear();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.address);
    }
}

const TOKEN: &str = "test-double-token";

fn serve(stream: TcpStream, behaviour: ImdsBehaviour, waiting: &mpsc::Sender<Message>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut token = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("x-aws-ec2-metadata-token")
        {
            token = Some(value.trim().to_string());
        }
    }
    if let ImdsBehaviour::SlowWithManyTags(delay) = behaviour {
        std::thread::sleep(delay);
    }
    if behaviour == ImdsBehaviour::Held {
        // The whole request is read and the client waits for the answer.
        let (release, released) = mpsc::channel();
        if waiting.send(Message::Waiting(Waiting { release })).is_err() || released.recv().is_err()
        {
            return;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("PUT", "/latest/api/token") => (200, TOKEN.to_string()),
        _ if token.as_deref() != Some(TOKEN) => (401, String::new()),
        ("GET", "/latest/meta-data/instance-id") => (200, "i-0testdouble".to_string()),
        ("GET", "/latest/meta-data/tags/instance")
            if behaviour == ImdsBehaviour::TagsSwitchedOff =>
        {
            (404, String::new())
        }
        ("GET", "/latest/meta-data/tags/instance")
            if matches!(behaviour, ImdsBehaviour::SlowWithManyTags(_)) =>
        {
            let keys: Vec<String> = (0..40).map(|n| format!("tag{n}")).collect();
            (200, keys.join("\n"))
        }
        ("GET", path) if path.starts_with("/latest/meta-data/tags/instance/tag") => {
            (200, "value".to_string())
        }
        ("GET", "/latest/dynamic/instance-identity/document") => (
            200,
            r#"{"accountId": "210987654321", "architecture": "x86_64", "availabilityZone": "eu-west-1b", "imageId": "ami-0fedcba9876543210", "instanceId": "i-0testdouble", "instanceType": "m6i.large", "pendingTime": "2026-12-01T10:00:00Z", "privateIp": "10.0.1.5", "region": "eu-west-1", "version": "2017-09-30"}"#
                .to_string(),
        ),
        ("GET", "/latest/meta-data/instance-life-cycle") => (
            200,
            if behaviour == ImdsBehaviour::AutoScalingSpot {
                "spot"
            } else {
                "on-demand"
            }
            .to_string(),
        ),
        ("GET", "/latest/meta-data/tags/instance") if behaviour == ImdsBehaviour::AutoScalingSpot => {
            (200, "aws:autoscaling:groupName\nenv\nrole".to_string())
        }
        ("GET", "/latest/meta-data/tags/instance/aws:autoscaling:groupName") => {
            (200, "web-asg".to_string())
        }
        ("GET", "/latest/meta-data/tags/instance") => (200, "env\nrole".to_string()),
        ("GET", "/latest/meta-data/tags/instance/env") => (200, "prod".to_string()),
        ("GET", "/latest/meta-data/tags/instance/role") => (200, "api".to_string()),
        _ => (404, String::new()),
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn root_with_tags_file(text: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let path = root.path().join("etc/cms/tags.toml");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    root
}

fn sources(root: &Path, endpoint: Option<String>) -> TagSources<'_> {
    TagSources {
        root,
        metadata_endpoint: endpoint,
        metadata_timeout: Duration::from_millis(300),
        metadata_budget: Duration::from_secs(5),
    }
}

#[test]
fn tags_and_instance_id_come_from_the_metadata_service_with_a_session_token() {
    let imds = ImdsTestDouble::start(ImdsBehaviour::Tags);
    let root = root_with_tags_file("role = \"from-file\"\n");
    let found = discover(&sources(root.path(), Some(imds.address.clone()))).expect("discovered");
    assert_eq!(found.tags.get("role").map(String::as_str), Some("api"));
    assert_eq!(found.tags.get("env").map(String::as_str), Some("prod"));
    assert_eq!(found.instance_id.as_deref(), Some("i-0testdouble"));
    assert_eq!(found.source, "metadata service");
    assert_eq!(found.warning, None);
}

#[test]
fn tags_switched_off_in_metadata_fall_back_to_the_tags_file_with_a_hint() {
    let imds = ImdsTestDouble::start(ImdsBehaviour::TagsSwitchedOff);
    let root = root_with_tags_file("role = \"web\"\n");
    let found = discover(&sources(root.path(), Some(imds.address.clone()))).expect("discovered");
    assert_eq!(found.tags.get("role").map(String::as_str), Some("web"));
    let warning = found.warning.expect("a warning");
    assert!(
        warning.contains("instance-metadata-tags enabled"),
        "{warning}"
    );
}

#[test]
fn an_absent_or_silent_metadata_service_falls_back_to_the_tags_file() {
    // A port that nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .to_string();
    let root = root_with_tags_file("role = \"web\"\n");
    let found = discover(&sources(root.path(), Some(closed))).expect("discovered");
    assert_eq!(found.tags.get("role").map(String::as_str), Some("web"));
    assert!(found.warning.is_some());

    let silent = ImdsTestDouble::start(ImdsBehaviour::Silent);
    let found = discover(&sources(root.path(), Some(silent.address.clone()))).expect("discovered");
    assert_eq!(found.tags.get("role").map(String::as_str), Some("web"));
    assert!(
        found
            .warning
            .expect("a warning")
            .contains("Failed to reach the instance metadata service")
    );
}

#[test]
fn off_ec2_without_an_endpoint_only_the_tags_file_is_read() {
    let root = root_with_tags_file("role = \"web\"\nenv = \"staging\"\n");
    let found = discover(&sources(root.path(), None)).expect("discovered");
    assert_eq!(found.tags.len(), 2);
    assert_eq!(found.warning, None);

    let empty = tempfile::tempdir().expect("tempdir");
    assert!(
        discover(&sources(empty.path(), None))
            .expect("no file is no tags")
            .tags
            .is_empty()
    );
}

#[test]
fn a_tags_file_with_a_non_string_value_is_an_error_naming_the_tag() {
    let root = root_with_tags_file("role = \"web\"\nreplicas = 3\n");
    let error = discover(&sources(root.path(), None)).expect_err("refused");
    let text = format!("{error:#}");
    assert!(
        text.contains("tag `replicas` must be a string, not integer: write replicas = \"3\""),
        "{text}"
    );
    assert!(text.contains("tags.toml"), "{text}");
}

/// What the test of a held double hears: a request waiting for its
/// answer, or the end of the discovery.
enum Message {
    Waiting(Waiting),
    Done(anyhow::Result<cms_agent::tags::Discovered>),
}

#[test]
fn a_slow_metadata_service_that_answers_within_the_timeout_gives_the_tags() {
    // Every answer is held until the client has sent its whole request and
    // waits for the answer; only then does the test let it go. The client
    // must wait for a late answer, not give up on it.
    let (messages, heard) = mpsc::channel();
    let imds = ImdsTestDouble::start_held(messages.clone());
    let root = root_with_tags_file("role = \"from-file\"\n");
    let address = imds.address.clone();
    let root_path = root.path().to_path_buf();
    std::thread::spawn(move || {
        let sources = TagSources {
            root: &root_path,
            metadata_endpoint: Some(address),
            // The answers come well within the timeout however slow the
            // machine is.
            metadata_timeout: Duration::from_secs(60),
            metadata_budget: Duration::from_secs(300),
        };
        let _ = messages.send(Message::Done(discover(&sources)));
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut released = 0;
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match heard
            .recv_timeout(left)
            .expect("the discovery ends within a minute")
        {
            Message::Waiting(request) => {
                request.release.send(()).expect("the double waits");
                released += 1;
            }
            Message::Done(result) => break result.expect("discovered"),
        }
    };
    // The token, the tag list, two tags, the instance id, the identity
    // document and the life cycle, each held.
    assert_eq!(released, 7);
    assert_eq!(found.source, "metadata service");
    assert_eq!(found.tags.get("role").map(String::as_str), Some("api"));
    assert_eq!(found.warning, None);
}

#[test]
fn a_silent_metadata_service_is_tried_twice_then_given_up() {
    // Boot must not wait on it: the token request is retried once, and no
    // tag request follows a token that never came.
    let silent = ImdsTestDouble::start(ImdsBehaviour::Silent);
    let root = root_with_tags_file("role = \"web\"\n");
    let found = discover(&sources(root.path(), Some(silent.address.clone()))).expect("discovered");
    assert_eq!(
        found.source,
        root.path().join("etc/cms/tags.toml").display().to_string()
    );
    assert_eq!(silent.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn with_instance_tags_switched_off_no_tag_is_asked_for() {
    let imds = ImdsTestDouble::start(ImdsBehaviour::TagsSwitchedOff);
    let root = root_with_tags_file("role = \"web\"\n");
    discover(&sources(root.path(), Some(imds.address.clone()))).expect("discovered");
    // The token, then the tag list (404): no tag asked for and no retry of
    // a 404; then the instance id, the identity document and the life
    // cycle, which do not depend on tags.
    assert_eq!(imds.connections.load(Ordering::SeqCst), 5);
}

#[test]
fn a_slow_service_with_many_tags_is_given_up_when_the_budget_is_spent() {
    // 40 tags at 100 ms each would take over 4 s; the budget is 1 s.
    let imds = ImdsTestDouble::start(ImdsBehaviour::SlowWithManyTags(Duration::from_millis(100)));
    let root = root_with_tags_file("role = \"web\"\n");
    let mut sources = sources(root.path(), Some(imds.address.clone()));
    sources.metadata_budget = Duration::from_secs(1);
    let found = discover(&sources).expect("discovered");
    assert_eq!(found.tags.get("role").map(String::as_str), Some("web"));
    let warning = found.warning.expect("a warning");
    assert!(
        warning.contains("gave up on the instance metadata service after 1000 ms"),
        "{warning}"
    );
    // Fewer requests than the 43 the service wanted.
    assert!(imds.connections.load(Ordering::SeqCst) < 43);
}

#[test]
fn placement_facts_come_from_the_identity_document_the_life_cycle_and_the_group_tag() {
    let imds = ImdsTestDouble::start(ImdsBehaviour::AutoScalingSpot);
    let root = tempfile::tempdir().expect("tempdir");
    let found = discover(&sources(root.path(), Some(imds.address.clone()))).expect("discovered");
    let fact = |name: &str| {
        found
            .ec2
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    assert_eq!(fact("region").as_deref(), Some("eu-west-1"));
    assert_eq!(fact("availability_zone").as_deref(), Some("eu-west-1b"));
    assert_eq!(fact("instance_type").as_deref(), Some("m6i.large"));
    assert_eq!(fact("image_id").as_deref(), Some("ami-0fedcba9876543210"));
    assert_eq!(fact("account_id").as_deref(), Some("210987654321"));
    assert_eq!(fact("lifecycle").as_deref(), Some("spot"));
    assert_eq!(fact("autoscaling_group").as_deref(), Some("web-asg"));
    assert_eq!(found.warning, None);
}

#[test]
fn with_instance_tags_switched_off_the_id_and_placement_still_come_from_metadata() {
    let imds = ImdsTestDouble::start(ImdsBehaviour::TagsSwitchedOff);
    let root = root_with_tags_file("role = \"from-file\"\n");
    let found = discover(&sources(root.path(), Some(imds.address.clone()))).expect("discovered");
    assert_eq!(
        found.tags.get("role").map(String::as_str),
        Some("from-file")
    );
    assert_eq!(found.instance_id.as_deref(), Some("i-0testdouble"));
    assert_eq!(
        found.ec2.get("region").and_then(|v| v.as_str()),
        Some("eu-west-1")
    );
    assert!(
        !found.ec2.contains_key("autoscaling_group"),
        "no group without the group's tag"
    );
}

/// The facts `cms-server check` compiles with are the facts agents really
/// send: what this agent gathers on this machine (off EC2) and with the
/// metadata double (on EC2) has exactly the schema's names and types.
#[test]
fn the_facts_the_agent_gathers_match_the_schema_check_compiles_with() {
    let off_ec2 = cms_agent::node::observe(Path::new("/"), None, None).expect("observe");
    assert_eq!(
        cms_roles::schema_mismatches(&off_ec2.facts, false),
        Vec::<String>::new(),
        "off EC2: {:?}",
        off_ec2.facts
    );
    let imds = ImdsTestDouble::start(ImdsBehaviour::AutoScalingSpot);
    let on_ec2 = cms_agent::node::observe(Path::new("/"), None, Some(imds.address.clone()))
        .expect("observe");
    assert_eq!(
        cms_roles::schema_mismatches(&on_ec2.facts, true),
        Vec::<String>::new(),
        "on EC2: {:?}",
        on_ec2.facts
    );
    let mut names: Vec<&str> = on_ec2.facts.keys().map(String::as_str).collect();
    names.retain(|name| !["os_codename", "machine_id"].contains(name));
    let mut schema: Vec<&str> = cms_roles::FACTS.iter().map(|fact| fact.name).collect();
    schema.retain(|name| !["os_codename", "machine_id"].contains(name));
    assert_eq!(
        names,
        schema
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
}
