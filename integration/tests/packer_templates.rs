//! The Packer templates that bake cms-agent into an AMI (Debian 12 and
//! Amazon Linux 2023), checked without Packer or AWS: the package each one
//! uploads by default is the one `scripts/package` builds, and every file it
//! takes from the repository exists.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The default of variable `name` in `template`.
#[track_caller]
fn variable_default(template: &str, name: &str) -> String {
    let block = template
        .split(&format!("variable \"{name}\" {{"))
        .nth(1)
        .unwrap_or_else(|| panic!("no variable {name}"));
    let block = &block[..block.find("\n}").unwrap()];
    let default = block
        .lines()
        .find_map(|line| line.trim().strip_prefix("default"))
        .unwrap_or_else(|| panic!("variable {name} has no default"));
    default
        .trim_start_matches([' ', '='])
        .trim_matches('"')
        .to_string()
}

#[track_caller]
fn check(template_path: &str, default_package: &str) {
    let template_path = workspace().join(template_path);
    let template = std::fs::read_to_string(&template_path).unwrap();
    assert_eq!(
        variable_default(&template, "agent_package"),
        default_package
    );
    // Every file named relative to the template exists.
    let directory = template_path.parent().unwrap();
    let mut named = 0;
    for part in template.split("${path.root}/").skip(1) {
        let relative = &part[..part.find('"').unwrap()];
        let file = directory.join(relative);
        assert!(
            file.is_file(),
            "{}: {relative} does not exist",
            template_path.display()
        );
        named += 1;
    }
    assert!(named > 0, "{}", template_path.display());
}

#[test]
fn each_packer_template_uploads_the_package_scripts_package_builds_and_files_that_exist() {
    // The workspace's version, which scripts/package gives the packages.
    let version = env!("CARGO_PKG_VERSION");
    check(
        "packaging/packer/cms-agent.pkr.hcl",
        &format!("target/debian/cms-agent_{version}_amd64.deb"),
    );
    check(
        "packaging/packer/al2023/cms-agent.pkr.hcl",
        &format!("target/rpm/cms-agent-{version}-1.x86_64.rpm"),
    );
}
