//! `cms-server trigger` refuses bad flags itself, before it looks for a
//! server: the message names the flag, and the exit status is 3 (the
//! trigger could not start).

use std::process::Command;

fn trigger(args: &[&str]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("a temporary folder");
    let output = Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .arg("trigger")
        .args(args)
        .arg("--data")
        .arg(data.path())
        .output()
        .expect("cms-server runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_batch_selection_or_timeout_is_refused_before_any_server_is_asked() {
    for (args, flag) in [
        (&["--select", "role=web", "--batch", "150%"][..], "--batch"),
        (&["--select", "role=web", "--batch", "abc"][..], "--batch"),
        (&["--select", "role=web", "--batch", "0"][..], "--batch"),
        (&["--select", ""][..], "--select"),
        (&["--select", "role"][..], "--select"),
        (
            &["--select", "role=web", "--timeout", "soon"][..],
            "--timeout",
        ),
    ] {
        let (code, stderr) = trigger(args);
        assert_eq!(code, Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?} names {flag}: {stderr}");
        assert!(
            !stderr.contains("admin credential"),
            "{args:?} is refused before the server is looked for: {stderr}"
        );
    }
}

#[test]
fn good_flags_go_on_to_find_the_server() {
    let (code, stderr) = trigger(&["--select", "role=web", "--batch", "50%", "--canary", "1"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("admin credential"), "{stderr}");
}
