//! The catalog encoding of the systemd kinds is a contract, as that of the
//! older kinds is (`catalog_encoding.rs`): an agent compares catalog ids to
//! know whether anything changed, and an agent of another version reads
//! the resources.

use std::collections::BTreeMap;

use cms_roles::{Node, RepoFiles, Repository, compile, example_facts};

#[test]
fn the_systemd_kinds_keep_their_catalog_encoding() {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert(
        "roles/all.toml",
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
    let repository = Repository::parse(files).expect("parses");
    let catalog = compile(
        &repository,
        &Node {
            id: "n1".into(),
            tags: BTreeMap::new(),
            facts: example_facts(),
            attested: BTreeMap::new(),
        },
    )
    .expect("compiles");
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
