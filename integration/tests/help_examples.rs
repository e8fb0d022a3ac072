//! Every command of `cms-server` and `cms-agent`, and every subcommand,
//! shows examples in its `--help`, as the docs promise.

use clap::CommandFactory as _;

fn commands_without_examples(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
    let path = format!("{path} {}", command.get_name()).trim().to_string();
    if command.is_hide_set() || command.get_name() == "help" {
        return;
    }
    let help = command
        .get_after_help()
        .or(command.get_after_long_help())
        .map(|text| text.to_string())
        .unwrap_or_default();
    if !help.contains("Examples:\n  ") {
        missing.push(path.clone());
    }
    for sub in command.get_subcommands() {
        commands_without_examples(sub, &path, missing);
    }
}

#[test]
fn every_command_and_subcommand_of_both_clis_has_examples_in_its_help() {
    let mut missing = Vec::new();
    commands_without_examples(&cms_server::cli::Cli::command(), "", &mut missing);
    commands_without_examples(&cms_agent::cli::Cli::command(), "", &mut missing);
    assert!(
        missing.is_empty(),
        "no `Examples:` in the help of: {missing:?}"
    );
}
