//! The `cms-server secrets` commands as an operator runs them: the value
//! comes from standard input only (bytes, unchanged), an empty one is
//! refused unless allowed, the result decrypts with the server's identity
//! and with the team's break-glass one, and `reencrypt` with the
//! break-glass identity reaches a recipient added later.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn cms_server(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cms-server");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn new_identity(file: &Path) -> String {
    let output = cms_server(&["secrets", "new-identity", "--out", path(file)], b"");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn decrypt(file: &Path, key: &str, identity: &Path) -> Result<Vec<u8>, String> {
    let table: toml::Table = std::fs::read_to_string(file).unwrap().parse().unwrap();
    let armored = table[key]["age"].as_str().unwrap();
    let identity =
        cms_server::secrets::identity::read_identity_file(identity).map_err(|e| e.to_string())?;
    cms_server::secrets::crypt::decrypt(armored, &identity)
}

#[test]
fn a_value_from_standard_input_decrypts_with_the_server_and_the_break_glass_identity() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server_identity = cms_server::secrets::identity::identity_path(&data);
    cms_server::secrets::identity::load_or_create(&data).unwrap();
    let server = cms_server(&["secrets", "recipient", "--data", path(&data)], b"");
    assert!(server.status.success(), "{server:?}");
    let server = String::from_utf8(server.stdout).unwrap().trim().to_string();
    let break_glass_file = dir.path().join("break-glass.txt");
    let break_glass = new_identity(&break_glass_file);
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("cms.toml"),
        format!("[secrets]\nrecipients = [\"{server}\", \"{break_glass}\"]\n"),
    )
    .unwrap();

    let value = b"\x00\x01binary\xff\r\nkeystore\n".to_vec();
    let encrypt = |key: &str, extra: &[&str], stdin: &[u8]| {
        let mut args = vec![
            "secrets",
            "encrypt",
            "--repo",
            path(&repo),
            "--layer",
            "env/prod",
        ];
        args.extend(extra);
        args.push(key);
        cms_server(&args, stdin)
    };
    let output = encrypt("keystore", &[], &value);
    assert!(output.status.success(), "{output:?}");
    let file = repo.join("secrets/env/prod.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("keystore\n\n"), "the value is in the clear");
    assert_eq!(decrypt(&file, "keystore", &server_identity).unwrap(), value);
    assert_eq!(
        decrypt(&file, "keystore", &break_glass_file).unwrap(),
        value
    );

    // An empty value, refused unless allowed; nothing written meanwhile.
    let output = encrypt("empty", &[], b"");
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-empty"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let output = encrypt("empty", &["--allow-empty"], b"");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(decrypt(&file, "empty", &server_identity).unwrap(), b"");

    // The value is never an argument.
    let output = encrypt("keystore", &["--value", "x"], b"");
    assert!(!output.status.success());

    // A recipient joins; the break-glass identity re-encrypts for it.
    let newcomer_file = dir.path().join("newcomer.txt");
    let newcomer = new_identity(&newcomer_file);
    std::fs::write(
        repo.join("cms.toml"),
        format!("[secrets]\nrecipients = [\"{server}\", \"{break_glass}\", \"{newcomer}\"]\n"),
    )
    .unwrap();
    let output = cms_server(
        &[
            "secrets",
            "reencrypt",
            "--repo",
            path(&repo),
            "--identity",
            path(&break_glass_file),
        ],
        b"",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(decrypt(&file, "keystore", &newcomer_file).unwrap(), value);
    // The server's own identity does it as well, found from --data.
    let output = cms_server(
        &[
            "secrets",
            "reencrypt",
            "--repo",
            path(&repo),
            "--data",
            path(&data),
        ],
        b"",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(decrypt(&file, "keystore", &server_identity).unwrap(), value);
}
