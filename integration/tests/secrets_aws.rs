//! The server's AWS secrets against `AwsSecretsDouble`, a local double of
//! SSM and Secrets Manager: values are fetched with signed calls when a
//! revision is validated, a rotated value is fetched again after the
//! refresh period and changes the catalog cache's key (the agents' next
//! pull compiles again), a failed fetch keeps the last value, and a
//! reference never fetched refuses the revision, naming its file and line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cms_integration::{AwsSecretsDouble, GitRepo, TestServer, wait_until_polling_every};
use cms_roles::{RepoFiles, sha256_hex};
use cms_server::aws::SecretsEndpoints;
use cms_server::catalogs::Catalogs;
use cms_server::secrets::{SecretsConfig, ServerSecrets};

const SECRETS: &str = "# secrets from AWS\n[db_password]\nfrom = \"ssm:/prod/db\"\n\n[api_token]\nfrom = \"secretsmanager:prod/app#token\"\n";

fn config(double: &AwsSecretsDouble, refresh: Duration) -> SecretsConfig {
    SecretsConfig {
        endpoints: SecretsEndpoints {
            region: Some("eu-west-1".into()),
            ssm: Some(double.url()),
            secretsmanager: Some(double.url()),
        },
        refresh,
        environment: BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test-secret-key".into()),
        ]),
    }
}

fn files(secrets: &str) -> RepoFiles {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert("roles/base.toml", "[[package]]\nname = \"curl\"\n");
    files.insert("secrets/common.toml", secrets);
    files
}

fn web_node() -> cms_roles::Node {
    cms_server::catalogs::node(
        "web-1",
        &BTreeMap::from([("role".to_string(), "web".to_string())]),
        BTreeMap::new(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_aws_value_is_fetched_again_and_changes_the_catalog_key() {
    let double = AwsSecretsDouble::start().unwrap();
    double.set_parameter("/prod/db", "db-v1");
    double.set_secret_string("prod/app", r#"{"token":"token-v1","user":"app"}"#);
    let secrets = Arc::new(ServerSecrets::with_identity(
        None,
        &config(&double, Duration::from_secs(3600)),
        cms_server::clock::system(),
    ));
    let (repository, revision_secrets, diagnostics) = {
        let secrets = secrets.clone();
        tokio::task::spawn_blocking(move || {
            cms_server::git_sync::validate_files(files(SECRETS), &secrets)
        })
        .await
        .unwrap()
    };
    assert!(diagnostics.is_empty(), "{diagnostics}");
    assert_eq!(double.unsigned_calls(), 0);
    let mut targets = double.targets();
    targets.sort();
    assert_eq!(
        targets,
        ["AmazonSSM.GetParameter", "secretsmanager.GetSecretValue"]
    );
    assert_eq!(
        secrets.aws_value_digest("ssm:/prod/db"),
        Some(sha256_hex(b"db-v1"))
    );
    assert_eq!(
        secrets.aws_value_digest("secretsmanager:prod/app#token"),
        Some(sha256_hex(b"token-v1"))
    );

    let repository = Arc::new(repository);
    let catalogs = Catalogs::new(100, 1);
    let pull = || async {
        let (values, generation) = revision_secrets.values();
        catalogs
            .get_with_secrets("rev1", repository.clone(), web_node(), values, generation)
            .await
            .expect("compiles")
    };
    pull().await;
    pull().await;
    assert_eq!(catalogs.stats().compiles, 1);

    // Fetched again with nothing changed: the same key.
    let all = revision_secrets.references().clone();
    let failures = tokio::task::spawn_blocking({
        let (secrets, all) = (secrets.clone(), all.clone());
        move || secrets.fetch(&all, true)
    })
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    pull().await;
    assert_eq!(
        catalogs.stats().compiles,
        1,
        "an unchanged value compiled again"
    );

    // Rotated in AWS: the next fetch brings it, the next pull compiles.
    double.set_parameter("/prod/db", "db-v2");
    tokio::task::spawn_blocking({
        let (secrets, all) = (secrets.clone(), all.clone());
        move || secrets.fetch(&all, true)
    })
    .await
    .unwrap();
    assert_eq!(
        secrets.aws_value_digest("ssm:/prod/db"),
        Some(sha256_hex(b"db-v2"))
    );
    pull().await;
    assert_eq!(
        catalogs.stats().compiles,
        2,
        "the rotation did not reach the catalog"
    );

    // AWS fails: the last value stays, the catalog too.
    double.fail_every_call(true);
    double.set_parameter("/prod/db", "db-v3");
    let failures = tokio::task::spawn_blocking({
        let (secrets, all) = (secrets.clone(), all.clone());
        move || secrets.fetch(&all, true)
    })
    .await
    .unwrap();
    assert!(
        failures.is_empty(),
        "a known value counted as never fetched"
    );
    assert_eq!(
        secrets.aws_value_digest("ssm:/prod/db"),
        Some(sha256_hex(b"db-v2"))
    );
    pull().await;
    assert_eq!(catalogs.stats().compiles, 2);
    // And a new commit with the same references still validates.
    let (_, _, diagnostics) = tokio::task::spawn_blocking({
        let secrets = secrets.clone();
        move || cms_server::git_sync::validate_files(files(SECRETS), &secrets)
    })
    .await
    .unwrap();
    assert!(diagnostics.is_empty(), "{diagnostics}");
}

#[test]
fn a_reference_never_fetched_refuses_the_commit_with_its_file_and_line() {
    let double = AwsSecretsDouble::start().unwrap();
    double.set_parameter("/prod/db", "db-v1");
    // prod/app does not exist.
    let secrets = Arc::new(ServerSecrets::with_identity(
        None,
        &config(&double, Duration::from_secs(3600)),
        cms_server::clock::system(),
    ));
    let (_, _, diagnostics) = cms_server::git_sync::validate_files(files(SECRETS), &secrets);
    let text = diagnostics.to_string();
    assert!(
        text.contains("secrets/common.toml:5:2: AWS secret `secretsmanager:prod/app#token`"),
        "{text}"
    );
    assert!(text.contains("ResourceNotFoundException"), "{text}");
    assert!(!text.contains("db-v1"), "{text}");

    // Without any region or endpoint, the error says what to set.
    let unconfigured = Arc::new(ServerSecrets::with_identity(
        None,
        &SecretsConfig::default(),
        cms_server::clock::system(),
    ));
    let (_, _, diagnostics) = cms_server::git_sync::validate_files(files(SECRETS), &unconfigured);
    assert!(
        diagnostics.to_string().contains("--aws-region"),
        "{diagnostics}"
    );
}

#[test]
fn a_running_server_fetches_its_aws_secrets_again_after_the_refresh_period() {
    let double = AwsSecretsDouble::start().unwrap();
    double.set_parameter("/prod/db", "db-v1");
    double.set_secret_string("prod/app", r#"{"token":"token-v1"}"#);
    // A git repository: a plain folder's `secrets/` is read only once
    // cms-roles reads that folder too.
    let repo = tempfile::tempdir().unwrap();
    let git = GitRepo::init(repo.path()).unwrap();
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/base.toml", "[[package]]\nname = \"curl\"\n"),
            ("secrets/common.toml", SECRETS),
        ],
        "secrets from AWS",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let secrets = config(&double, Duration::from_secs(1));
    let server = TestServer::start_with(
        data.path(),
        repo.path(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        move |config| {
            config.secrets = secrets;
        },
    )
    .unwrap();
    let accepted = server.runtime.block_on(server.sync()).unwrap();
    assert!(accepted.accepted, "{accepted:?}");
    let first = double.calls();
    assert!(first >= 2, "{first}");
    // The refresh task fetches both again, more than once, unprompted.
    wait_until_polling_every(
        Duration::from_millis(100),
        Duration::from_secs(20),
        "the server to fetch its AWS secrets again",
        || Ok((double.calls() >= first + 4).then_some(())),
    )
    .unwrap();
    assert_eq!(double.unsigned_calls(), 0);
    server.stop().unwrap();
}

#[test]
fn a_commit_refused_for_an_aws_value_not_there_yet_passes_once_it_is() {
    let double = AwsSecretsDouble::start().unwrap();
    double.set_parameter("/prod/db", "db-v1");
    // prod/app is not created yet.
    let repo = tempfile::tempdir().unwrap();
    let git = GitRepo::init(repo.path()).unwrap();
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/base.toml", "[[package]]\nname = \"curl\"\n"),
            ("secrets/common.toml", SECRETS),
        ],
        "secrets from AWS",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let secrets = config(&double, Duration::from_secs(3600));
    let server = TestServer::start_with(
        data.path(),
        repo.path(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        move |config| {
            config.secrets = secrets;
        },
    )
    .unwrap();
    let refused = server.runtime.block_on(server.sync()).unwrap();
    assert!(!refused.accepted, "{refused:?}");
    assert!(
        refused
            .errors
            .iter()
            .any(|e| e.file == "secrets/common.toml" && e.line == 5),
        "{refused:?}"
    );
    // The secret is created: the same commit passes on the next sync.
    double.set_secret_string("prod/app", r#"{"token":"token-v1"}"#);
    let accepted = server.runtime.block_on(server.sync()).unwrap();
    assert!(accepted.accepted, "{accepted:?}");
    assert_eq!(accepted.revision, refused.revision);
    server.stop().unwrap();
}
