//! Tests of secrets in the role language: parsing `secrets/`, the secret
//! helpers, sensitivity, scopes, and that no value reaches a diagnostic.

use base64::Engine;

use crate::{
    Catalog, Node, NodeReads, RepoFiles, Repository, SecretSource, SecretValues, aws_references,
    compile, compile_with_secrets, data_layers, example_attested, example_facts, node_context,
    validate_with_secrets,
};

const SETTINGS: &str = r#"
[hierarchy]
layers = ["node/{{trusted.instance_id}}", "env/{{tag.env}}", "common"]
"#;

/// An armored age file: the armor is all cms-roles checks.
fn armored() -> String {
    let body = base64::engine::general_purpose::STANDARD.encode((0..=255u8).collect::<Vec<u8>>());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN AGE ENCRYPTED FILE-----\n{}\n-----END AGE ENCRYPTED FILE-----\n",
        lines.join("\n")
    )
}

fn secret(key: &str, extra: &str) -> String {
    format!("[{key}]\nage = \"\"\"\n{}\"\"\"\n{extra}\n", armored())
}

fn repo(files: &[(&str, &str)]) -> Repository {
    let mut repo = RepoFiles::new();
    if !files.iter().any(|(path, _)| *path == "cms.toml") {
        repo.insert("cms.toml", SETTINGS);
    }
    for (path, text) in files {
        repo.insert(*path, *text);
    }
    Repository::parse(repo).unwrap_or_else(|d| panic!("parse failed:\n{d}"))
}

fn parse_errors(files: &[(&str, &str)]) -> String {
    let mut repo = RepoFiles::new();
    if !files.iter().any(|(path, _)| *path == "cms.toml") {
        repo.insert("cms.toml", SETTINGS);
    }
    for (path, text) in files {
        repo.insert(*path, *text);
    }
    match Repository::parse(repo) {
        Ok(_) => panic!("expected parse errors"),
        Err(d) => d.to_string(),
    }
}

fn node(tags: &[(&str, &str)]) -> Node {
    Node {
        id: "i-0123456789abcdef0".into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        facts: example_facts(),
        attested: example_attested(),
    }
}

/// Values for the layer and key pairs given.
fn values(pairs: &[(&str, &str, &[u8])]) -> SecretValues {
    let mut values = SecretValues::new();
    for (layer, key, value) in pairs {
        values.insert_age(layer, key, value.to_vec());
    }
    values
}

fn content(catalog: &Catalog, path: &str) -> Vec<u8> {
    let resource = catalog
        .resource(&format!("file:{path}"))
        .unwrap_or_else(|| panic!("no file:{path}"));
    let crate::ResourceKind::File(file) = &resource.kind else {
        panic!("not a file");
    };
    let hash = file.content_sha256.as_ref().expect("content");
    catalog.contents[hash].0.clone()
}

fn sensitive(catalog: &Catalog, reference: &str) -> bool {
    catalog
        .resource(reference)
        .unwrap_or_else(|| panic!("no {reference}"))
        .sensitive
}

#[test]
fn secret_files_parse_into_layers_keys_scopes_and_sources() {
    let prod = format!(
        "{}[api_key]\nfrom = \"secretsmanager:prod/api#key\"\n",
        secret(
            "db_password",
            "scope = { env = \"prod\", \"trusted.account_id\" = \"1234*\" }"
        )
    );
    let repository = repo(&[
        ("secrets/env/prod.toml", prod.as_str()),
        (
            "secrets/common.toml",
            "[token]\nfrom = \"ssm:/common/token\"\n",
        ),
        ("roles/r.toml", ""),
    ]);
    let prod = &repository.secrets["env/prod"];
    let db = &prod["db_password"];
    assert_eq!(db.file, "secrets/env/prod.toml");
    assert_eq!(db.position.line, 1);
    assert_eq!(db.scope["env"], "prod");
    assert_eq!(db.scope["trusted.account_id"], "1234*");
    assert!(matches!(&db.source, SecretSource::Age(text) if text.starts_with("-----BEGIN AGE")));
    assert_eq!(
        prod["api_key"].source,
        SecretSource::Aws("secretsmanager:prod/api#key".into())
    );
    assert_eq!(
        repository.secrets["common"]["token"].source,
        SecretSource::Aws("ssm:/common/token".into())
    );
}

#[test]
fn mistakes_in_secret_files_are_reported_with_file_and_line() {
    let both = format!("{}from = \"ssm:/x\"\n", secret("both", ""));
    let errors = parse_errors(&[
        (
            "secrets/common.toml",
            "[typo]\nfrom = \"ssm:/x\"\nscop = {}\n",
        ),
        ("secrets/both.toml", both.as_str()),
        (
            "secrets/neither.toml",
            "[neither]\nscope = { env = \"prod\" }\n",
        ),
        (
            "secrets/armor.toml",
            "[armor]\nage = \"-----BEGIN AGE ENCRYPTED FILE-----\\nnot base64!\\n-----END AGE ENCRYPTED FILE-----\"\n",
        ),
        ("secrets/from.toml", "[from]\nfrom = \"vault:/x\"\n"),
        ("secrets/key.toml", "[\"bad key\"]\nfrom = \"ssm:/x\"\n"),
        (
            "secrets/scope.toml",
            "[scoped]\nfrom = \"ssm:/x\"\nscope = { \"trusted.favourite\" = \"x\", \"fact.os\" = \"debian\" }\n",
        ),
        (
            "cms.toml",
            "[hierarchy]\nlayers = [\"common\"]\n[secrets]\nrecipients = [\"age1nope\"]\n",
        ),
        ("roles/r.toml", ""),
    ]);
    for expected in [
        "secrets/common.toml:3:1: unknown field `scop`, expected one of age, from, scope (did you mean `scope`?)",
        "secrets/both.toml:1:2: secret `both` has both `age` and `from`",
        "secrets/neither.toml:1:2: secret `neither` has neither `age` nor `from`",
        "secrets/armor.toml:2:7: `age` is not an armored age file",
        "secrets/from.toml:2:8: `vault:/x` is not an AWS reference",
        "secrets/key.toml:1:2: secret key `bad key` may hold only letters",
        "secrets/scope.toml:3:11: scope `trusted.favourite` names no attested value",
        "scope `fact.os` is neither a tag name nor `trusted.<attested key>`",
        "cms.toml:4:15: recipient `age1nope` is not an age X25519 public key",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}

#[test]
fn secrets_nest_no_deeper_than_data() {
    let deep = format!(
        "[x]\nfrom = \"ssm:/x\"\nscope = {}\"b\"{}\n",
        "{ a = ".repeat(70),
        " }".repeat(70)
    );
    let errors = parse_errors(&[("secrets/common.toml", deep.as_str()), ("roles/r.toml", "")]);
    assert!(errors.contains("secrets/common.toml"), "{errors}");
    assert!(errors.contains("nested"), "{errors}");
}

const ROLE_USING_SECRETS: &str = r#"
[[file]]
path = "/etc/plain"
content = "nothing secret"

[[file]]
path = "/etc/field"
content_base64 = '{{secret_base64 "db_password"}}'

[[file]]
path = "/etc/template"
template = "app.conf.hbs"

[[file]]
path = "/etc/partial"
template = "outer.hbs"

[[file]]
path = "/etc/vars"
template = "vars.hbs"
vars = { password = '{{secret "db_password"}}' }

[[file]]
path = "/etc/each/{{item}}"
template = "each.hbs"
for_each = "data.apps"

[[exec]]
name = "migrate"
command = '/usr/bin/migrate --password={{secret "db_password"}}'

[[file]]
path = "/etc/declared"
content = "plain, but the role says so"
sensitive = true
"#;

fn secrets_repo() -> Repository {
    let common = secret("db_password", "");
    repo(&[
        ("secrets/common.toml", common.as_str()),
        ("data/common.toml", "apps = [\"a\", \"b\"]\n"),
        (
            "templates/app.conf.hbs",
            "password={{secret \"db_password\"}}\n",
        ),
        ("templates/outer.hbs", "[db]\n{{> templates/inner.hbs}}"),
        (
            "templates/inner.hbs",
            "password={{secret \"db_password\"}}\n",
        ),
        ("templates/vars.hbs", "password={{vars.password}}\n"),
        (
            "templates/each.hbs",
            "{{item}}={{secret_base64 \"db_password\"}}\n",
        ),
        ("roles/r.toml", ROLE_USING_SECRETS),
    ])
}

#[test]
fn resources_that_render_a_secret_are_sensitive_whichever_way_they_render_it() {
    let repository = secrets_repo();
    let values = values(&[("common", "db_password", b"hunter2")]);
    let catalog = compile_with_secrets(&repository, &node(&[]), &values)
        .unwrap_or_else(|d| panic!("compile failed:\n{d}"));
    for reference in [
        "file:/etc/field",
        "file:/etc/template",
        "file:/etc/partial",
        "file:/etc/vars",
        "file:/etc/each/a",
        "file:/etc/each/b",
        "exec:migrate",
        "file:/etc/declared",
    ] {
        assert!(
            sensitive(&catalog, reference),
            "{reference} is not sensitive"
        );
    }
    assert!(!sensitive(&catalog, "file:/etc/plain"));
    assert_eq!(content(&catalog, "/etc/field"), b"hunter2");
    assert_eq!(content(&catalog, "/etc/template"), b"password=hunter2\n");
    assert_eq!(
        content(&catalog, "/etc/partial"),
        b"[db]\npassword=hunter2\n"
    );
    assert_eq!(content(&catalog, "/etc/vars"), b"password=hunter2\n");
    assert_eq!(content(&catalog, "/etc/each/a"), b"a=aHVudGVyMg==\n");
    // The flag is in the encoding only where it is set.
    let json = String::from_utf8(catalog.canonical_bytes()).expect("utf-8");
    assert_eq!(json.matches("\"sensitive\":true").count(), 8, "{json}");
    assert!(!json.contains("\"sensitive\":false"));
}

#[test]
fn an_edited_files_value_rendered_from_a_secret_makes_it_sensitive() {
    let common = secret("db_password", "");
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "roles/r.toml",
            "[[properties]]\npath = \"/etc/app.properties\"\nsettings = { db = { password = '{{secret \"db_password\"}}', user = \"app\" } }\n\n[[ini]]\npath = \"/etc/plain.ini\"\nsettings = { s = { k = \"v\" } }\n",
        ),
    ]);
    let values = values(&[("common", "db_password", b"hunter2")]);
    let catalog = compile_with_secrets(&repository, &node(&[]), &values)
        .unwrap_or_else(|d| panic!("compile failed:\n{d}"));
    assert!(sensitive(&catalog, "properties:/etc/app.properties"));
    assert!(!sensitive(&catalog, "ini:/etc/plain.ini"));
}

#[test]
fn binary_secrets_round_trip_through_content_base64_and_are_refused_as_text() {
    let binary: Vec<u8> = vec![0, 159, 146, 150, 255, 10];
    let common = secret("keystore", "");
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "roles/r.toml",
            "[[file]]\npath = \"/etc/keystore\"\ncontent_base64 = \"{{secret_base64 \\\"keystore\\\"}}\"\n",
        ),
    ]);
    let values = values(&[("common", "keystore", &binary)]);
    let catalog = compile_with_secrets(&repository, &node(&[]), &values).expect("compiles");
    assert_eq!(content(&catalog, "/etc/keystore"), binary);

    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "roles/r.toml",
            "[[file]]\npath = \"/etc/keystore\"\ntemplate = \"k.hbs\"\n",
        ),
        ("templates/k.hbs", "\n{{secret \"keystore\"}}"),
    ]);
    let errors = compile_with_secrets(&repository, &node(&[]), &values)
        .expect_err("binary as text")
        .to_string();
    assert!(
        errors.contains("templates/k.hbs:2:1: Failed to render: secret `keystore` is not UTF-8 text: render it with {{secret_base64 \"keystore\"}} into a file's `content_base64`"),
        "{errors}"
    );
}

#[test]
fn content_base64_is_decoded_checked_and_exclusive() {
    let catalog_of = |role: &str| {
        let repository = repo(&[("roles/r.toml", role)]);
        compile(&repository, &node(&[]))
    };
    let catalog = catalog_of("[[file]]\npath = \"/x\"\ncontent_base64 = \"aGVs\\nbG8=\"\n")
        .expect("compiles");
    assert_eq!(content(&catalog, "/x"), b"hello");
    assert!(!sensitive(&catalog, "file:/x"));
    let errors = catalog_of("[[file]]\npath = \"/x\"\ncontent_base64 = \"not*base64\"\n")
        .expect_err("invalid")
        .to_string();
    assert!(
        errors.contains("roles/r.toml:3:1: content_base64 is not valid base64"),
        "{errors}"
    );
    let errors =
        catalog_of("[[file]]\npath = \"/x\"\ncontent = \"a\"\ncontent_base64 = \"YQ==\"\n")
            .expect_err("two sources")
            .to_string();
    assert!(
        errors.contains("exactly one of content, source, template or content_base64; this one has content and content_base64"),
        "{errors}"
    );
}

#[test]
fn the_most_specific_layer_holding_a_key_gives_its_value() {
    let common = secret("db_password", "");
    let prod = secret("db_password", "");
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        ("secrets/env/prod.toml", prod.as_str()),
        (
            "roles/r.toml",
            "[[file]]\npath = \"/p\"\ncontent_base64 = \"{{secret_base64 \\\"db_password\\\"}}\"\n",
        ),
    ]);
    let values = values(&[
        ("common", "db_password", b"common"),
        ("env/prod", "db_password", b"prod"),
    ]);
    let prod = compile_with_secrets(&repository, &node(&[("env", "prod")]), &values).unwrap();
    assert_eq!(content(&prod, "/p"), b"prod");
    let staging = compile_with_secrets(&repository, &node(&[("env", "staging")]), &values).unwrap();
    assert_eq!(content(&staging, "/p"), b"common");
}

#[test]
fn a_secret_outside_its_scope_is_refused_at_validation_where_the_template_asks_for_it() {
    let common = secret("db_password", "scope = { env = \"prod\" }");
    let staging = secret("other", "");
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        // A secrets/ layer for staging makes validation compile for
        // env=staging, as a data/ layer would.
        ("secrets/env/staging.toml", staging.as_str()),
        (
            "templates/db.hbs",
            "user=app\npassword={{secret \"db_password\"}}\n",
        ),
        (
            "roles/db.toml",
            "[match]\nenv = \"*\"\n\n[[file]]\npath = \"/etc/db\"\ntemplate = \"db.hbs\"\n",
        ),
    ]);
    let stand_ins = SecretValues::placeholders(&repository);
    let errors = validate_with_secrets(&repository, &example_facts(), &stand_ins).to_string();
    assert!(
        errors.contains("templates/db.hbs:2:10: Failed to render: secret `db_password` (secrets/common.toml:1) is scoped to env=prod; this role is compiled for env=staging"),
        "{errors}"
    );
    assert!(errors.contains("roles/db.toml:6:1"), "{errors}");
    // The node in scope gets it.
    let catalog =
        compile_with_secrets(&repository, &node(&[("env", "prod")]), &stand_ins).expect("in scope");
    assert_eq!(
        content(&catalog, "/etc/db"),
        b"user=app\npassword=placeholder:db_password\n"
    );
    // A secret used by no role out of its scope is no problem.
    let unused = repo(&[
        ("secrets/common.toml", common.as_str()),
        ("data/env/staging.toml", "port = 1\n"),
        ("roles/db.toml", "[match]\nenv = \"*\"\n"),
    ]);
    let placeholders = SecretValues::placeholders(&unused);
    assert!(validate_with_secrets(&unused, &example_facts(), &placeholders).is_empty());
}

#[test]
fn scopes_on_attested_values_hold_only_for_matching_nodes() {
    let common = secret(
        "db_password",
        "scope = { \"trusted.account_id\" = \"9999*\" }",
    );
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "roles/r.toml",
            "[[exec]]\nname = \"x\"\ncommand = '/bin/true {{secret \"db_password\"}}'\n",
        ),
    ]);
    let stand_ins = SecretValues::placeholders(&repository);
    let errors = compile_with_secrets(&repository, &node(&[]), &stand_ins)
        .expect_err("out of scope")
        .to_string();
    assert!(
        errors.contains("roles/r.toml:3:1: Failed to render: secret `db_password` (secrets/common.toml:1) is scoped to trusted.account_id=9999*; this role is compiled for trusted.account_id=123456789012"),
        "{errors}"
    );
    let mut attested = node(&[]);
    attested
        .attested
        .insert("account_id".into(), "999912341234".into());
    compile_with_secrets(&repository, &attested, &stand_ins).expect("in scope");
}

#[test]
fn a_missing_key_names_the_layers_looked_in() {
    let repository = repo(&[(
        "roles/r.toml",
        "[[exec]]\nname = \"x\"\ncommand = '/bin/true {{secret \"nope\"}}'\n",
    )]);
    let errors = compile_with_secrets(&repository, &node(&[("env", "prod")]), &SecretValues::new())
        .expect_err("missing")
        .to_string();
    assert!(
        errors.contains("roles/r.toml:3:1: Failed to render: secret `nope` is not defined for the node with tags env=prod: looked in secrets/node/i-0123456789abcdef0.toml, secrets/env/prod.toml, secrets/common.toml"),
        "{errors}"
    );
}

#[test]
fn compiling_without_values_says_secrets_are_resolved_by_the_server() {
    let repository = secrets_repo();
    let errors = compile(&repository, &node(&[]))
        .expect_err("no values")
        .to_string();
    assert!(
        errors.contains("secret `db_password` (secrets/common.toml:1) has no value here: secrets are resolved only by the server"),
        "{errors}"
    );
    let errors = crate::validate(&repository, &example_facts()).to_string();
    assert!(errors.contains("resolved only by the server"), "{errors}");
}

#[test]
fn placeholders_stand_in_for_every_secret_and_aws_reference() {
    let common = format!(
        "{}[api]\nfrom = \"secretsmanager:prod/api#key\"\n",
        secret("db_password", "")
    );
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "templates/t.hbs",
            "{{secret \"db_password\"}} {{secret \"api\"}} {{secret \"ssm:/direct/one\"}}",
        ),
        (
            "roles/r.toml",
            "[[file]]\npath = \"/t\"\ntemplate = \"t.hbs\"\n",
        ),
    ]);
    assert_eq!(
        aws_references(&repository),
        [
            "secretsmanager:prod/api#key".to_string(),
            "ssm:/direct/one".to_string()
        ]
        .into()
    );
    let stand_ins = SecretValues::placeholders(&repository);
    assert!(validate_with_secrets(&repository, &example_facts(), &stand_ins).is_empty());
    let catalog = compile_with_secrets(&repository, &node(&[]), &stand_ins).expect("compiles");
    assert_eq!(
        content(&catalog, "/t"),
        b"placeholder:db_password placeholder:secretsmanager:prod/api#key placeholder:ssm:/direct/one"
    );
    // The server's values replace them.
    let mut real = SecretValues::new();
    real.insert_age("common", "db_password", b"pw".to_vec());
    real.insert_aws("secretsmanager:prod/api#key", b"key".to_vec());
    real.insert_aws("ssm:/direct/one", b"one".to_vec());
    let catalog = compile_with_secrets(&repository, &node(&[]), &real).expect("compiles");
    assert_eq!(content(&catalog, "/t"), b"pw key one");
    assert_eq!(format!("{real:?}"), "SecretValues(1 age, 2 aws)");
}

#[test]
fn no_secret_value_reaches_a_diagnostic() {
    let common = secret("db_password", "");
    let value = "Tr0ub4dor&3\"quoted\"";
    // Rendered into fields that refuse it, into a reference, and into a
    // template that fails afterwards: every message quoting it is scrubbed.
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "templates/t.hbs",
            "{{secret \"db_password\"}}{{undefined.thing}}",
        ),
        (
            "roles/r.toml",
            r#"
[[file]]
path = "/etc/mode"
content = "x"
mode = '{{secret "db_password"}}'

[[package]]
name = "p"
ensure = '{{secret "db_password"}}'

[[file]]
path = "/etc/req"
content = "x"
require = ['{{secret "db_password"}}']

[[file]]
path = "/etc/t"
template = "t.hbs"

[[user]]
name = '{{secret "db_password"}}'
"#,
        ),
    ]);
    let values = values(&[("common", "db_password", value.as_bytes())]);
    let errors = compile_with_secrets(&repository, &node(&[]), &values)
        .expect_err("invalid fields")
        .to_string();
    for form in [value, "Tr0ub4dor", "quoted", "Tr0ub4dor&3\\\"quoted"] {
        assert!(!errors.contains(form), "{form:?} leaked in:\n{errors}");
    }
    assert!(errors.contains("<sensitive>"), "{errors}");
    assert!(errors.contains("roles/r.toml"), "{errors}");
}

#[test]
fn the_cache_key_reads_what_secret_scopes_name_and_nothing_else() {
    let scoped = secret(
        "db_password",
        "scope = { env = \"prod\", \"trusted.account_id\" = \"1234*\" }",
    );
    let other = format!(
        "{}{}",
        secret("unused", "scope = { \"trusted.region\" = \"us-*\" }"),
        secret("plain", "")
    );
    let files = |role: &'static str| {
        let scoped = scoped.clone();
        let other = other.clone();
        move || {
            repo(&[
                ("secrets/common.toml", scoped.as_str()),
                ("secrets/env/prod.toml", other.as_str()),
                ("roles/r.toml", role),
            ])
        }
    };
    let uses = files(
        "[[exec]]\nname = \"x\"\ncommand = '/bin/true {{secret \"db_password\"}} {{secret \"plain\"}}'\n",
    )();
    let reads = NodeReads::of(&uses);
    assert_eq!(reads.attested, ["account_id".to_string()].into());
    assert!(!reads.all_attested && !reads.node_id && !reads.all_facts);

    let computed = files("[[exec]]\nname = \"x\"\ncommand = \"/bin/true {{secret tag.role}}\"\n")();
    assert_eq!(NodeReads::of(&computed), NodeReads::everything());

    // A layer holding only secrets still tells nodes apart.
    let node_layer = repo(&[
        ("secrets/node/i-aaaa.toml", scoped.as_str()),
        ("roles/r.toml", ""),
    ]);
    let mut a = node(&[]);
    a.attested.insert("instance_id".into(), "i-aaaa".into());
    let b = node(&[]);
    let layers = |n: &Node| data_layers(&node_layer, &node_context(n)).0;
    assert_eq!(layers(&a), vec!["node/i-aaaa".to_string()]);
    assert!(layers(&b).is_empty());
}

#[test]
fn hierarchy_layers_may_not_name_secrets() {
    let errors = parse_errors(&[
        (
            "cms.toml",
            "[hierarchy]\nlayers = [\"x/{{secret \\\"k\\\"}}\", \"common\"]\n",
        ),
        ("roles/r.toml", ""),
    ]);
    assert!(errors.contains("cms.toml:2:11"), "{errors}");
    assert!(errors.contains("the helper `secret`"), "{errors}");
}

#[test]
fn catalogs_without_secrets_carry_no_sensitive_flag() {
    let repository = repo(&[("roles/r.toml", "[[file]]\npath = \"/x\"\ncontent = \"a\"\n")]);
    let catalog = compile(&repository, &node(&[])).expect("compiles");
    let json = String::from_utf8(catalog.canonical_bytes()).expect("utf-8");
    assert!(!json.contains("sensitive"), "{json}");
}

#[test]
fn secrets_are_part_of_a_repository_folder_and_commit() {
    assert!(crate::is_repository_path("secrets/env/prod.toml"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("secrets/env")).expect("mkdir");
    std::fs::write(
        dir.path().join("secrets/env/prod.toml"),
        "[k]\nfrom = \"ssm:/k\"\n",
    )
    .expect("write");
    let files = RepoFiles::read_dir(dir.path()).expect("reads");
    assert!(files.get("secrets/env/prod.toml").is_some());
}

/// What templates sent to the `log` crate.
struct Captured(std::sync::Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().expect("lock").push(record.args().to_string());
    }
    fn flush(&self) {}
}

static CAPTURED: Captured = Captured(std::sync::Mutex::new(Vec::new()));

#[test]
fn the_log_helper_sends_no_secret_to_the_log() {
    log::set_logger(&CAPTURED).expect("the only logger of these tests");
    log::set_max_level(log::LevelFilter::Trace);
    let common = secret("db_password", "");
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "templates/t.hbs",
            "a{{log (secret \"db_password\") level=\"error\"}}b",
        ),
        (
            "roles/r.toml",
            "[[file]]\npath = \"/t\"\ntemplate = \"t.hbs\"\n",
        ),
    ]);
    let values = values(&[("common", "db_password", b"hunter2")]);
    let catalog = compile_with_secrets(&repository, &node(&[]), &values).expect("compiles");
    assert_eq!(content(&catalog, "/t"), b"ab");
    let logged = CAPTURED.0.lock().expect("lock").join("\n");
    assert!(!logged.contains("hunter2"), "{logged}");
}

#[test]
fn a_secret_in_a_resources_name_path_or_command_line_is_refused_at_that_field() {
    let common = secret("db_password", "");
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "roles/r.toml",
            r#"
[[file]]
path = '/etc/{{secret "db_password"}}.conf'
content = "x"

[[package]]
name = '{{secret "db_password"}}'

[[file]]
path = "/etc/fine"
owner = '{{secret "db_password"}}'

[[java_app]]
name = "orders"
jvm_options = ['-Dpassword={{secret "db_password"}}']
"#,
        ),
    ]);
    let values = values(&[("common", "db_password", b"hunter2")]);
    let errors = compile_with_secrets(&repository, &node(&[]), &values)
        .expect_err("names may not hold secrets")
        .to_string();
    assert!(
        errors.contains("roles/r.toml:3:1: `path` uses a secret"),
        "{errors}"
    );
    assert!(
        errors.contains("roles/r.toml:7:1: `name` uses a secret"),
        "{errors}"
    );
    assert!(
        errors.contains("roles/r.toml:15:1: `jvm_options` uses a secret: a java_app's jvm_options is readable by anyone"),
        "{errors}"
    );
    // Another field of a resource may use one (the resource is sensitive).
    assert!(!errors.contains("`owner` uses a secret"), "{errors}");
    assert!(!errors.contains("hunter2"), "{errors}");
}

#[test]
fn a_secret_given_as_a_parameter_of_an_included_role_is_refused() {
    let common = secret("db_password", "");
    let repository = repo(&[
        ("secrets/common.toml", common.as_str()),
        (
            "roles/svc.toml",
            "[params]\nname = { type = \"string\" }\n[[file]]\npath = \"/etc/svc\"\ncontent = \"x\"\n",
        ),
        (
            "roles/api.toml",
            "include = [{ role = \"svc\", params = { name = \"{{secret \\\"db_password\\\"}}\" } }]\n",
        ),
    ]);
    let values = values(&[("common", "db_password", b"hunter2")]);
    let errors = compile_with_secrets(&repository, &node(&[]), &values)
        .expect_err("refused")
        .to_string();
    assert!(
        errors.contains("roles/api.toml:1:39: parameter `name` uses a secret: a parameter's value may show in resource names and messages; read the secret inside role `svc` instead"),
        "{errors}"
    );
    assert!(!errors.contains("hunter2"), "{errors}");
}
