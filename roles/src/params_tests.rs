//! Tests of parameterized roles: `[params]` typed with defaults, includes
//! that give values, one instance per set of values, and the errors a user
//! gets for unknown, missing and mistyped parameters.

use serde_json::json;

use crate::Role;
use crate::tests::{assert_contains, compile_err, compile_ok, references};

/// A Java service role, and a role `api` that includes it twice.
const JAVA_SERVICE: &str = r#"description = "One Java service"

[params]
name = { type = "string", description = "the service's name" }
port = { type = "integer", default = 8080 }
debug = { type = "boolean", default = false }

[[file]]
path = "/etc/{{params.name}}/application.properties"
template = "application.properties.hbs"
notify = ["service:{{params.name}}"]

[[service]]
name = "{{params.name}}"
ensure = "running"
"#;

const API_TWICE: &str = r#"
include = [
  { role = "java_service", params = { name = "orders", port = 8081 } },
  { role = "java_service", params = { name = "payments", debug = true } },
]

[match]
role = "api"
"#;

const PROPERTIES: (&str, &str) = (
    "templates/application.properties.hbs",
    "server.port={{params.port}}\ndebug={{params.debug}}\n",
);

fn file_content(catalog: &crate::Catalog, path: &str) -> String {
    crate::tests::content(catalog, path).to_string()
}

#[test]
fn a_role_included_twice_with_different_params_declares_its_resources_once_per_instance() {
    let catalog = compile_ok(
        &[
            ("roles/java_service.toml", JAVA_SERVICE),
            PROPERTIES,
            ("roles/api.toml", API_TWICE),
        ],
        "role=api",
    );
    assert_eq!(
        references(&catalog),
        [
            "file:/etc/orders/application.properties",
            "service:orders",
            "file:/etc/payments/application.properties",
            "service:payments",
        ]
    );
    // Given values win over defaults; the rest keep their defaults.
    assert_eq!(
        file_content(&catalog, "/etc/orders/application.properties"),
        "server.port=8081\ndebug=false\n"
    );
    assert_eq!(
        file_content(&catalog, "/etc/payments/application.properties"),
        "server.port=8080\ndebug=true\n"
    );
    assert_eq!(catalog.roles, ["java_service", "api"]);
}

#[test]
fn a_role_with_params_and_no_match_applies_only_where_included() {
    let catalog = compile_ok(
        &[
            ("roles/java_service.toml", JAVA_SERVICE),
            PROPERTIES,
            ("roles/api.toml", API_TWICE),
            ("roles/base.toml", "[[package]]\nname = \"curl\"\n"),
        ],
        "role=web",
    );
    // `base` has no [match] and no params: every node. `java_service` has
    // params and no [match]: only where included, and `api` does not apply.
    assert_eq!(references(&catalog), ["package:curl"]);
}

#[test]
fn the_same_instance_included_twice_applies_once() {
    let catalog = compile_ok(
        &[
            ("roles/java_service.toml", JAVA_SERVICE),
            PROPERTIES,
            (
                "roles/a.toml",
                "include = [{ role = \"java_service\", params = { name = \"orders\" } }]\n",
            ),
            (
                "roles/b.toml",
                "include = [{ role = \"java_service\", params = { name = \"orders\", port = 8080 } }]\n",
            ),
        ],
        "",
    );
    // `port = 8080` is the default: the same values, the same instance.
    assert_eq!(
        references(&catalog),
        ["file:/etc/orders/application.properties", "service:orders"]
    );
}

#[test]
fn unknown_missing_and_mistyped_params_are_errors_at_their_line() {
    let errors = compile_err(
        &[
            ("roles/java_service.toml", JAVA_SERVICE),
            PROPERTIES,
            (
                "roles/api.toml",
                r#"include = [
  { role = "java_service", params = { name = "orders", prot = 8081 } },
  { role = "java_service", params = { port = 8082 } },
  { role = "java_service", params = { name = "x", port = "8083" } },
  "java_service",
]
"#,
            ),
        ],
        "",
    );
    assert_contains(
        &errors,
        "roles/api.toml:2:56: unknown parameter `prot` of role `java_service`, expected one of debug, name, port (did you mean `port`?)",
    );
    assert_contains(
        &errors,
        "roles/api.toml:3:12: missing parameter `name` of role `java_service`: it has no default (declared at roles/java_service.toml:4)",
    );
    assert_contains(
        &errors,
        "roles/api.toml:4:51: parameter `port` of role `java_service` is an integer, not a string (declared at roles/java_service.toml:5)",
    );
    assert_contains(
        &errors,
        "roles/api.toml:5:3: missing parameter `name` of role `java_service`",
    );
}

#[test]
fn bad_param_declarations_are_errors_at_their_line() {
    let errors = compile_err(
        &[(
            "roles/svc.toml",
            r#"[params]
port = { type = "integer", default = "8080" }
heap = { type = "text" }
name = "orders"
user = { tpye = "string" }
host = { type = "string", default = "{{fact.hostname}}" }
"#,
        )],
        "",
    );
    assert_contains(
        &errors,
        "roles/svc.toml:2:38: the default of parameter `port` is a string, but its type is integer",
    );
    assert_contains(
        &errors,
        "roles/svc.toml:3:17: unknown type `text` of parameter `heap`, expected one of string, integer, float, boolean, list, table",
    );
    assert_contains(
        &errors,
        "roles/svc.toml:4:8: parameter `name` must be a table with its type",
    );
    assert_contains(
        &errors,
        "roles/svc.toml:5:10: unknown field `tpye`, expected one of type, default, description (did you mean `type`?) in parameter `user`",
    );
    assert_contains(
        &errors,
        "roles/svc.toml:6:37: the default of parameter `host` holds `{{`",
    );
}

#[test]
fn a_role_without_params_given_params_and_a_matched_role_without_defaults_are_errors() {
    let errors = compile_err(
        &[
            ("roles/base.toml", "[match]\nrole = \"x\"\n"),
            (
                "roles/svc.toml",
                "[match]\nrole = \"api\"\n[params]\nname = { type = \"string\" }\n",
            ),
            (
                "roles/api.toml",
                "include = [{ role = \"base\", params = { port = 1 } }]\n",
            ),
        ],
        "",
    );
    assert_contains(
        &errors,
        "roles/api.toml:1:40: role `base` takes no parameters: it has no [params] in roles/base.toml",
    );
    assert_contains(
        &errors,
        "roles/svc.toml:4:1: parameter `name` has no default, so role `svc` cannot be selected by its [match]",
    );
}

#[test]
fn templated_values_render_in_the_including_context_and_become_the_declared_type() {
    let catalog = compile_ok(
        &[
            ("roles/java_service.toml", JAVA_SERVICE),
            PROPERTIES,
            // A parameterized role passing its own parameter on, and a
            // value from the data hierarchy.
            (
                "roles/shop.toml",
                r#"include = [
  { role = "java_service", params = { name = "cart", port = "{{params.base_port}}" } },
  { role = "java_service", params = { name = "{{data.checkout}}", debug = "{{data.debug}}" } },
]

[params]
base_port = { type = "integer", default = 9000 }
"#,
            ),
            (
                "roles/api.toml",
                "include = [{ role = \"shop\", params = { base_port = 9100 } }]\n[match]\nrole = \"api\"\n",
            ),
            (
                "data/common.toml",
                "checkout = \"checkout\"\ndebug = true\n",
            ),
        ],
        "role=api",
    );
    assert_eq!(
        file_content(&catalog, "/etc/cart/application.properties"),
        "server.port=9100\ndebug=false\n"
    );
    assert_eq!(
        file_content(&catalog, "/etc/checkout/application.properties"),
        "server.port=8080\ndebug=true\n"
    );
}

#[test]
fn a_templated_value_that_does_not_read_as_its_type_is_an_error_for_the_node() {
    let errors = compile_err(
        &[
            ("roles/java_service.toml", JAVA_SERVICE),
            PROPERTIES,
            (
                "roles/api.toml",
                "include = [{ role = \"java_service\", params = { name = \"x\", port = \"{{tag.role}}\" } }]\n",
            ),
        ],
        "role=api",
    );
    assert_contains(
        &errors,
        "roles/api.toml:1:60: parameter `port` of role `java_service` is an integer, but its value renders to \"api\" for the node with tags role=api",
    );
}

#[test]
fn two_instances_declaring_the_same_resource_name_both_instances() {
    let errors = compile_err(
        &[
            (
                "roles/svc.toml",
                "[params]\nname = { type = \"string\" }\n[[package]]\nname = \"openjdk-17-jre-headless\"\n[[file]]\npath = \"/etc/shared.conf\"\ncontent = \"x\"\nowner = \"{{params.name}}\"\n",
            ),
            (
                "roles/api.toml",
                "include = [{ role = \"svc\", params = { name = \"a\" } }, { role = \"svc\", params = { name = \"b\" } }]\n",
            ),
        ],
        "",
    );
    // The package is the same in both instances: declared once, no error.
    // The file differs: both instances are named, with the fix.
    assert_contains(
        &errors,
        "roles/svc.toml:5:1: duplicate resource `file:/etc/shared.conf`: role `svc` (name = \"a\") and role `svc` (name = \"b\") both declare it, differently; make its name depend on a parameter, such as `{{params.name}}`",
    );
    assert!(!errors.contains("package:"), "{errors}");
}

#[test]
fn include_params_that_read_facts_are_part_of_what_the_repository_reads() {
    let repository = crate::Repository::parse(crate::tests::repo(&[
        ("roles/java_service.toml", JAVA_SERVICE),
            PROPERTIES,
        (
            "roles/api.toml",
            "include = [{ role = \"java_service\", params = { name = \"x-{{fact.os_family}}\" } }]\n",
        ),
    ]))
    .expect("valid");
    let reads = crate::NodeReads::of(&repository);
    assert!(reads.facts.contains("os_family"), "{reads:?}");
}

#[test]
fn params_are_parsed_with_their_types_and_defaults() {
    let repository = crate::Repository::parse(crate::tests::repo(&[
        ("roles/java_service.toml", JAVA_SERVICE),
        PROPERTIES,
    ]))
    .expect("valid");
    let role: &Role = &repository.roles["java_service"];
    assert_eq!(role.params["port"].default, Some(json!(8080)));
    assert_eq!(role.params["name"].default, None);
    assert_eq!(
        role.params["name"].description.as_deref(),
        Some("the service's name")
    );
}

#[test]
fn a_parameterized_role_nobody_includes_is_a_warning_naming_it() {
    let repository = crate::Repository::parse(crate::tests::repo(&[
        ("roles/java_service.toml", JAVA_SERVICE),
        PROPERTIES,
        (
            "roles/tool.toml",
            "[params]\nx = { type = \"string\", default = \"a\" }\n",
        ),
        (
            "roles/api.toml",
            "include = [{ role = \"java_service\", params = { name = \"a\" } }]\n",
        ),
    ]))
    .expect("valid");
    let warnings = crate::unincluded_parameterized_roles(&repository).to_string();
    assert_eq!(
        warnings.trim_end(),
        "roles/tool.toml:2:1: role `tool` has [params] and no [match], and no role includes it: it applies to no node, and check compiles none of it; include it with params = { … }"
    );
}
