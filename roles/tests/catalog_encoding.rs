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
    // The api pins moved when the example's api role became two instances
    // of the parameterized java_service role; the web pin did not, so the
    // encoding of existing kinds is unchanged.
    let (repository, _) = Repository::load_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/roles-repo"),
    );
    for (tags, id, bytes) in [
        (
            "role=api,env=prod",
            "5156ceebc1c461c59927099f5d769849e0986210b34afbf9967b736121383e13",
            "afae1ee87cfc327218cc4d1aff7f6b2f18b881268aaa866f211cf700e8921a35",
        ),
        (
            "role=web,env=staging",
            "cced37818f1f8c8b86d3b232dec5b6223b397dc3790fc1297ddee60a0c04ca34",
            "8fd4bef29fe99ebc04e2cea4bd8ae9e2ee4690c72a80e630d327c23b45a89b76",
        ),
        (
            "role=api,env=staging",
            "4e42a2d8624488d452b36a0a9520f4ad8be77ddff3a7dee0bea563beb7c87981",
            "dcbbd05e1eb18c2054939883125332145d2e869e35e4a68dbcc7bea6584e6575",
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
    let catalog = compile_one_role(
        "[[file]]\npath = \"/etc/plain\"\ncontent = \"a\"\n[[file]]\npath = \"/etc/s\"\ncontent = \"a\"\nsensitive = true\n",
    );
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

/// The catalog of a repository with this one role, for a node without tags.
fn compile_one_role(role: &str) -> cms_roles::Catalog {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert("roles/r.toml", role);
    compile_untagged(files, "i-1")
}

/// The systemd kinds' encoding is a contract as the older kinds' is: an
/// agent of another version reads these resources.
#[test]
fn the_systemd_kinds_keep_their_catalog_encoding() {
    let catalog = compile_one_role(
        r#"
[[systemd_timer]]
name = "backup"
command = "backup"
on_calendar = "daily"
on_boot_sec = "5m"
randomized_delay = 60

[[systemd_dropin]]
unit = "nginx.service"
name = "50-cms"
settings = { Service = { LimitNOFILE = 65536, Restart = "always", PrivateTmp = true } }

[[mount]]
path = "/srv/data"
device = "/dev/xvdf"
fstype = "xfs"
options = "noatime"

[[limits]]
name = "app"
user = "@app"
nofile = { soft = 1024, hard = "unlimited" }
nproc = 4096
"#,
    );
    let json = String::from_utf8(catalog.canonical_bytes()).expect("utf-8");
    for resource in [
        r#"{"type":"systemd_timer","name":"backup","ensure":"present","command":"backup","on_calendar":"daily","on_boot_sec":300,"persistent":false,"randomized_delay":60,"enable":true,"active":true}"#,
        r##"{"type":"systemd_dropin","key":"nginx.service/50-cms","unit":"nginx.service","name":"50-cms","ensure":"present","content":"# Written by cms; local changes are overwritten.\n\n[Service]\nLimitNOFILE=65536\nPrivateTmp=yes\nRestart=always\n"}"##,
        r#"{"type":"mount","path":"/srv/data","ensure":"mounted","device":"/dev/xvdf","fstype":"xfs","options":"noatime"}"#,
        r#"{"type":"limits","name":"app","ensure":"present","user":"@app","nofile":{"soft":1024,"hard":"unlimited"},"nproc":{"soft":4096,"hard":4096}}"#,
    ] {
        assert!(json.contains(resource), "{resource}\nnot in\n{json}");
    }
    let decoded =
        cms_roles::Catalog::from_canonical_bytes(&catalog.canonical_bytes()).expect("decodes");
    assert_eq!(decoded, catalog);
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

/// A server sends the encoding made with the compile
/// (`compile_encoded_with_secrets` splices the id's encoding into it):
/// byte for byte the catalog's canonical encoding, with contents inline
/// and by hash, text that looks like the encoding's own keys, and no
/// resources at all.
#[test]
fn the_encoding_made_with_the_compile_is_the_canonical_encoding() {
    let mut big = "x".repeat(cms_roles::INLINE_CONTENT_MAX);
    big.push_str(r#"","contents":{"#);
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert("files/big", big.as_str());
    files.insert(
        "roles/r.toml",
        r#"
[[file]]
path = "/etc/big"
source = "big"
[[file]]
path = "/etc/quoted"
content = "say \"},\"contents\":{\" and é ☃ \\ \u0001"
[[exec]]
name = "e"
command = "echo ',\"large_contents\":{}'"
refreshonly = true
"#,
    );
    files.insert("roles/empty.toml", "");
    let repository = Repository::parse(files).expect("parses");
    let node = Node {
        id: "i-1".into(),
        tags: BTreeMap::new(),
        facts: example_facts(),
        attested: BTreeMap::new(),
    };
    let secrets = cms_roles::SecretValues::default();
    let (catalog, bytes) =
        cms_roles::compile_encoded_with_secrets(&repository, &node, &secrets).expect("compiles");
    assert_eq!(catalog, compile(&repository, &node).expect("compiles"));
    assert_eq!(
        String::from_utf8(bytes.clone()).expect("utf-8"),
        String::from_utf8(catalog.canonical_bytes()).expect("utf-8")
    );
    let decoded = Catalog::from_canonical_bytes(&bytes).expect("decodes");
    assert_eq!(decoded.to_fetch.len(), 1, "the big content travels by hash");
    assert_eq!(decoded.catalog_id, catalog.catalog_id);

    let (empty, bytes) = Catalog::new_encoded(Vec::new(), Vec::new(), BTreeMap::new());
    assert_eq!(bytes, empty.canonical_bytes());
    assert_eq!(
        Catalog::from_canonical_bytes(&bytes).expect("decodes"),
        empty
    );
}
