//! The dnf provider, for real: rpm packages built with `rpmbuild`, a
//! repository made with `createrepo_c`, and `dnf --installroot` installing
//! into a folder, as on Amazon Linux or a RHEL-like, but on this Debian
//! machine. The package source itself is a `repository` resource of yum
//! format, written by its provider.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use cms_modules::package::{PackageProvider, apply_batch};
use cms_modules::{BackupStore, Context, Host, Provider, Session, provider};
use cms_roles::{
    Content, Ensure, Package, PackageEnsure, PackageRepository, RepositoryFormat, ResourceKind,
};

fn require_tools() {
    let missing: Vec<&str> = ["rpmbuild", "createrepo_c", "dnf", "rpm"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dnf provider tests need {missing:?}: install the Debian packages rpm, dnf and createrepo-c (scripts/test does)"
    );
}

fn build_rpm(topdir: &Path, name: &str, version: &str) {
    std::fs::create_dir_all(topdir).expect("mkdir");
    let spec = topdir.join(format!("{name}-{version}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: cms test package\nLicense: MIT\nBuildArch: noarch\n%description\ncms test package\n%install\nmkdir -p %{{buildroot}}/usr/share/{name}\necho {version} > %{{buildroot}}/usr/share/{name}/version\n%files\n/usr/share/{name}/version\n"
        ),
    )
    .expect("write spec");
    let output = Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", topdir.display()))
        .args(["-bb"])
        .arg(&spec)
        .output()
        .expect("rpmbuild runs");
    assert!(
        output.status.success(),
        "rpmbuild: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn publish(topdir: &Path, repo: &Path) {
    std::fs::create_dir_all(repo).expect("mkdir");
    for entry in std::fs::read_dir(topdir.join("RPMS/noarch")).expect("RPMS") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, repo.join(path.file_name().expect("name"))).expect("copy");
    }
    let output = Command::new("createrepo_c")
        .arg("-q")
        .arg("--update")
        .arg(repo)
        .output()
        .expect("createrepo_c runs");
    assert!(
        output.status.success(),
        "createrepo_c: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

struct InstallRoot {
    _dir: tempfile::TempDir,
    host: Host,
    backups: BackupStore,
    contents: BTreeMap<String, Content>,
    topdir: std::path::PathBuf,
    repo: std::path::PathBuf,
}

impl InstallRoot {
    fn new() -> InstallRoot {
        require_tools();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        // What an Amazon Linux image has before cms runs: dnf's release
        // variable and its repository folder.
        std::fs::create_dir_all(root.join("etc/dnf/vars")).expect("mkdir");
        std::fs::create_dir_all(root.join("etc/yum.repos.d")).expect("mkdir");
        std::fs::write(root.join("etc/dnf/vars/releasever"), "2023\n").expect("write");
        let topdir = dir.path().join("rpmbuild");
        let repo = dir.path().join("repo");
        InstallRoot {
            backups: BackupStore::open(dir.path().join("backups")).expect("backups"),
            host: Host::new(root),
            contents: BTreeMap::new(),
            topdir,
            repo,
            _dir: dir,
        }
    }

    fn converge(&self, kinds: &[ResourceKind]) -> usize {
        let session = Session::new(
            kinds
                .iter()
                .filter_map(|k| match k {
                    ResourceKind::Package(p) => Some(p.name.clone()),
                    _ => None,
                })
                .collect(),
        );
        let managed = BTreeSet::new();
        let cx = self.context(&session, &managed);
        let mut changed = 0;
        for kind in kinds {
            let provider = provider(kind);
            let changes = provider
                .check(&cx)
                .unwrap_or_else(|e| panic!("check {}: {e}", kind.reference()));
            if !changes.is_empty() {
                provider
                    .apply(&changes, &cx)
                    .unwrap_or_else(|e| panic!("apply {}: {e}", kind.reference()));
                changed += 1;
            }
        }
        changed
    }

    fn installed(&self, name: &str) -> Option<String> {
        let output = Command::new("rpm")
            .arg("--root")
            .arg(self.host.root())
            .args(["-q", "--qf", "%{VERSION}-%{RELEASE}", name])
            .output()
            .expect("rpm runs");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn transactions(&self) -> usize {
        let output = Command::new("dnf")
            .arg(format!("--installroot={}", self.host.root().display()))
            .args(["-q", "history", "list"])
            .output()
            .expect("dnf runs");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| {
                l.trim_start()
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            })
            .count()
    }

    fn repository(&self) -> ResourceKind {
        ResourceKind::Repository(PackageRepository {
            name: "internal".into(),
            ensure: Ensure::Present,
            format: RepositoryFormat::Yum,
            uri: format!("file://{}", self.repo.display()),
            suite: None,
            components: Vec::new(),
            key_sha256: None,
            trusted: true,
            enabled: true,
        })
    }
}

fn package(name: &str, ensure: PackageEnsure) -> ResourceKind {
    ResourceKind::Package(Package {
        name: name.into(),
        ensure,
        hold: Some(false),
    })
}

#[test]
fn dnf_installs_upgrades_and_removes_from_a_local_rpm_repository() {
    let root = InstallRoot::new();
    build_rpm(&root.topdir, "cms-hello", "1.0");
    publish(&root.topdir, &root.repo);

    let wanted = [
        root.repository(),
        package("cms-hello", PackageEnsure::Present),
    ];
    assert_eq!(root.converge(&wanted), 2);
    assert_eq!(root.installed("cms-hello").as_deref(), Some("1.0-1"));
    assert!(
        std::fs::read_to_string(root.host.path("/etc/yum.repos.d/internal.repo"))
            .expect("repo file")
            .contains("gpgcheck=0")
    );
    // A second run changes nothing.
    assert_eq!(root.converge(&wanted), 0);

    build_rpm(&root.topdir, "cms-hello", "2.0");
    publish(&root.topdir, &root.repo);
    assert_eq!(
        root.converge(&[
            root.repository(),
            package("cms-hello", PackageEnsure::Version("2.0-1".into()))
        ]),
        1
    );
    assert_eq!(root.installed("cms-hello").as_deref(), Some("2.0-1"));
    assert_eq!(
        root.converge(&[
            root.repository(),
            package("cms-hello", PackageEnsure::Latest)
        ]),
        0
    );

    assert_eq!(
        root.converge(&[package("cms-hello", PackageEnsure::Absent)]),
        1
    );
    assert_eq!(root.installed("cms-hello"), None);
}

#[test]
fn several_dnf_packages_install_in_one_transaction() {
    let root = InstallRoot::new();
    for name in ["cms-one", "cms-two", "cms-three"] {
        build_rpm(&root.topdir, name, "1.0");
    }
    publish(&root.topdir, &root.repo);
    root.converge(&[root.repository()]);
    let before = root.transactions();

    let packages: Vec<Package> = ["cms-one", "cms-two", "cms-three"]
        .into_iter()
        .map(|name| Package {
            name: name.into(),
            ensure: PackageEnsure::Present,
            hold: Some(false),
        })
        .collect();
    let session = Session::new(packages.iter().map(|p| p.name.clone()).collect());
    let managed = BTreeSet::new();
    let cx = Context {
        host: &root.host,
        contents: &root.contents,
        backups: &root.backups,
        managed_paths: &managed,
        session: &session,
        restarts: &cms_modules::UNCOORDINATED,
        sensitive: false,
    };
    let checked: Vec<(&Package, Vec<cms_modules::Change>)> = packages
        .iter()
        .map(|p| (p, PackageProvider(p).check(&cx).expect("check")))
        .collect();
    assert!(checked.iter().all(|(_, changes)| changes.len() == 1));
    let work: Vec<(&Package, &[cms_modules::Change])> =
        checked.iter().map(|(p, c)| (*p, c.as_slice())).collect();
    apply_batch(&work, &cx).expect("installs");

    for name in ["cms-one", "cms-two", "cms-three"] {
        assert_eq!(root.installed(name).as_deref(), Some("1.0-1"), "{name}");
    }
    assert_eq!(
        root.transactions(),
        before + 1,
        "three packages, one transaction"
    );
}

fn held_package(name: &str, hold: bool) -> ResourceKind {
    ResourceKind::Package(Package {
        name: name.into(),
        ensure: PackageEnsure::Present,
        hold: Some(hold),
    })
}

/// The versionlock plugin is not on this machine (Debian's
/// dnf-plugins-core brings a `local` plugin that breaks the other tests):
/// what is tested is the hold read from the root's versionlock list, and
/// the error that names the plugin's package.
#[test]
fn a_dnf_hold_is_read_from_the_versionlock_list_and_a_missing_plugin_is_named() {
    let root = InstallRoot::new();
    build_rpm(&root.topdir, "cms-held", "1.0");
    publish(&root.topdir, &root.repo);
    root.converge(&[root.repository(), held_package("cms-held", false)]);
    let locklist = root.host.path("/etc/dnf/plugins/versionlock.list");
    std::fs::create_dir_all(locklist.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &locklist,
        "# comment\ncms-held-0:1.0-1.*\n!cms-excluded-0:2-1.*\n",
    )
    .expect("write");

    assert_eq!(root.check(&held_package("cms-held", true)), "");
    assert_eq!(
        root.check(&held_package("cms-held", false)),
        "hold: held -> not held"
    );

    std::fs::write(&locklist, "").expect("write");
    let error = root.apply_error(&held_package("cms-held", true));
    assert!(
        error.starts_with("Failed to hold cms-held: dnf has no versionlock command; declare [[package]] name = \"python3-dnf-plugin-versionlock\""),
        "{error}"
    );
}

impl InstallRoot {
    fn context<'a>(&'a self, session: &'a Session, managed: &'a BTreeSet<String>) -> Context<'a> {
        Context {
            host: &self.host,
            contents: &self.contents,
            backups: &self.backups,
            managed_paths: managed,
            session,
            restarts: &cms_modules::UNCOORDINATED,
            sensitive: false,
        }
    }

    /// What `check` reports for one resource, one change a line.
    fn check(&self, kind: &ResourceKind) -> String {
        let (session, managed) = (Session::default(), BTreeSet::new());
        let changes = provider(kind)
            .check(&self.context(&session, &managed))
            .expect("checks");
        changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The error applying one resource gives.
    fn apply_error(&self, kind: &ResourceKind) -> String {
        let (session, managed) = (Session::default(), BTreeSet::new());
        let cx = self.context(&session, &managed);
        let changes = provider(kind).check(&cx).expect("checks");
        match provider(kind).apply(&changes, &cx) {
            Ok(()) => panic!("expected an error applying {changes:?}"),
            Err(error) => error.to_string(),
        }
    }
}
