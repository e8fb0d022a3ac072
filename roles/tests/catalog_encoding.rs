//! The catalog's encoding is a contract: its id is the sha256 of it, and an
//! agent compares ids to know whether anything changed. A catalog holding
//! every kind must keep the id it had when this test was written, whatever
//! the code that builds it looks like.

use std::collections::BTreeMap;

use cms_roles::{
    Catalog, Node, RepoFiles, Repository, compile, example_facts, parse_tag_list, sha256_hex,
};

/// The catalog of an untagged node `id` with the example facts.
fn compile_untagged(files: RepoFiles, id: &str) -> Catalog {
    let repository = Repository::parse(files).expect("parses");
    let node = Node {
        id: id.into(),
        tags: BTreeMap::new(),
        facts: example_facts(),
        attested: BTreeMap::new(),
    };
    compile(&repository, &node).expect("compiles")
}

#[test]
fn a_catalog_of_every_kind_keeps_its_id_and_encoding() {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert("files/key.asc", "KEY");
    files.insert("files/app.jar", "JAR");
    files.insert("templates/t.hbs", "hello {{node.id}} {{vars.x}}");
    files.insert(
        "roles/all.toml",
        r#"
[[package]]
name = "nginx"
ensure = "1.2-3"
[[file]]
path = "/etc/a"
content = "lit {{x}}"
mode = "0640"
[[file]]
path = "/etc/b"
template = "t.hbs"
vars = { x = 1 }
[[directory]]
path = "/srv"
purge = true
[[symlink]]
path = "/srv/l"
target = "/etc/a"
[[service]]
name = "nginx"
ensure = "running"
enable = true
[[user]]
name = "u"
groups = ["g"]
[[group]]
name = "g"
gid = 10
[[exec]]
name = "e"
command = "true"
timeout = "5m"
refreshonly = true
environment = { A = "b" }
[[repository]]
name = "r"
uri = "https://x"
suite = "bookworm"
key = "key.asc"
[[java_app]]
name = "app"
artifact = { source = "app.jar" }
heap = "50%"
properties = { a = { b = 1 } }
health = { tcp = 8080 }
limits = { memory = "1g" }
"#,
    );
    let catalog = compile_untagged(files, "n1");
    assert_eq!(
        catalog.catalog_id,
        "3ae92119648d77a3dcc3e212b393ec40b1bb9264603910314666a4f16a17cefd"
    );
    assert_eq!(
        sha256_hex(&catalog.canonical_bytes()),
        "11d9ef18e2ec5c26cf4ff4e3f2bba8f182b73a8fa7e10d03977f438d1758db05"
    );
}

#[test]
fn the_example_repository_keeps_its_catalog_ids() {
    let (repository, _) = Repository::load_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/roles-repo"),
    );
    for (tags, id, bytes) in [
        (
            "role=api,env=prod",
            "1532791da718b619928ee71b00985f695798c321cbd6365a925436821e8ec0e7",
            "644d83ce120add61b01ce76fa194f599109cd57e690804307a569cf9a93cae79",
        ),
        (
            "role=web,env=staging",
            "cced37818f1f8c8b86d3b232dec5b6223b397dc3790fc1297ddee60a0c04ca34",
            "8fd4bef29fe99ebc04e2cea4bd8ae9e2ee4690c72a80e630d327c23b45a89b76",
        ),
        (
            "role=api,env=staging",
            "0eb6c44c2ef018922b7fee11e665b3669b3c63a374dcd434b475cea02ffff029",
            "239c4cd85a920a6ed8b7425f5876a2161e662657ce2311579d186dcd80670464",
        ),
    ] {
        let node = Node {
            id: "i-1".into(),
            tags: parse_tag_list(tags).expect("tags parse"),
            facts: example_facts(),
            attested: BTreeMap::new(),
        };
        let catalog = compile(&repository, &node).expect("compiles");
        assert_eq!(catalog.catalog_id, id, "{tags}");
        assert_eq!(sha256_hex(&catalog.canonical_bytes()), bytes, "{tags}");
    }
}

#[test]
fn a_sensitive_resource_adds_only_its_flag_to_the_encoding() {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert(
        "roles/r.toml",
        "[[file]]\npath = \"/etc/plain\"\ncontent = \"a\"\n[[file]]\npath = \"/etc/s\"\ncontent = \"a\"\nsensitive = true\n",
    );
    let catalog = compile_untagged(files, "i-1");
    let json = String::from_utf8(catalog.canonical_bytes()).expect("utf-8");
    let hash = sha256_hex(b"a");
    assert!(
        json.contains(&format!(
            r#"{{"reference":"file:/etc/plain","role":"r","kind":{{"type":"file","path":"/etc/plain","ensure":"present","content_sha256":"{hash}","owner":null,"group":null,"mode":null}}}},{{"reference":"file:/etc/s","role":"r","kind":{{"type":"file","path":"/etc/s","ensure":"present","content_sha256":"{hash}","owner":null,"group":null,"mode":null}},"sensitive":true}}"#
        )),
        "{json}"
    );
    let decoded =
        cms_roles::Catalog::from_canonical_bytes(&catalog.canonical_bytes()).expect("decodes");
    assert_eq!(decoded, catalog);
    assert!(decoded.resources[1].sensitive && !decoded.resources[0].sensitive);
}

/// The encoding of `sysctl`, `kernel_module`, `authorized_keys`,
/// `java_truststore` and a held package, pinned apart from the catalog of
/// the older kinds so that adding them left its id as it was.
#[test]
fn the_access_kinds_keep_their_encoding() {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert(
        "files/ca.pem",
        include_str!("../../modules/tests/data/ca-one.pem"),
    );
    files.insert(
        "roles/access.toml",
        r#"
[[package]]
name = "nginx"
hold = true
[[sysctl]]
name = "net.core.somaxconn"
value = 4096
[[kernel_module]]
name = "br_netfilter"
ensure = "absent"
[[authorized_keys]]
user = "deploy"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFUh4JBMfA3A/DaZSoJd1GFLVHrwOHl1oRQ3imfXwEWd alice@laptop"]
exclusive = false
[[java_truststore]]
path = "/srv/app/truststore.p12"
password = "changeit"
mode = "0640"
certificates = { internal-ca = { source = "ca.pem" } }
"#,
    );
    let catalog = compile_untagged(files, "n1");
    let json = String::from_utf8(catalog.canonical_bytes()).expect("utf-8");
    for kind in [
        r#"{"type":"package","name":"nginx","ensure":"present","hold":true}"#,
        r#"{"type":"sysctl","name":"net.core.somaxconn","value":"4096","ensure":"present"}"#,
        r#"{"type":"kernel_module","name":"br_netfilter","ensure":"absent"}"#,
        r#"{"type":"authorized_keys","user":"deploy","keys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFUh4JBMfA3A/DaZSoJd1GFLVHrwOHl1oRQ3imfXwEWd alice@laptop"],"exclusive":false}"#,
    ] {
        assert!(json.contains(kind), "{kind} in {json}");
    }
    assert_eq!(
        catalog.catalog_id,
        "b4ad6cd446a048bb09a747e7a9cf1958ba182383f3077934404ec0077a367d06"
    );
}
