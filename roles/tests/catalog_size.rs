//! Large contents and catalog sizes: a content over `INLINE_CONTENT_MAX`
//! travels by hash and size, not inside the catalog; a catalog the server
//! could not send (over `MAX_CATALOG_BYTES`, or with a content over
//! `MAX_CONTENT_BYTES`) is refused at validation with the role, the
//! resource and the sizes named.

use std::collections::BTreeMap;

use cms_roles::{
    Catalog, INLINE_CONTENT_MAX, MAX_CATALOG_BYTES, Node, RepoFiles, Repository, compile,
    example_facts, sha256_hex, validate,
};

fn node() -> Node {
    Node {
        id: "n1".into(),
        tags: BTreeMap::new(),
        facts: example_facts(),
        attested: BTreeMap::new(),
    }
}

fn repository(files: &[(&str, &[u8])]) -> Repository {
    let mut repo = RepoFiles::new();
    repo.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    for (path, bytes) in files {
        repo.insert(*path, bytes.to_vec());
    }
    Repository::parse(repo).unwrap_or_else(|d| panic!("parse failed:\n{d}"))
}

/// Bytes that do not compress to a pattern: each 32-byte block is the
/// sha256 of its index.
fn noise(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 64);
    let mut block = 0u64;
    while bytes.len() < len {
        let hex = sha256_hex(&block.to_le_bytes());
        bytes.extend_from_slice(hex.as_bytes());
        block += 1;
    }
    bytes.truncate(len);
    bytes
}

#[test]
fn a_large_content_travels_by_hash_and_size_and_is_checked_when_attached() {
    let large = noise(INLINE_CONTENT_MAX + 1);
    let repository = repository(&[
        ("files/big.bin", &large),
        (
            "roles/r.toml",
            b"[[file]]\npath = \"/srv/big.bin\"\nsource = \"big.bin\"\n[[file]]\npath = \"/srv/small\"\ncontent = \"small\"\n",
        ),
    ]);
    let catalog = compile(&repository, &node()).expect("compiles");
    let hash = sha256_hex(&large);
    let bytes = catalog.canonical_bytes();
    assert!(
        bytes.len() < 4096,
        "the large content is not inside the catalog: {} bytes",
        bytes.len()
    );
    let text = String::from_utf8(bytes.clone()).expect("JSON");
    assert!(
        text.ends_with(&format!(
            ",\"large_contents\":{{\"{hash}\":{}}}}}",
            large.len()
        )),
        "{text}"
    );
    // Pinned: this encoding is new with contents that travel by hash.
    assert_eq!(
        sha256_hex(&bytes),
        "ca2b486dc99d6590c368ea997b5db23c3093b51e847fe3ac6f063594cb4db7aa",
        "canonical bytes of a catalog with a large content"
    );

    let mut received = Catalog::from_canonical_bytes(&bytes).expect("decodes");
    assert_eq!(
        received.to_fetch,
        BTreeMap::from([(hash.clone(), large.len() as u64)])
    );
    assert!(!received.contents.contains_key(&hash));
    assert_eq!(
        received.canonical_bytes(),
        bytes,
        "same bytes before the fetch"
    );

    let mut altered = large.clone();
    altered[0] ^= 1;
    assert!(received.attach_content(&hash, altered).is_err());
    assert!(received.attach_content(&hash, large[1..].to_vec()).is_err());
    received
        .attach_content(&hash, large.clone())
        .expect("the right bytes");
    assert!(received.to_fetch.is_empty());
    assert_eq!(received, catalog);
    assert_eq!(received.canonical_bytes(), bytes, "and after it");
}

#[test]
fn a_large_content_name_that_is_not_a_sha256_is_refused() {
    let catalog = Catalog::new(vec![], vec![], BTreeMap::new());
    let text = String::from_utf8(catalog.canonical_bytes())
        .expect("JSON")
        .replace(
            "\"contents\":{}",
            "\"contents\":{},\"large_contents\":{\"../../etc/passwd\":3}",
        );
    let error = Catalog::from_canonical_bytes(text.as_bytes()).expect_err("refused");
    assert!(error.to_string().contains("../../etc/passwd"), "{error}");
}

#[test]
fn a_template_rendering_100_megabytes_is_refused_at_validation_naming_the_resource() {
    let megabyte = "x".repeat(1024 * 1024);
    let template = "{{vars.m}}".repeat(100);
    let role = format!(
        "[[file]]\npath = \"/etc/huge\"\ntemplate = \"huge.hbs\"\nvars = {{ m = \"{megabyte}\" }}\n"
    );
    let repository = repository(&[
        ("templates/huge.hbs", template.as_bytes()),
        ("roles/huge.toml", role.as_bytes()),
    ]);
    let diagnostics = validate(&repository, &example_facts());
    let text = diagnostics.to_string();
    assert!(
        text.contains("roles/huge.toml")
            && text.contains("file:/etc/huge (role huge)")
            && text.contains("100.0 MiB (104857600 bytes)")
            && text.contains("over the limit of 64.0 MiB"),
        "{text}"
    );
}

#[test]
fn a_catalog_over_the_limit_is_refused_at_validation_naming_the_heaviest_role() {
    // 40 inline contents of 200 KiB: 10.7 MiB of base64.
    let mut role = String::new();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..40 {
        files.push((format!("files/f{i}"), noise(200 * 1024 + i)));
        role.push_str(&format!(
            "[[file]]\npath = \"/srv/f{i}\"\nsource = \"f{i}\"\n"
        ));
    }
    let mut all: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(path, bytes)| (path.as_str(), bytes.as_slice()))
        .collect();
    all.push(("roles/heavy.toml", role.as_bytes()));
    all.push((
        "roles/light.toml",
        b"[[file]]\npath = \"/etc/light\"\ncontent = \"x\"\n",
    ));
    let repository = repository(&all);
    let catalog = compile(&repository, &node()).expect("compiles");
    assert!(catalog.encoded_len() > MAX_CATALOG_BYTES);
    assert_eq!(catalog.encoded_len(), catalog.canonical_bytes().len());
    let text = validate(&repository, &example_facts()).to_string();
    assert!(
        text.contains("roles/heavy.toml: catalog is 10.")
            && text.contains("over the limit of 8.0 MiB (8388608 bytes)")
            && text.contains("role heavy ")
            && text.contains("in 40 resources"),
        "{text}"
    );
}

#[test]
fn a_catalog_of_20000_resources_fits() {
    // The resources of a 20,000-resource role, without compiling one.
    let repository = repository(&[(
        "roles/many.toml",
        b"[[file]]\npath = \"/srv/many/file-0\"\ncontent = \"0\"\n",
    )]);
    let one = compile(&repository, &node()).expect("compiles");
    let resources: Vec<_> = (0..20_000)
        .map(|i| {
            let mut resource = one.resources[0].clone();
            resource.reference = format!("file:/srv/many/a-longer-file-name-{i}");
            resource
        })
        .collect();
    let catalog = Catalog::new(one.roles.clone(), resources, one.contents.clone());
    assert!(
        catalog.encoded_len() > 4 * 1024 * 1024,
        "{}",
        catalog.encoded_len()
    );
    assert!(catalog.size_problems().is_empty());
}
