//! `cms-server explain NODE`: the real binary asks the real server (in
//! this process, serving the example repository) to explain an enrolled
//! node with its stored tags and facts, against the revision it serves.

mod support;

use std::process::{Command, Output};

use support::{Server, converge};

fn explain(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .arg("explain")
        .args(args)
        .arg("--server")
        .arg(server.address.to_string())
        .arg("--data")
        .arg(&server.data)
        .env_remove("CMS_ADMIN_CREDENTIAL")
        .output()
        .expect("run cms-server")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_node_explains_a_live_node_against_the_revision_it_is_served() {
    let server = Server::start(|_| {}).await;
    let node = server
        .enroll("web-1", &[("role", "web"), ("env", "prod")])
        .await;
    converge(&node, "run-1").await.expect("a first run");

    let out = explain(&server, &["web-1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("node web-1 (env=prod, role=web)"));
    let revision = lines.next().expect("a revision line");
    // The example repository is a folder: its revision is named after
    // its content (`dir-…`), as the server serves it.
    assert!(revision.starts_with("revision dir-"), "{stdout}");
    for expected in [
        "  base  roles/base.toml  no [match]: every node\n",
        "  web   roles/web.toml   [match] holds\n      env = \"*\"     matches tag.env = \"prod\"\n      role = \"web\"  matches tag.role = \"web\"\n",
        "  api   roles/api.toml   role = \"api\" does not match tag.role = \"web\"\n",
        "  node/{{trusted.instance_id}}  skipped   the node has no trusted.instance_id\n",
        "  env/{{tag.env}}               env/prod  data/env/prod.toml\n",
        "  data.sysctl.somaxconn = 4096\n      from data/env/prod.toml:2, overriding data/common.toml:4\n",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }

    let out = explain(&server, &["web-1", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["node"], "web-1");
    assert_eq!(
        json["revision"].as_str(),
        revision.strip_prefix("revision ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_of_a_node_the_server_does_not_know_is_an_error_naming_it() {
    let server = Server::start(|_| {}).await;
    let out = explain(&server, &["nosuchnode"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "error: node nosuchnode is not enrolled\nhint: `cms-server nodes` lists the nodes the server knows\n"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
