//! `cms-server completions SHELL`: the scripts the Debian package installs.
//! The bash script is loaded into a real bash and asked to complete.

use std::process::Command;

fn completions(shell: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .args(["completions", shell])
        .output()
        .expect("run cms-server");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// What bash offers after `words` (the last one being completed).
fn bash_completes(script: &str, words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cms-server.bash");
    std::fs::write(&path, script).expect("write");
    let program = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; function=$(complete -p cms-server | sed -E 's/.*-F ([^ ]+).*/\\1/'); \"$function\" cms-server \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display(),
        words.join(" "),
        words.len() - 1
    );
    let output = Command::new("bash")
        .args(["--norc", "-c", &program])
        .output()
        .expect("run bash");
    assert!(output.status.success(), "{output:?}");
    let mut offered: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    offered.sort();
    offered
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let script = completions("bash");
    assert_eq!(
        bash_completes(&script, &["cms-server", "no"]),
        ["node", "nodes"]
    );
    assert_eq!(
        bash_completes(&script, &["cms-server", "token", "c"]),
        ["create"]
    );
    let flags = bash_completes(&script, &["cms-server", "nodes", "--fo"]);
    assert_eq!(flags, ["--format"]);
}

#[test]
fn bash_completes_rollout_actions_and_their_flags() {
    let script = completions("bash");
    assert_eq!(
        bash_completes(&script, &["cms-server", "rollout", "p"]),
        ["pause", "promote"]
    );
    assert_eq!(
        bash_completes(&script, &["cms-server", "rollout", "status", "--fo"]),
        ["--follow", "--format"]
    );
    assert_eq!(
        bash_completes(&script, &["cms-server", "env"]),
        ["environments"]
    );
}

#[test]
fn zsh_and_fish_scripts_name_the_agent_and_its_subcommands() {
    let zsh = completions("zsh");
    assert!(zsh.starts_with("#compdef cms-server"), "{zsh}");
    assert!(zsh.contains("'serve:"), "{zsh}");
    let fish = completions("fish");
    assert!(fish.contains("complete -c cms-server"), "{fish}");
    assert!(fish.contains("-a \"reports\""), "{fish}");
}

#[test]
fn an_unknown_shell_is_refused_with_the_ones_it_knows() {
    let output = Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .args(["completions", "tcsh"])
        .output()
        .expect("run cms-server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bash") && stderr.contains("zsh"),
        "{stderr}"
    );
}

#[test]
fn help_shows_examples() {
    for args in [&["--help"][..], &["nodes", "--help"], &["serve", "--help"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_cms-server"))
            .args(args)
            .output()
            .expect("run cms-server");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(
            help.contains("Examples:\n  cms-server "),
            "{args:?}: {help}"
        );
    }
}
