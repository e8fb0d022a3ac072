//! Tests of the role language, written in terms of repositories, nodes and
//! catalogs: each builds a small repository in memory, compiles it and looks
//! at what a user would see.

use std::collections::BTreeMap;

use crate::{
    Catalog, Diagnostics, Node, RepoFiles, Repository, ResourceKind, compile, example_attested,
    example_facts, validate,
};

const SETTINGS: &str = r#"
[hierarchy]
layers = ["node/{{trusted.instance_id}}", "env/{{tag.env}}", "role/{{tag.role}}", "common"]
"#;

/// A repository from `(path, text)` pairs; `cms.toml` is added unless given.
pub(crate) fn repo(files: &[(&str, &str)]) -> RepoFiles {
    let mut repo = RepoFiles::new();
    if !files.iter().any(|(path, _)| *path == "cms.toml") {
        repo.insert("cms.toml", SETTINGS);
    }
    for (path, text) in files {
        repo.insert(*path, *text);
    }
    repo
}

pub(crate) fn node(tags: &str) -> Node {
    let tags = tags
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("k=v");
            (k.to_string(), v.to_string())
        })
        .collect();
    Node {
        id: "i-test".to_string(),
        tags,
        facts: example_facts(),
        attested: example_attested(),
    }
}

#[track_caller]
pub(crate) fn compile_ok(files: &[(&str, &str)], tags: &str) -> Catalog {
    let repository =
        Repository::parse(repo(files)).unwrap_or_else(|d| panic!("parse failed:\n{d}"));
    compile(&repository, &node(tags)).unwrap_or_else(|d| panic!("compile failed:\n{d}"))
}

/// Parses and compiles, expecting failure; returns the diagnostics as text,
/// one per line.
#[track_caller]
pub(crate) fn compile_err(files: &[(&str, &str)], tags: &str) -> String {
    let result =
        Repository::parse(repo(files)).and_then(|repository| compile(&repository, &node(tags)));
    match result {
        Ok(catalog) => panic!(
            "expected errors, got a catalog with {:?}",
            references(&catalog)
        ),
        Err(diagnostics) => diagnostics.to_string(),
    }
}

pub(crate) fn references(catalog: &Catalog) -> Vec<&str> {
    catalog
        .resources
        .iter()
        .map(|r| r.reference.as_str())
        .collect()
}

pub(crate) fn content<'c>(catalog: &'c Catalog, path: &str) -> &'c str {
    let reference = format!("file:{path}");
    let resource = catalog
        .resource(&reference)
        .unwrap_or_else(|| panic!("no {reference}"));
    let ResourceKind::File(file) = &resource.kind else {
        panic!("{reference} is not a file")
    };
    let hash = file.content_sha256.as_ref().expect("file has content");
    std::str::from_utf8(&catalog.contents[hash].0).expect("utf-8")
}

#[track_caller]
pub(crate) fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected to find {needle:?} in:\n{haystack}"
    );
}

#[test]
fn roles_are_selected_when_every_match_holds_with_globs() {
    let files = [
        ("roles/base.toml", "[[package]]\nname = \"curl\"\n"),
        (
            "roles/api.toml",
            "[match]\nrole = \"api\"\nenv = \"*\"\n[[package]]\nname = \"openjdk-17-jre-headless\"\n",
        ),
        (
            "roles/prod_only.toml",
            "[match]\nenv = \"prod-*\"\n[[package]]\nname = \"auditd\"\n",
        ),
    ];
    // General roles come before specific ones.
    assert_eq!(
        compile_ok(&files, "role=api,env=prod-eu").roles,
        ["base", "prod_only", "api"]
    );
    assert_eq!(
        compile_ok(&files, "role=api,env=staging").roles,
        ["base", "api"]
    );
    // `env = "*"` needs the tag to exist.
    assert_eq!(compile_ok(&files, "role=api").roles, ["base"]);
    assert_eq!(compile_ok(&files, "").roles, ["base"]);
}

#[test]
fn included_roles_apply_first_and_once() {
    let files = [
        (
            "roles/base.toml",
            "[match]\nnever = \"x\"\n[[package]]\nname = \"curl\"\n",
        ),
        (
            "roles/java.toml",
            "include = [\"base\"]\n[match]\nnever = \"x\"\n[[package]]\nname = \"openjdk-17-jre-headless\"\n",
        ),
        (
            "roles/api.toml",
            "include = [\"java\", \"base\"]\n[match]\nrole = \"api\"\n[[package]]\nname = \"api-tools\"\n",
        ),
    ];
    let catalog = compile_ok(&files, "role=api");
    assert_eq!(catalog.roles, ["base", "java", "api"]);
    assert_eq!(
        references(&catalog),
        [
            "package:curl",
            "package:openjdk-17-jre-headless",
            "package:api-tools"
        ]
    );
}

#[test]
fn include_cycles_and_unknown_includes_are_errors_with_lines() {
    let errors = compile_err(
        &[
            ("roles/a.toml", "include = [\"b\"]\n"),
            (
                "roles/b.toml",
                "description = \"b\"\ninclude = [\"a\", \"missing\"]\n",
            ),
        ],
        "",
    );
    assert_contains(
        &errors,
        "roles/b.toml:2:17: include of unknown role `missing`",
    );
    assert_contains(&errors, "include cycle: a -> b -> a");
}

#[test]
fn more_specific_data_layers_win_and_tables_merge_deeply() {
    let files = [
        (
            "data/common.toml",
            "port = 80\n[db]\nhost = \"db.common\"\npool = 5\n",
        ),
        ("data/env/prod.toml", "[db]\nhost = \"db.prod\"\n"),
        (
            "data/role/web.toml",
            "port = 8080\n[db]\nhost = \"db.web\"\n",
        ),
        ("data/node/i-0123456789abcdef0.toml", "port = 9999\n"),
        (
            "templates/app.conf.hbs",
            "port={{data.port}} db={{data.db.host}} pool={{data.db.pool}}\n",
        ),
        (
            "roles/web.toml",
            "[match]\nrole = \"web\"\n[[file]]\npath = \"/etc/app.conf\"\ntemplate = \"app.conf.hbs\"\n",
        ),
    ];
    let catalog = compile_ok(&files, "role=web,env=prod");
    assert_eq!(
        content(&catalog, "/etc/app.conf"),
        "port=9999 db=db.prod pool=5\n"
    );
    // Without the env tag its layer is skipped; role data beats common.
    let mut facts_without_id = node("role=web");
    facts_without_id.attested.remove("instance_id");
    let repository = Repository::parse(repo(&files)).expect("parses");
    let catalog = compile(&repository, &facts_without_id).expect("compiles");
    assert_eq!(
        content(&catalog, "/etc/app.conf"),
        "port=8080 db=db.web pool=5\n"
    );
}

#[test]
fn a_missing_template_variable_fails_naming_the_template_and_line() {
    let errors = compile_err(
        &[
            (
                "templates/nginx.conf.hbs",
                "user www-data;\nworker_processes {{fact.cpus}};\nlisten {{data.nginx.port}};\n",
            ),
            (
                "roles/web.toml",
                "[[file]]\npath = \"/etc/nginx/nginx.conf\"\ntemplate = \"nginx.conf.hbs\"\n",
            ),
        ],
        "",
    );
    assert_contains(&errors, "templates/nginx.conf.hbs:3:");
    assert_contains(&errors, "data.nginx.port");
}

#[test]
fn template_helpers_cover_defaults_joins_tags_and_memory_shares() {
    let files = [
        ("data/common.toml", "servers = [\"a\", \"b\"]\n"),
        (
            "templates/t.hbs",
            "{{default data.missing \"fallback\"}}|{{join data.servers \",\"}}|{{#if (tag_is \"env\" \"prod\")}}prod{{else}}other{{/if}}|{{#if (has_tag \"canary\")}}canary{{/if}}|-Xmx{{memory_percent 50}}|{{upper vars.name}}|{{#if tag.absent}}x{{else}}no-tag{{/if}}",
        ),
        (
            "roles/r.toml",
            "[[file]]\npath = \"/t\"\ntemplate = \"t.hbs\"\nvars = { name = \"api\" }\n",
        ),
    ];
    let catalog = compile_ok(&files, "env=prod");
    assert_eq!(
        content(&catalog, "/t"),
        "fallback|a,b|prod||-Xmx2048m|API|no-tag"
    );
    let catalog = compile_ok(&files, "env=dev,canary=yes");
    assert_eq!(
        content(&catalog, "/t"),
        "fallback|a,b|other|canary|-Xmx2048m|API|no-tag"
    );
}

#[test]
fn for_each_declares_one_resource_per_element_with_item_in_fields_and_templates() {
    let files = [
        (
            "data/common.toml",
            "[[apps]]\nname = \"orders\"\nport = 8081\n[[apps]]\nname = \"users\"\nport = 8082\n",
        ),
        (
            "templates/app.properties.hbs",
            "server.port={{item.port}}\nspring.application.name={{vars.app}}\n",
        ),
        (
            "roles/apps.toml",
            r#"
[[service]]
name = "{{item.name}}"
ensure = "running"
for_each = "data.apps"

[[file]]
path = "/etc/{{item.name}}/application.properties"
template = "app.properties.hbs"
vars = { app = "{{item.name}}" }
for_each = "data.apps"
notify = ["service:{{item.name}}"]
"#,
        ),
    ];
    let catalog = compile_ok(&files, "");
    // Declaration order, except that a file comes before the service it
    // notifies.
    assert_eq!(
        references(&catalog),
        [
            "file:/etc/orders/application.properties",
            "service:orders",
            "file:/etc/users/application.properties",
            "service:users",
        ]
    );
    assert_eq!(
        content(&catalog, "/etc/users/application.properties"),
        "server.port=8082\nspring.application.name=users\n"
    );
}

#[test]
fn a_resource_declared_twice_in_one_role_is_a_duplicate() {
    let errors = compile_err(
        &[(
            "roles/base.toml",
            "[[package]]\nname = \"curl\"\n\n[[package]]\nname = \"curl\"\n",
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/base.toml:4:1: duplicate resource `package:curl`: already declared in this role at line 1",
    );
}

#[test]
fn roles_may_share_identical_resources_but_not_conflicting_ones() {
    let agree = [
        ("roles/a.toml", "[[package]]\nname = \"curl\"\n"),
        ("roles/b.toml", "[[package]]\nname = \"curl\"\n"),
    ];
    assert_eq!(references(&compile_ok(&agree, "")), ["package:curl"]);
    let errors = compile_err(
        &[
            ("roles/a.toml", "[[package]]\nname = \"curl\"\n"),
            (
                "roles/b.toml",
                "[[package]]\nname = \"curl\"\nensure = \"absent\"\n",
            ),
        ],
        "",
    );
    assert_contains(
        &errors,
        "roles/b.toml:1:1: conflicting resource `package:curl`: role `a` declares it differently at roles/a.toml:1",
    );
}

#[test]
fn dangling_references_are_errors_at_their_line() {
    let errors = compile_err(
        &[(
            "roles/web.toml",
            "[[file]]\npath = \"/etc/x\"\ncontent = \"x\"\nrequire = [\"package:nginx\"]\nnotify = [\"service:nginx\", \"nonsense\", \"widget:a\"]\n",
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/web.toml:4:1: require `package:nginx` refers to no resource",
    );
    assert_contains(
        &errors,
        "roles/web.toml:5:1: notify `service:nginx` refers to no resource",
    );
    assert_contains(&errors, "notify `nonsense` is not a reference");
    assert_contains(&errors, "unknown resource type `widget`");
}

#[test]
fn notifying_something_that_cannot_refresh_is_an_error() {
    let errors = compile_err(
        &[(
            "roles/web.toml",
            "[[package]]\nname = \"a\"\n[[package]]\nname = \"b\"\nnotify = [\"package:a\"]\n",
        )],
        "",
    );
    assert_contains(&errors, "a package does nothing when notified");
}

#[test]
fn dependency_cycles_are_errors_naming_the_cycle() {
    let errors = compile_err(
        &[(
            "roles/web.toml",
            r#"
[[package]]
name = "nginx"
require = ["file:/etc/nginx/nginx.conf"]

[[file]]
path = "/etc/nginx/nginx.conf"
content = "x"
require = ["service:nginx"]

[[service]]
name = "nginx"
require = ["package:nginx"]
"#,
        )],
        "",
    );
    // The package needs the file, the file the service, the service the
    // package: no order satisfies all three.
    assert_contains(&errors, "dependency cycle:");
    for reference in [
        "package:nginx",
        "file:/etc/nginx/nginx.conf",
        "service:nginx",
    ] {
        assert_contains(&errors, reference);
    }
}

#[test]
fn resources_are_ordered_by_require_then_declaration() {
    let catalog = compile_ok(
        &[(
            "roles/web.toml",
            r#"
[[service]]
name = "nginx"
ensure = "running"
require = ["package:nginx"]

[[file]]
path = "/etc/nginx/nginx.conf"
content = "x"
require = ["package:nginx"]
notify = ["service:nginx"]

[[package]]
name = "nginx"
"#,
        )],
        "",
    );
    assert_eq!(
        references(&catalog),
        [
            "package:nginx",
            "file:/etc/nginx/nginx.conf",
            "service:nginx"
        ]
    );
}

#[test]
fn paths_that_leave_the_repository_are_refused() {
    let errors = compile_err(
        &[(
            "roles/evil.toml",
            r#"
[[file]]
path = "/a"
source = "../../etc/shadow"

[[file]]
path = "/b"
template = "/etc/shadow"

[[file]]
path = "/c"
source = "ok/../../cms.toml"
"#,
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/evil.toml:4:1: path `../../etc/shadow` leaves `files/`",
    );
    assert_contains(
        &errors,
        "roles/evil.toml:8:1: path `/etc/shadow` is absolute",
    );
    assert_contains(
        &errors,
        "roles/evil.toml:12:1: path `ok/../../cms.toml` leaves `files/`",
    );
}

#[test]
fn symlinks_out_of_the_repository_are_never_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    let outside = dir.path().join("secret");
    std::fs::write(&outside, "top secret").expect("write");
    std::fs::create_dir_all(root.join("files")).expect("mkdir");
    std::fs::create_dir_all(root.join("roles")).expect("mkdir");
    std::fs::write(root.join("cms.toml"), SETTINGS).expect("write");
    std::fs::write(root.join("files/inside.txt"), "inside").expect("write");
    std::os::unix::fs::symlink(&outside, root.join("files/secret")).expect("symlink");
    std::os::unix::fs::symlink("inside.txt", root.join("files/alias")).expect("symlink");
    std::fs::write(
        root.join("roles/r.toml"),
        "[[file]]\npath = \"/alias\"\nsource = \"alias\"\n\n[[file]]\npath = \"/secret\"\nsource = \"secret\"\n",
    )
    .expect("write");
    let repository = Repository::read_dir(&root).expect("parses");
    let errors = compile(&repository, &node(""))
        .expect_err("refused")
        .to_string();
    assert_contains(
        &errors,
        "roles/r.toml:7:1: `files/secret` is a symbolic link to",
    );
    assert!(!errors.contains("top secret"));

    std::fs::write(
        root.join("roles/r.toml"),
        "[[file]]\npath = \"/alias\"\nsource = \"alias\"\n",
    )
    .expect("write");
    let repository = Repository::read_dir(&root).expect("parses");
    let catalog = compile(&repository, &node("")).expect("a link inside the repository is fine");
    assert_eq!(content(&catalog, "/alias"), "inside");
}

#[test]
fn unknown_fields_are_refused_with_their_line_and_a_suggestion() {
    let errors = compile_err(
        &[(
            "roles/web.toml",
            "[[file]]\npath = \"/etc/x\"\ncontent = \"x\"\nmdoe = \"0644\"\n\n[[pakage]]\nname = \"x\"\n",
        )],
        "",
    );
    assert_contains(&errors, "roles/web.toml:4:1: unknown field `mdoe`");
    assert_contains(&errors, "(did you mean `mode`?)");
    assert_contains(&errors, "roles/web.toml:6:3: unknown field `pakage`");
    assert_contains(&errors, "(did you mean `package`?)");
}

#[test]
fn unknown_fields_in_templated_resources_are_refused_too() {
    let errors = compile_err(
        &[
            ("data/common.toml", "apps = [\"a\"]\n"),
            (
                "roles/r.toml",
                "[[service]]\nname = \"{{item}}\"\nfor_each = \"data.apps\"\nensrue = \"running\"\n",
            ),
        ],
        "",
    );
    assert_contains(&errors, "roles/r.toml:4:1: unknown field `ensrue`");
}

#[test]
fn values_are_checked_after_rendering() {
    let errors = compile_err(
        &[
            (
                "data/common.toml",
                "[[pkgs]]\nname = \"a\"\nversion = \"not a version\"\n",
            ),
            (
                "roles/r.toml",
                "[[package]]\nname = \"{{item.name}}\"\nensure = \"{{item.version}}\"\nfor_each = \"data.pkgs\"\n",
            ),
        ],
        "",
    );
    assert_contains(
        &errors,
        "roles/r.toml:1:1: in package after rendering: invalid package ensure `not a version`",
    );
}

#[test]
fn modes_must_be_octal_strings() {
    let errors = compile_err(
        &[(
            "roles/r.toml",
            "[[file]]\npath = \"/x\"\ncontent = \"\"\nmode = 644\n",
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/r.toml:4:8: mode 644 is a number: write it as a string",
    );
}

#[test]
fn a_broken_repository_reports_every_mistake_in_every_file() {
    let errors = compile_err(
        &[
            (
                "cms.toml",
                "[hierarchy]\nlayers = [\"common\"]\nextra = 1\n",
            ),
            ("roles/a.toml", "[[package]\nname = \"x\"\n"),
            (
                "roles/b.toml",
                "[[service]]\nname = \"nginx\"\nensure = \"runing\"\n",
            ),
            ("roles/c.toml", "include = [\"nope\"]\n"),
            ("templates/bad.hbs", "{{#if x}}never closed\n"),
            ("data/common.toml", "key = \n"),
        ],
        "",
    );
    let lines: Vec<&str> = errors.lines().collect();
    for expected in [
        "cms.toml:3:1:",
        "roles/a.toml:1:",
        "roles/b.toml:3:10:",
        "roles/c.toml:1:12:",
        "templates/bad.hbs:",
        "data/common.toml:1:",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "no error starting with {expected} in:\n{errors}"
        );
    }
}

#[test]
fn every_bad_resource_of_a_long_crlf_file_is_reported_at_its_own_line_and_column() {
    // 100 resources with CRLF line ends and multi-byte text before each
    // mistake; every tenth has a mode written as a number, each error at
    // the line and column of its value.
    let mut text = String::new();
    let mut expected = Vec::new();
    let mut line = 1;
    for i in 0..100 {
        text.push_str(&format!(
            "# ressource n° {i} — réglée\r\n[[file]]\r\npath = \"/etc/é{i}\"\r\ncontent = \"日本 {i}\"\r\n"
        ));
        line += 4;
        if i % 10 == 7 {
            text.push_str("mode = 644\r\n");
            expected.push(format!(
                "roles/r.toml:{line}:8: mode 644 is a number: write it as a string, e.g. mode = \"0644\", so it is read as octal"
            ));
            line += 1;
        }
        text.push_str("\r\n");
        line += 1;
    }
    let errors = compile_err(&[("roles/r.toml", &text)], "");
    assert_eq!(errors.lines().collect::<Vec<_>>(), expected, "{errors}");
}

#[test]
fn the_same_inputs_give_the_same_catalog_id_whatever_the_file_order() {
    let files = [
        ("files/motd", "hello\n"),
        (
            "roles/base.toml",
            "[[file]]\npath = \"/etc/motd\"\nsource = \"motd\"\n[[package]]\nname = \"curl\"\n",
        ),
        (
            "roles/web.toml",
            "[match]\nrole = \"web\"\n[[package]]\nname = \"nginx\"\n",
        ),
    ];
    let mut reversed = files;
    reversed.reverse();
    let first = compile_ok(&files, "role=web");
    let second = compile_ok(&reversed, "role=web");
    assert_eq!(first.catalog_id, second.catalog_id);
    assert_eq!(first.canonical_bytes(), second.canonical_bytes());
    assert_eq!(first.catalog_id.len(), 64);

    let changed = compile_ok(
        &[
            files[0],
            files[1],
            (
                "roles/web.toml",
                "[match]\nrole = \"web\"\n[[package]]\nname = \"apache2\"\n",
            ),
        ],
        "role=web",
    );
    assert_ne!(first.catalog_id, changed.catalog_id);
}

#[test]
fn catalog_ids_are_stable_across_read_order_on_disk() {
    let write_repo = |order: &[usize]| {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = [
            ("cms.toml", SETTINGS),
            ("roles/a.toml", "[[package]]\nname = \"a\"\n"),
            ("roles/b.toml", "[[package]]\nname = \"b\"\n"),
            ("roles/c.toml", "[[package]]\nname = \"c\"\n"),
        ];
        for &i in order {
            let path = dir.path().join(files[i].0);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, files[i].1).expect("write");
        }
        let repository = Repository::read_dir(dir.path()).expect("parses");
        compile(&repository, &node(""))
            .expect("compiles")
            .catalog_id
    };
    assert_eq!(write_repo(&[0, 1, 2, 3]), write_repo(&[3, 2, 0, 1]));
}

#[test]
fn a_catalog_survives_its_canonical_encoding_and_detects_tampering() {
    let catalog = compile_ok(
        &[(
            "roles/r.toml",
            "[[file]]\npath = \"/x\"\ncontent = \"data\"\nmode = \"0640\"\n",
        )],
        "",
    );
    let bytes = catalog.canonical_bytes();
    assert_eq!(
        Catalog::from_canonical_bytes(&bytes).expect("decodes"),
        catalog
    );
    let tampered = String::from_utf8(bytes)
        .expect("json")
        .replace("0640", "0777");
    assert!(Catalog::from_canonical_bytes(tampered.as_bytes()).is_err());
}

#[test]
fn validation_compiles_each_role_for_the_environments_the_data_knows() {
    let files = [
        ("data/env/prod.toml", "db = \"db.prod\"\n"),
        ("data/env/staging.toml", "other = 1\n"),
        ("templates/app.hbs", "db={{data.db}}\n"),
        (
            "roles/api.toml",
            "[match]\nrole = \"api\"\nenv = \"*\"\n[[file]]\npath = \"/etc/app\"\ntemplate = \"app.hbs\"\n",
        ),
    ];
    let repository = Repository::parse(repo(&files)).expect("parses");
    let found: Diagnostics = validate(&repository, &example_facts());
    let text = found.to_string();
    assert_eq!(found.len(), 1, "{text}");
    assert_contains(&text, "templates/app.hbs:1:");
    assert_contains(&text, "data.db");
    // With the layer written through `trusted.tags`, the same environments
    // are found: both define `db`, so nothing is missing (an `example`
    // environment would miss it).
    let mut files = files.to_vec();
    files[1] = ("data/env/staging.toml", "db = \"db.staging\"\n");
    files.push((
        "cms.toml",
        "[hierarchy]\nlayers = [\"env/{{trusted.tags.env}}\", \"common\"]\n",
    ));
    let repository = Repository::parse(repo(&files)).expect("parses");
    let found: Diagnostics = validate(&repository, &example_facts());
    assert!(found.is_empty(), "{found}");
}

#[test]
fn java_apps_resolve_artifacts_and_render_configuration() {
    let catalog = compile_ok(
        &[
            ("files/app.jar", "PK-not-really-a-jar"),
            (
                "roles/api.toml",
                r#"
[[java_app]]
name = "api"
runtime_package = "openjdk-17-jre-headless"
artifact = { source = "app.jar" }
heap = "50%"
properties = { server = { port = 8080 }, "spring.profiles.active" = "{{tag.env}}" }
health = { http = "http://127.0.0.1:8080/actuator/health", timeout = "90s" }
"#,
            ),
        ],
        "env=prod",
    );
    let ResourceKind::JavaApp(app) = &catalog.resource("java_app:api").expect("app").kind else {
        panic!()
    };
    assert_eq!(
        app.artifact_sha256,
        crate::sha256_hex(b"PK-not-really-a-jar")
    );
    assert_eq!(app.home, "/opt/api");
    let config = &catalog.contents[app.config_sha256.as_ref().expect("config")].0;
    assert_eq!(
        std::str::from_utf8(config).expect("utf-8"),
        "server.port=8080\nspring.profiles.active=prod\n"
    );
    assert_eq!(
        app.health.as_ref().and_then(|h| h.timeout).map(|t| t.0),
        Some(90)
    );
}

#[test]
fn java_apps_get_their_folders_unit_settings_and_limits() {
    let catalog = compile_ok(
        &[(
            "roles/api.toml",
            r#"
[[java_app]]
name = "billing"
artifact = { url = "https://artifacts.internal/billing-1.jar", sha256 = "AB00000000000000000000000000000000000000000000000000000000000000" }
config_format = "yaml"
properties = { server = { port = 8080 } }
restart = "always"
restart_delay = "10s"
limits = { nofile = 65536, memory = "2g" }
"#,
        )],
        "env=prod",
    );
    let ResourceKind::JavaApp(app) = &catalog.resource("java_app:billing").expect("app").kind
    else {
        panic!()
    };
    assert_eq!(
        app.artifact_sha256,
        "ab00000000000000000000000000000000000000000000000000000000000000"
    );
    assert_eq!(app.config_path(), "/opt/billing/config/application.yml");
    assert_eq!(
        (
            app.log_dir.as_str(),
            app.data_dir.as_str(),
            app.java.as_str()
        ),
        ("/var/log/billing", "/var/lib/billing", "/usr/bin/java")
    );
    assert_eq!(app.restart.to_string(), "always");
    assert_eq!(app.restart_delay.0, 10);
    assert_eq!(app.limits.nofile, Some(65536));
    let config = &catalog.contents[app.config_sha256.as_ref().expect("config")].0;
    assert_eq!(
        std::str::from_utf8(config).expect("utf-8"),
        "server.port: \"8080\"\n"
    );
}

#[test]
fn a_bad_drain_is_an_error_at_its_resources_line_naming_the_field_for_services_and_java_apps() {
    let errors = compile_err(
        &[(
            "roles/web.toml",
            r#"
[[service]]
name = "nginx"
drain = { target_groups = ["web"] }

[[java_app]]
name = "api"
artifact = { url = "http://x/a.jar", sha256 = "0000000000000000000000000000000000000000000000000000000000000000" }
drain = { target_groups = ["arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/api/1"], timeout = "2h" }
"#,
        )],
        "env=prod",
    );
    assert_contains(
        &errors,
        "roles/web.toml:4:1: drain.target_groups: `web` is not a target group ARN",
    );
    assert_contains(
        &errors,
        "roles/web.toml:9:1: drain.timeout = 7200 s is out of range",
    );
    let errors = compile_err(
        &[(
            "roles/web.toml",
            "[[service]]\nname = \"nginx\"\ndrain = { target_groups = [], ports = 80 }\n",
        )],
        "env=prod",
    );
    assert_contains(&errors, "ports");
}

#[test]
fn bad_java_app_values_are_errors_naming_the_field() {
    let errors = compile_err(
        &[(
            "roles/api.toml",
            r#"
[[java_app]]
name = "my app"
user = "root"
artifact = { url = "ftp://x/app.jar", sha256 = "00" }
heap = "150%"
jvm_options = ["UseG1GC"]
environment = { "1BAD" = "x" }
health = { http = "http://127.0.0.1:8080/health", tcp = 8080 }
limits = { memory = "lots" }
"#,
        )],
        "env=prod",
    );
    for expected in [
        "java_app name `my app` must start with a letter or digit",
        "user `root`: a java_app runs as its own unprivileged account",
        "invalid heap `150%`",
        "jvm option `UseG1GC` must start with `-`",
        "environment variable name `1BAD`",
        "exactly one of `http`",
        "limits.memory: invalid size `lots`",
        "artifact url `ftp://x/app.jar` must start with http:// or https://",
        "artifact sha256 `00` is not 64 hex digits",
    ] {
        assert_contains(&errors, expected);
    }
    let errors = compile_err(
        &[(
            "roles/api.toml",
            "[[java_app]]\nname = \"api\"\nartifact = { url = \"http://x/a.jar\", sha256 = \"00\" }\nrestart = \"sometimes\"\n",
        )],
        "env=prod",
    );
    assert_contains(&errors, "sometimes");
    assert_contains(&errors, "on-failure");
}

#[test]
fn the_example_repository_validates_and_compiles_for_an_api_node() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/roles-repo");
    let repository = Repository::read_dir(&root).unwrap_or_else(|d| panic!("{d}"));
    let found = validate(&repository, &example_facts());
    assert!(found.is_empty(), "{found}");
    let tags: BTreeMap<String, String> = [("role", "api"), ("env", "prod")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    let catalog = compile(
        &repository,
        &Node {
            id: "i-1".into(),
            tags,
            facts: example_facts(),
            attested: BTreeMap::new(),
        },
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(catalog.roles, ["base", "java", "java_service", "api"]);
    // One parameterized role, included twice.
    assert!(catalog.resource("java_app:orders").is_some());
    assert!(catalog.resource("java_app:payments").is_some());
}

#[test]
fn only_the_repository_parts_of_a_folder_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in [
        ("cms.toml", SETTINGS),
        ("roles/a.toml", "[[package]]\nname = \"a\"\n"),
        ("README.md", "# roles\n"),
        (".github/workflows/ci.yml", "on: push\n"),
        ("notes/private.txt", "not for the compiler\n"),
    ] {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    let files = RepoFiles::read_dir(dir.path()).expect("reads");
    assert!(files.get("cms.toml").is_some());
    assert!(files.get("roles/a.toml").is_some());
    for outside in ["README.md", ".github/workflows/ci.yml", "notes/private.txt"] {
        assert!(files.get(outside).is_none(), "{outside} was read");
    }
}

/// The example repository with a secret kept for one production instance
/// and a role that writes whatever secret a node's data gives it.
fn example_with_an_instance_secret() -> Repository {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/roles-repo");
    let mut files = RepoFiles::read_dir(&root).expect("reads the example");
    files.insert(
        "data/node/i-0aaaaaaaaaaaaaaaa.toml",
        "db_password = \"production-secret\"\n",
    );
    files.insert(
        "templates/db-password.hbs",
        "{{default data.db_password \"none\"}}\n",
    );
    files.insert(
        "roles/secret.toml",
        "[match]\nrole = \"api\"\n[[file]]\npath = \"/etc/db-password\"\ntemplate = \"db-password.hbs\"\n",
    );
    Repository::parse(files).unwrap_or_else(|d| panic!("{d}"))
}

fn api_node(id: &str, env: &str, attested_instance: Option<&str>, reported_instance: &str) -> Node {
    let mut facts = example_facts();
    facts.insert("instance_id".into(), reported_instance.into());
    Node {
        id: id.to_string(),
        tags: [("role", "api"), ("env", env)]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        facts,
        attested: attested_instance
            .map(|instance| ("instance_id".to_string(), instance.to_string()))
            .into_iter()
            .collect(),
    }
}

#[test]
fn a_node_reporting_another_instances_id_does_not_get_that_instances_data() {
    let repository = example_with_an_instance_secret();
    // A staging node, attested as i-0bbb…, whose metadata service answers
    // the production instance's id.
    let intruder = api_node(
        "i-0bbbbbbbbbbbbbbbb",
        "staging",
        Some("i-0bbbbbbbbbbbbbbbb"),
        "i-0aaaaaaaaaaaaaaaa",
    );
    let catalog = compile(&repository, &intruder).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(content(&catalog, "/etc/db-password"), "none\n");
    // A node enrolled with a token has no attested instance id: the node
    // layer does not apply, whatever it reports.
    let token_node = api_node("web-7", "staging", None, "i-0aaaaaaaaaaaaaaaa");
    let catalog = compile(&repository, &token_node).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(content(&catalog, "/etc/db-password"), "none\n");
    // The instance itself gets its secret.
    let owner = api_node(
        "i-0aaaaaaaaaaaaaaaa",
        "prod",
        Some("i-0aaaaaaaaaaaaaaaa"),
        "i-0aaaaaaaaaaaaaaaa",
    );
    let catalog = compile(&repository, &owner).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(content(&catalog, "/etc/db-password"), "production-secret\n");
}

#[test]
fn a_hierarchy_layer_naming_a_reported_fact_is_refused_saying_what_to_use() {
    let settings = "[hierarchy]\nlayers = [\n  \"node/{{fact.instance_id}}\",\n  \"host/{{fact.hostname}}\",\n  \"common\",\n]\n";
    let errors = Repository::parse(repo(&[
        ("cms.toml", settings),
        ("roles/a.toml", "[[package]]\nname = \"a\"\n"),
    ]))
    .expect_err("a fact in a layer is refused")
    .to_string();
    assert_contains(&errors, "cms.toml:3:");
    assert_contains(&errors, "fact.instance_id");
    assert_contains(&errors, "node/{{trusted.instance_id}}");
    assert_contains(&errors, "cms.toml:4:");
    assert_contains(&errors, "fact.hostname");
    assert_contains(&errors, "host/{{trusted.id}}");
}

#[test]
fn a_hierarchy_layer_reading_values_it_cannot_name_is_refused() {
    for layer in [
        "x/{{lookup this \\\"fact\\\"}}",
        "x/{{lookup fact (lower \\\"OS\\\")}}",
        "x/{{@root.fact.os}}",
        "x/{{#each fact}}{{this}}{{/each}}",
        "x/{{json this}}",
        "x/{{default trusted.instance_id fact.instance_id}}",
        "x/{{#with fact}}{{os}}{{/with}}",
        "x/{{> templates/id.hbs}}",
        "x/{{data.name}}",
    ] {
        let settings = format!("[hierarchy]\nlayers = [\"{layer}\", \"common\"]\n");
        let errors = match Repository::parse(repo(&[
            ("cms.toml", settings.as_str()),
            ("roles/a.toml", "[[package]]\nname = \"a\"\n"),
        ])) {
            Ok(_) => panic!("layer {layer} was accepted"),
            Err(errors) => errors.to_string(),
        };
        assert_contains(&errors, "cms.toml:2:");
        assert_contains(&errors, "trusted.");
    }
}

#[test]
fn hierarchy_layers_may_use_trusted_values_tags_and_the_node_id() {
    let files = [
        (
            "cms.toml",
            "[hierarchy]\nlayers = [\"node/{{trusted.instance_id}}\", \"id/{{node.id}}\", \"account/{{trusted.account_id}}/{{lower trusted.region}}\", \"env/{{trusted.tags.env}}\", \"role/{{tag.role}}\", \"common\"]\n",
        ),
        (
            "data/common.toml",
            "a = \"common\"\nb = \"common\"\nc = \"common\"\nd = \"common\"\ne = \"common\"\n",
        ),
        ("data/role/web.toml", "e = \"role\"\n"),
        ("data/env/prod.toml", "d = \"env\"\n"),
        (
            "data/account/123456789012/eu-west-1.toml",
            "c = \"account\"\n",
        ),
        ("data/id/web-1.toml", "b = \"id\"\n"),
        ("data/node/i-0aaaaaaaaaaaaaaaa.toml", "a = \"node\"\n"),
        (
            "templates/t.hbs",
            "{{data.a}} {{data.b}} {{data.c}} {{data.d}} {{data.e}}\n",
        ),
        (
            "roles/web.toml",
            "[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
        ),
    ];
    let repository = Repository::parse(repo(&files)).unwrap_or_else(|d| panic!("{d}"));
    let mut node = node("role=web,env=prod");
    node.id = "web-1".into();
    node.attested = [
        ("instance_id", "i-0aaaaaaaaaaaaaaaa"),
        ("account_id", "123456789012"),
        ("region", "EU-WEST-1"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let catalog = compile(&repository, &node).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(content(&catalog, "/etc/t"), "node id account env role\n");
    // Without attested values (a node enrolled with a token) the layers
    // naming them do not apply; the others do.
    node.attested.clear();
    let catalog = compile(&repository, &node).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(content(&catalog, "/etc/t"), "common id common env role\n");
}

#[test]
fn templates_see_trusted_values_apart_from_reported_facts() {
    let catalog = {
        let repository = Repository::parse(repo(&[
            (
                "templates/t.hbs",
                "{{trusted.id}} {{trusted.tags.role}} {{trusted.instance_id}} {{trusted.region}} {{node.id}} {{tag.role}} {{fact.instance_id}}\n",
            ),
            (
                "roles/web.toml",
                "[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
            ),
        ]))
        .unwrap_or_else(|d| panic!("{d}"));
        let mut node = node("role=web");
        node.id = "i-0aaaaaaaaaaaaaaaa".into();
        node.facts.insert("instance_id".into(), "i-0forged".into());
        node.attested = [
            ("instance_id", "i-0aaaaaaaaaaaaaaaa"),
            ("region", "eu-west-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        compile(&repository, &node).unwrap_or_else(|d| panic!("{d}"))
    };
    assert_eq!(
        content(&catalog, "/etc/t"),
        "i-0aaaaaaaaaaaaaaaa web i-0aaaaaaaaaaaaaaaa eu-west-1 i-0aaaaaaaaaaaaaaaa web i-0forged\n"
    );
}

#[test]
fn edit_kinds_compile_settings_into_keys_and_are_named_by_their_path() {
    let catalog = compile_ok(
        &[(
            "roles/db.toml",
            r#"
[[ini]]
path = "/etc/my.cnf"
remove = ["mysqld.bind-address", "old"]
settings = { top = 1, mysqld = { max_connections = 200, opcache = { enable = true } } }

[[json]]
path = "/etc/app.json"
settings = { "server.port" = 8080, server = { tls = { ciphers = ["a"] } } }

[[line]]
path = "/etc/ssh/sshd_config"
lines = [{ line = "PermitRootLogin no", match = "^#?PermitRootLogin" }]
"#,
        )],
        "",
    );
    assert_eq!(
        references(&catalog),
        [
            "ini:/etc/my.cnf",
            "json:/etc/app.json",
            "line:/etc/ssh/sshd_config"
        ]
    );
    let keys = |kind: &ResourceKind| -> Vec<String> {
        let edits = match kind {
            ResourceKind::Ini(ini) => &ini.0.edits,
            ResourceKind::Json(json) => &json.0.edits,
            _ => panic!("a key-value kind"),
        };
        edits
            .iter()
            .map(|e| {
                format!(
                    "{:?}={}",
                    e.key,
                    e.value.as_ref().map_or("-".to_string(), |v| v.to_string())
                )
            })
            .collect()
    };
    assert_eq!(
        keys(&catalog.resources[0].kind),
        [
            r#"["mysqld", "max_connections"]="200""#,
            r#"["mysqld", "opcache.enable"]="true""#,
            r#"["", "top"]="1""#,
            r#"["mysqld", "bind-address"]=-"#,
            r#"["", "old"]=-"#,
        ]
    );
    assert_eq!(
        keys(&catalog.resources[1].kind),
        [
            r#"["server", "tls", "ciphers"]=["a"]"#,
            r#"["server", "port"]=8080"#,
        ]
    );
}

#[test]
fn edit_kinds_refuse_bad_values_naming_the_field_and_line() {
    let errors = compile_err(
        &[(
            "roles/bad.toml",
            r#"
[[line]]
path = "/etc/a"
lines = [{ line = "x", match = "([" }, { ensure = "absent" }]

[[ini]]
path = "/etc/b.ini"
settings = { s = { list = ["a", "b"], padded = " x", comment = "a ; b" } }

[[json]]
path = "/etc/c.json"
settings = { a = 1, "a.b" = 2 }
remove = ["a"]

[[yaml]]
path = "etc/d.yaml"

[[properties]]
path = "/etc/e.properties"
settings = { k = { } }

[[line]]
path = "/etc/f"
settings = { a = 1 }
lines = [{ line = "x" }]
"#,
        )],
        "",
    );
    for expected in [
        "roles/bad.toml:4:1: lines entry 1: `match` is not a valid regular expression: regex parse error:",
        "roles/bad.toml:4:1: lines entry 2: an absent entry needs `line` (the line to remove) or `match`",
        "roles/bad.toml:8:1: settings: `s.list` is a list, but ini values are strings, numbers or booleans; write it as one string",
        "roles/bad.toml:8:1: settings: the value of `s.padded` starts or ends with a blank, which ini readers drop; write it without",
        "roles/bad.toml:8:1: settings: the value of `s.comment` holds ` ;` or ` #`, which ini readers take for the start of a comment",
        "roles/bad.toml:12:1: `a` is set to a value and `a.b` is a key inside it: set one or the other",
        "roles/bad.toml:13:1: `a` is both in settings and in remove (or twice): keep it in one place",
        "roles/bad.toml:16:1: path `etc/d.yaml` must be absolute",
        "roles/bad.toml:15:1: a yaml resource sets or removes at least one key: add `settings = { KEY = VALUE }` or `remove = [\"KEY\"]`",
        "roles/bad.toml:20:1: settings: `k` is an empty table; give it keys, or leave it out",
        "roles/bad.toml:24:1: a line resource has no `settings`: it takes `lines`",
    ] {
        assert_contains(&errors, expected);
    }
}

#[test]
fn a_file_declared_whole_and_edited_in_place_is_an_error_naming_both() {
    let errors = compile_err(
        &[
            (
                "roles/a.toml",
                "[[file]]\npath = \"/etc/php.ini\"\ncontent = \"x\"\n",
            ),
            (
                "roles/b.toml",
                "[[ini]]\npath = \"/etc/php.ini\"\nsettings = { PHP = { memory_limit = \"1G\" } }\n\n[[line]]\npath = \"/etc/php.ini\"\nlines = [{ line = \"x\" }]\n",
            ),
        ],
        "",
    );
    assert_contains(
        &errors,
        "roles/b.toml:1:1: `ini:/etc/php.ini` edits /etc/php.ini, which `file:/etc/php.ini` (role `a`, roles/a.toml:1) also manages; a file is either declared whole by `file` or edited in place",
    );
    assert_contains(
        &errors,
        "roles/b.toml:5:1: `line:/etc/php.ini` edits /etc/php.ini, which `file:/etc/php.ini` (role `a`, roles/a.toml:1) also manages",
    );
    let errors = compile_err(
        &[(
            "roles/b.toml",
            "[[ini]]\npath = \"/etc/php.ini\"\nsettings = { PHP = { memory_limit = \"1G\" } }\n\n[[line]]\npath = \"/etc/php.ini\"\nlines = [{ line = \"x\" }]\n",
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/b.toml:5:1: `line:/etc/php.ini` edits /etc/php.ini, which `ini:/etc/php.ini` (role `b`, roles/b.toml:1) also manages; one resource edits a file: put every edit of it in one resource",
    );
}

#[test]
fn edit_kinds_keep_their_catalog_encoding() {
    let catalog = compile_ok(
        &[(
            "roles/all.toml",
            r#"
[[line]]
path = "/etc/a"
lines = [{ line = "x = 1", match = "^x", after = "^y" }, { match = "^z", ensure = "absent" }]

[[ini]]
path = "/etc/b.ini"
create = true
mode = "0640"
settings = { s = { k = 1 } }
remove = ["s.old"]

[[properties]]
path = "/etc/c.properties"
settings = { "a.b" = true }

[[json]]
path = "/etc/d.json"
owner = "root"
settings = { a = { b = [1, "x"] } }

[[yaml]]
path = "/etc/e.yaml"
group = "root"
settings = { a = 1.5 }
"#,
        )],
        "",
    );
    let encoded: Vec<String> = catalog
        .resources
        .iter()
        .map(|r| serde_json::to_string(&r.kind).expect("encodes"))
        .collect();
    assert_eq!(
        encoded,
        [
            r#"{"type":"line","path":"/etc/a","edits":[{"line":"x = 1","match":"^x","ensure":"present","after":"^y"},{"match":"^z","ensure":"absent"}]}"#,
            r#"{"type":"ini","path":"/etc/b.ini","create":true,"mode":"0640","edits":[{"key":["s","k"],"value":"1"},{"key":["s","old"]}]}"#,
            r#"{"type":"properties","path":"/etc/c.properties","edits":[{"key":["a.b"],"value":"true"}]}"#,
            r#"{"type":"json","path":"/etc/d.json","owner":"root","edits":[{"key":["a","b"],"value":[1,"x"]}]}"#,
            r#"{"type":"yaml","path":"/etc/e.yaml","group":"root","edits":[{"key":["a"],"value":1.5}]}"#,
        ]
    );
    for resource in &catalog.resources {
        let json = serde_json::to_string(&resource.kind).expect("encodes");
        let decoded: ResourceKind = serde_json::from_str(&json).expect("decodes");
        assert_eq!(decoded, resource.kind, "{json}");
    }
}

#[test]
fn systemd_kinds_compile_to_their_references_with_drop_in_text_from_settings() {
    let catalog = compile_ok(
        &[(
            "roles/base.toml",
            r#"
[[systemd_timer]]
name = "backup"
command = "/usr/local/bin/backup"
on_calendar = "Mon..Fri *-*-* 04:00:00"
randomized_delay = "10m"

[[systemd_dropin]]
unit = "nginx.service"
name = "50-cms"
notify = ["service:nginx"]
[systemd_dropin.settings.Service]
LimitNOFILE = 65536
ExecStart = ["", "/usr/sbin/nginx -g 'daemon off;'"]
Restart = "always"

[[service]]
name = "nginx"

[[mount]]
path = "/srv/scratch"
device = "tmpfs"
fstype = "tmpfs"
options = "size=64m,noexec"

[[limits]]
name = "app"
user = "app"
nofile = { soft = 1024, hard = 65536 }
nproc = "unlimited"
"#,
        )],
        "env=prod",
    );
    for reference in [
        "systemd_timer:backup",
        "systemd_dropin:nginx.service/50-cms",
        "mount:/srv/scratch",
        "limits:app",
    ] {
        assert!(catalog.resource(reference).is_some(), "{reference}");
    }
    let dropin = catalog
        .resource("systemd_dropin:nginx.service/50-cms")
        .expect("declared");
    let ResourceKind::SystemdDropin(dropin) = &dropin.kind else {
        panic!("{dropin:?}")
    };
    assert_eq!(
        dropin.path(),
        "/etc/systemd/system/nginx.service.d/50-cms.conf"
    );
    assert_eq!(
        dropin.content.as_deref(),
        Some(
            "# Written by cms; local changes are overwritten.\n\n[Service]\nExecStart=\nExecStart=/usr/sbin/nginx -g 'daemon off;'\nLimitNOFILE=65536\nRestart=always\n"
        )
    );
    let ResourceKind::Limits(limits) = &catalog.resource("limits:app").expect("declared").kind
    else {
        panic!()
    };
    assert_eq!(limits.path(), "/etc/security/limits.d/app.conf");
    assert_eq!(
        limits.file_text(),
        "# Written by cms for limits app; local changes are overwritten.\n\
         app soft nofile 1024\napp hard nofile 65536\n\
         app soft nproc unlimited\napp hard nproc unlimited\n"
    );
}

#[test]
fn unit_limits_are_a_drop_in_of_the_unit() {
    let catalog = compile_ok(
        &[(
            "roles/base.toml",
            "[[limits]]\nname = \"nginx\"\nunit = \"nginx.service\"\nnofile = 65536\n",
        )],
        "env=prod",
    );
    let ResourceKind::Limits(limits) = &catalog.resource("limits:nginx").expect("declared").kind
    else {
        panic!()
    };
    assert_eq!(
        limits.path(),
        "/etc/systemd/system/nginx.service.d/limits-nginx.conf"
    );
    assert!(
        limits
            .file_text()
            .ends_with("[Service]\nLimitNOFILE=65536:65536\n")
    );
}

#[test]
fn bad_systemd_timer_values_are_errors_naming_the_field_at_its_line() {
    let errors = compile_err(
        &[(
            "roles/base.toml",
            r#"
[[systemd_timer]]
name = "backup.timer"
command = "run"
on_calendar = "every day"

[[systemd_timer]]
name = "report"
command = ""
on_calendar = "*-*-* 25:00"

[[systemd_timer]]
name = "nothing"
command = "true"
"#,
        )],
        "env=prod",
    );
    assert_contains(
        &errors,
        "roles/base.toml:3:1: name `backup.timer` ends in `.timer`: write the name without it",
    );
    assert_contains(
        &errors,
        "roles/base.toml:5:1: on_calendar `every day` has `every` where a weekday",
    );
    assert_contains(&errors, "roles/base.toml:9:1: command is empty");
    assert_contains(
        &errors,
        "roles/base.toml:10:1: on_calendar `*-*-* 25:00` has time `25:00`: hour 25 is out of range",
    );
    assert_contains(
        &errors,
        "roles/base.toml:13:1: a systemd_timer needs `on_calendar`, `on_boot_sec` or `on_unit_active_sec`",
    );
}

#[test]
fn bad_dropin_mount_and_limits_values_are_errors_naming_the_field_at_its_line() {
    let errors = compile_err(
        &[(
            "roles/base.toml",
            r#"
[[systemd_dropin]]
unit = "nginx"
name = "50-cms.conf"
content = "[Service]\n"

[[mount]]
path = "/srv/data"
device = "/dev/xvdf"
fstype = "ext 4"
options = "noatime, nodev"

[[limits]]
name = "app"
user = "app"
nofile = { soft = 65536, hard = 1024 }
"#,
        )],
        "env=prod",
    );
    for expected in [
        "roles/base.toml:3:1: unit `nginx` has no unit type: write the whole unit name, e.g. `nginx.service`",
        "roles/base.toml:4:1: name `50-cms.conf` is not a drop-in name",
        "roles/base.toml:10:1: fstype `ext 4` is not a file system type",
        "roles/base.toml:11:1: options `noatime, nodev` must be comma-separated options without spaces",
        "roles/base.toml:16:1: nofile: the soft limit 65536 is above the hard limit 1024",
    ] {
        assert_contains(&errors, expected);
    }
    let errors = compile_err(
        &[(
            "roles/base.toml",
            "[[limits]]\nname = \"web\"\nunit = \"nginx.service\"\nnproc = \"lots\"\n",
        )],
        "env=prod",
    );
    assert_contains(
        &errors,
        "roles/base.toml:4:9: invalid limit `lots`: write a number, \"unlimited\", or { soft = 1024, hard = 65536 }",
    );
}

// ---------------------------------------------------------------------------
// sysctl, kernel_module, authorized_keys and package holds

const ALICE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFUh4JBMfA3A/DaZSoJd1GFLVHrwOHl1oRQ3imfXwEWd alice@laptop";

#[test]
fn sysctl_kernel_module_and_authorized_keys_compile_under_their_references() {
    let role = format!(
        r#"
[[sysctl]]
name = "net.core.somaxconn"
value = 4096

[[sysctl]]
name = "net/ipv4/conf/eth0.100/forwarding"
value = "1"

[[kernel_module]]
name = "br_netfilter"

[[authorized_keys]]
user = "deploy"
keys = ["{ALICE_KEY}"]

[[package]]
name = "nginx"
hold = true
"#
    );
    let catalog = compile_ok(&[("roles/base.toml", &role)], "");
    assert_eq!(
        references(&catalog),
        [
            "sysctl:net.core.somaxconn",
            "sysctl:net/ipv4/conf/eth0.100/forwarding",
            "kernel_module:br_netfilter",
            "authorized_keys:deploy",
            "package:nginx",
        ]
    );
    let ResourceKind::Sysctl(sysctl) = &catalog.resources[0].kind else {
        panic!("a sysctl");
    };
    assert_eq!(sysctl.value.as_ref().map(|v| v.0.as_str()), Some("4096"));
    assert_eq!(sysctl.proc_path(), "/proc/sys/net/core/somaxconn");
    let ResourceKind::Sysctl(slashed) = &catalog.resources[1].kind else {
        panic!("a sysctl");
    };
    assert_eq!(
        slashed.proc_path(),
        "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
    );
    assert_eq!(
        slashed.persisted_path(),
        "/etc/sysctl.d/90-cms-net.ipv4.conf.eth0.100.forwarding.conf"
    );
}

#[test]
fn bad_sysctl_names_and_missing_values_are_refused_naming_the_field() {
    let errors = compile_err(
        &[(
            "roles/base.toml",
            r#"
[[sysctl]]
name = "net.core..somaxconn"
value = "1"

[[sysctl]]
name = "net/../../etc/shadow"
value = "1"

[[sysctl]]
name = "net.core.somaxconn"
"#,
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/base.toml:3:1: invalid sysctl name `net.core..somaxconn`",
    );
    assert_contains(
        &errors,
        "roles/base.toml:7:1: invalid sysctl name `net/../../etc/shadow`",
    );
    assert_contains(
        &errors,
        "sysctl net.core.somaxconn has no value: write value = \"...\"",
    );
}

#[test]
fn bad_kernel_module_names_are_refused_naming_the_field() {
    let errors = compile_err(
        &[(
            "roles/base.toml",
            "[[kernel_module]]\nname = \"../evil.ko\"\n",
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/base.toml:2:1: invalid kernel module name `../evil.ko`",
    );
    let errors = compile_err(
        &[(
            "roles/base.toml",
            "[[kernel_module]]\nname = \"dummy\"\nensure = \"unloaded\"\n",
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/base.toml:3:10: unknown variant `unloaded`, expected `loaded` or `absent`",
    );
}

#[test]
fn an_authorized_key_that_is_not_a_key_is_refused_naming_its_index() {
    let truncated = &ALICE_KEY[..60];
    let role = format!(
        r#"
[[authorized_keys]]
user = "deploy"
keys = [
  "{ALICE_KEY}",
  "ssh-ed25519 not*base64",
  "{truncated}",
  "ssh-rsa {}",
  "from=\"10.0.0.1\" {ALICE_KEY}",
]
"#,
        ALICE_KEY.split_whitespace().nth(1).expect("base64")
    );
    let errors = compile_err(&[("roles/base.toml", &role)], "");
    assert_contains(
        &errors,
        "keys[1]: the base64 part of the ssh-ed25519 key is not valid base64",
    );
    assert_contains(&errors, "keys[2]: the base64 part");
    assert_contains(
        &errors,
        "keys[3]: the base64 part does not hold a ssh-rsa key",
    );
    assert_contains(
        &errors,
        "keys[4]: `from=\"10.0.0.1\"` is not an SSH key type",
    );
    assert!(!errors.contains("keys[0]"), "{errors}");
    assert_contains(&errors, "roles/base.toml:4:1: keys[1]");
}

#[test]
fn a_held_package_that_is_absent_is_refused_naming_hold() {
    let errors = compile_err(
        &[(
            "roles/base.toml",
            "[[package]]\nname = \"nginx\"\nensure = \"absent\"\nhold = true\n",
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/base.toml:4:1: a package that is absent cannot be held",
    );
}

const TEST_CA: &str = include_str!("../../modules/tests/data/ca-one.pem");

#[test]
fn a_truststore_carries_each_certificates_fingerprint_and_its_pem_by_hash() {
    let role = "[[java_truststore]]\npath = \"/srv/app/truststore.p12\"\npassword = \"changeit\"\ncertificates = { internal-ca = { source = \"ca.pem\" } }\n";
    let catalog = compile_ok(&[("files/ca.pem", TEST_CA), ("roles/base.toml", role)], "");
    assert_eq!(
        references(&catalog),
        ["java_truststore:/srv/app/truststore.p12"]
    );
    let ResourceKind::JavaTruststore(store) = &catalog.resources[0].kind else {
        panic!("a truststore");
    };
    let certificate = &store.certificates["internal-ca"];
    // As `openssl x509 -noout -fingerprint -sha256 -in modules/tests/data/ca-one.pem` prints it.
    assert_eq!(
        certificate.fingerprint,
        "08:E6:0A:66:61:BE:97:58:59:89:7A:6C:FE:7A:F6:11:2D:8A:64:D9:A8:EB:0E:71:B1:2C:98:C1:1C:7D:57:5C"
    );
    assert_eq!(
        catalog.contents[&certificate.pem_sha256].0,
        TEST_CA.as_bytes()
    );
}

#[test]
fn bad_truststore_passwords_and_certificates_are_refused_naming_the_field() {
    let two = format!("{TEST_CA}{TEST_CA}");
    let role = r#"
[[java_truststore]]
path = "/srv/app/truststore.p12"
password = "short"

[java_truststore.certificates]
Upper = { source = "ca.pem" }
both = { source = "ca.pem", content = "x" }
chain = { source = "two.pem" }
garbage = { content = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n" }
"#;
    let errors = compile_err(
        &[
            ("files/ca.pem", TEST_CA),
            ("files/two.pem", &two),
            ("roles/base.toml", role),
        ],
        "",
    );
    assert_contains(
        &errors,
        "roles/base.toml:4:1: the truststore password must have at least 6 characters",
    );
    assert!(!errors.contains("\"short\""), "{errors}");
    assert_contains(&errors, "certificates.Upper: an alias is lowercase letters");
    assert_contains(&errors, "certificates.both: write exactly one of source");
    assert_contains(
        &errors,
        "certificates.chain: holds 2 PEM certificates (-----BEGIN CERTIFICATE-----); give each certificate its own alias",
    );
    assert_contains(
        &errors,
        "certificates.garbage: the certificate's base64 is not valid",
    );
}

#[test]
fn a_file_a_kind_writes_itself_declared_by_file_too_is_an_error_naming_both() {
    let errors = compile_err(
        &[(
            "roles/base.toml",
            r#"[[systemd_dropin]]
unit = "nginx.service"
name = "50-cms"
content = "[Service]\nLimitNOFILE=65536\n"

[[file]]
path = "/etc/systemd/system/nginx.service.d/50-cms.conf"
content = "x"

[[sysctl]]
name = "net.core.somaxconn"
value = 4096

[[file]]
path = "/etc/sysctl.d/90-cms-net.core.somaxconn.conf"
content = "y"
"#,
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/base.toml:1:1: `systemd_dropin:nginx.service/50-cms` writes /etc/systemd/system/nginx.service.d/50-cms.conf, which `file:/etc/systemd/system/nginx.service.d/50-cms.conf` (role `base`, roles/base.toml:6) also manages; a file has one owner",
    );
    assert_contains(
        &errors,
        "roles/base.toml:10:1: `sysctl:net.core.somaxconn` writes /etc/sysctl.d/90-cms-net.core.somaxconn.conf, which `file:/etc/sysctl.d/90-cms-net.core.somaxconn.conf`",
    );
}

#[test]
fn a_timer_named_as_a_java_app_would_overwrite_its_unit_and_is_refused() {
    let errors = compile_err(
        &[(
            "roles/api.toml",
            "[[java_app]]\nname = \"orders\"\nartifact = { url = \"http://x/a.jar\", sha256 = \"abababababababababababababababababababababababababababababababab\" }\n\n[[systemd_timer]]\nname = \"orders\"\ncommand = \"true\"\non_calendar = \"daily\"\n",
        )],
        "",
    );
    assert_contains(
        &errors,
        "`systemd_timer:orders` writes /etc/systemd/system/orders.service, which `java_app:orders` (role `api`, roles/api.toml:1) also manages",
    );
}
