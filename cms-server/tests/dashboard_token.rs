//! `cms-server dashboard-token`: prints a new token once and keeps only its
//! sha256, owner-only, beside the admin credential; each call adds one.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn make_token(data: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .args(["dashboard-token", "--data"])
        .arg(data)
        .output()
        .expect("run cms-server");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[test]
fn a_dashboard_token_is_printed_once_and_only_its_hash_is_kept_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = make_token(dir.path());
    let second = make_token(dir.path());
    assert!(first.starts_with("cmsd_") && first.len() > 40, "{first}");
    assert_ne!(first, second);

    let path = cms_server::dashboard::tokens_file(dir.path());
    let text = std::fs::read_to_string(&path).expect("tokens file");
    assert!(!text.contains(&first) && !text.contains(&second), "{text}");
    let hashes: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(
        hashes,
        vec![
            cms_roles::digest::sha256_hex(first.as_bytes()),
            cms_roles::digest::sha256_hex(second.as_bytes())
        ]
    );
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
