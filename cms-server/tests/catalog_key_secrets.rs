//! The catalog cache key and secrets: nodes that a secret's scope tells
//! apart never share a compile (one would get a catalog rendered for the
//! other, with a secret it is not entitled to), and nodes that differ only
//! in values no scope names still do.

use std::collections::BTreeMap;

use cms_roles::{Node, NodeReads, RepoFiles, Repository, example_attested, example_facts};
use cms_server::catalogs::CatalogKey;

const AGE: &str = "-----BEGIN AGE ENCRYPTED FILE-----
YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBhYmNkZWZnaGlqa2xtbm9w
cXJzdHV2d3h5ego=
-----END AGE ENCRYPTED FILE-----
";

fn repository(layers: &str, secrets: &[(&str, &str)], template: &str) -> Repository {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", format!("[hierarchy]\nlayers = {layers}\n"));
    for (path, scope) in secrets {
        files.insert(
            *path,
            format!("[db_password]\nage = \"\"\"\n{AGE}\"\"\"\n{scope}\n"),
        );
    }
    files.insert("templates/t.hbs", template);
    files.insert(
        "roles/web.toml",
        "[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
    );
    Repository::parse(files).expect("valid")
}

fn node(account: &str, region: &str) -> Node {
    let mut attested = example_attested();
    attested.insert("account_id".into(), account.into());
    attested.insert("region".into(), region.into());
    Node {
        id: "i-0123456789abcdef0".into(),
        tags: BTreeMap::from([("role".to_string(), "web".to_string())]),
        facts: example_facts(),
        attested,
    }
}

fn key(repository: &Repository, node: &Node) -> CatalogKey {
    CatalogKey::of("rev1", repository, node, &NodeReads::of(repository), 0)
}

#[test]
fn a_value_a_used_secret_is_scoped_by_is_in_the_key_and_others_are_not() {
    let repository = repository(
        "[\"common\"]",
        &[(
            "secrets/common.toml",
            "scope = { \"trusted.account_id\" = \"1111*\" }",
        )],
        "password={{secret \"db_password\"}}",
    );
    let in_scope = node("111122223333", "us-east-1");
    let other_account = node("999922223333", "us-east-1");
    let other_region = node("111122223333", "eu-west-1");
    assert_ne!(
        key(&repository, &in_scope),
        key(&repository, &other_account)
    );
    assert_eq!(key(&repository, &in_scope), key(&repository, &other_region));
}

#[test]
fn a_secret_layer_chosen_by_a_trusted_value_is_in_the_key() {
    // No data/ file: the layer exists only under secrets/.
    let repository = repository(
        "[\"account/{{trusted.account_id}}\", \"common\"]",
        &[("secrets/account/111122223333.toml", "")],
        "password={{secret \"db_password\"}}",
    );
    assert_ne!(
        key(&repository, &node("111122223333", "us-east-1")),
        key(&repository, &node("999922223333", "us-east-1"))
    );
}

#[test]
fn a_secret_key_computed_from_node_values_is_keyed_by_everything() {
    let repository = repository(
        "[\"common\"]",
        &[("secrets/common.toml", "")],
        "password={{secret (lookup tag \"role\")}}",
    );
    assert_eq!(NodeReads::of(&repository), NodeReads::everything());
    assert_ne!(
        key(&repository, &node("111122223333", "us-east-1")),
        key(&repository, &node("111122223333", "eu-west-1"))
    );
}
