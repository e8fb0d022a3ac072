//! `package`: apt/dpkg on Debian and Ubuntu, dnf/rpm on Amazon Linux and
//! RHEL-likes, behind one provider.
//!
//! The installed state of every package of the catalog is read with one
//! query (`dpkg-query` or `rpm -q`) the first time any package is checked,
//! not one process per package. Installs of several packages that need it
//! go in one transaction ([`apply_batch`]). The package manager is chosen
//! by what the host has: `dpkg` first, then `rpm`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cms_roles::{Package, PackageEnsure};

use crate::{Change, CommandOutput, CommandSpec, Context, Host, Provider, ProviderError};

/// apt and dnf can take minutes on a slow mirror; a stuck one must not hang
/// the agent for ever.
const PACKAGE_TIMEOUT: Duration = Duration::from_secs(1800);

/// Which package manager a host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Apt,
    Dnf,
}

impl Manager {
    /// dpkg's status file means apt; an rpm database or dnf/yum
    /// configuration means dnf (also for a `dnf --installroot` tree being
    /// built, which has configuration before it has a database).
    pub fn detect(host: &Host) -> Option<Manager> {
        let exists = |path: &str| matches!(host.status(path), Ok(Some(_)));
        if exists("/var/lib/dpkg/status") {
            Some(Manager::Apt)
        } else if [
            "/var/lib/rpm",
            "/usr/lib/sysimage/rpm",
            "/etc/dnf",
            "/etc/yum.repos.d",
        ]
        .iter()
        .any(|path| exists(path))
        {
            Some(Manager::Dnf)
        } else {
            None
        }
    }
}

pub struct PackageProvider<'a>(pub &'a Package);

impl Provider for PackageProvider<'_> {
    fn packages(&self) -> Vec<String> {
        vec![self.0.name.clone()]
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let manager = manager(cx.host)?;
        let mut changes = self.version_changes(cx, manager)?;
        if let Some(hold) = self.0.hold {
            let held = held_packages(cx, manager, &self.0.name)?.contains(&self.0.name);
            if hold != held {
                changes.push(Change::new("hold", held_word(held), held_word(hold)));
            }
        }
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        apply_batch(&[(self.0, changes)], cx)
    }
}

impl PackageProvider<'_> {
    fn version_changes(
        &self,
        cx: &Context<'_>,
        manager: Manager,
    ) -> Result<Vec<Change>, ProviderError> {
        let installed = installed_version(cx, manager, &self.0.name)?;
        let wanted = &self.0.ensure;
        let change = |to: String| {
            Ok(vec![Change::new(
                "version",
                installed.clone().unwrap_or_else(|| "absent".into()),
                to,
            )])
        };
        match (wanted, &installed) {
            (PackageEnsure::Present, None) => change("present".into()),
            (PackageEnsure::Absent | PackageEnsure::Purged, Some(_)) => change(wanted.to_string()),
            (PackageEnsure::Version(version), current)
                if current.as_deref() != Some(version.as_str()) =>
            {
                change(version.clone())
            }
            (PackageEnsure::Latest, current) => {
                let candidate = candidate_version(cx, manager, &self.0.name)?;
                match candidate {
                    None if current.is_none() => Err(ProviderError::Failed(format!(
                        "Failed to find package `{}` in the package sources",
                        self.0.name
                    ))),
                    Some(candidate) if current.as_deref() != Some(candidate.as_str()) => {
                        change(candidate)
                    }
                    _ => Ok(Vec::new()),
                }
            }
            _ => Ok(Vec::new()),
        }
    }
}

fn held_word(held: bool) -> &'static str {
    if held { "held" } else { "not held" }
}

/// Installs, upgrades and removes several packages in as few transactions
/// as possible: one for everything to install or upgrade, one for removals,
/// one for purges.
pub fn apply_batch(
    packages: &[(&Package, &[Change])],
    cx: &Context<'_>,
) -> Result<(), ProviderError> {
    let manager = manager(cx.host)?;
    let mut install = Vec::new();
    let mut remove = Vec::new();
    let mut purge = Vec::new();
    // A held package is released before its version changes (a hold
    // refuses that) and held again after.
    let mut held = BTreeSet::new();
    for (package, changes) in packages {
        if package.hold.is_some() && !changes.is_empty() {
            held.extend(held_packages(cx, manager, &package.name)?);
        }
    }
    let mut release = Vec::new();
    let mut hold = Vec::new();
    for (package, changes) in packages {
        if changes.is_empty() {
            continue;
        }
        let version_changes = changes.iter().any(|c| c.attribute == "version");
        let is_held = held.contains(&package.name);
        match package.hold {
            Some(false) if is_held => release.push(package.name.clone()),
            Some(true) if is_held && version_changes => {
                release.push(package.name.clone());
                hold.push(package.name.clone());
            }
            Some(true) if !is_held => hold.push(package.name.clone()),
            _ => {}
        }
        let target = changes
            .iter()
            .find(|c| c.attribute == "version")
            .map(|c| c.to.as_str());
        match (&package.ensure, target) {
            (PackageEnsure::Absent, _) => remove.push(package.name.clone()),
            (PackageEnsure::Purged, _) => purge.push(package.name.clone()),
            (PackageEnsure::Present, _) => install.push(package.name.clone()),
            (PackageEnsure::Latest | PackageEnsure::Version(_), Some(version)) => {
                install.push(match manager {
                    Manager::Apt => format!("{}={version}", package.name),
                    Manager::Dnf => format!("{}-{version}", package.name),
                });
            }
            (_, None) => {}
        }
    }
    if !release.is_empty() {
        set_holds(cx, manager, false, &release)?;
    }
    if !install.is_empty() {
        install_packages(cx, manager, &install)?;
    }
    if !remove.is_empty() {
        run_manager(cx, manager, "remove", &remove)?;
    }
    if !purge.is_empty() {
        run_manager(cx, manager, "purge", &purge)?;
    }
    if !hold.is_empty() {
        set_holds(cx, manager, true, &hold)?;
    }
    // What changed is read again on the next check.
    *cx.session.installed.borrow_mut() = None;
    *cx.session.held.borrow_mut() = None;
    Ok(())
}

/// The packages among `name` and the catalog's that are held at their
/// version, read once per run: with dpkg, from the one `dpkg-query` that
/// reads the installed versions (the selection `hold`, which `apt-mark
/// hold` sets; running `apt-mark showhold` each run cost 50 ms to seconds,
/// as it loads apt's whole cache); with dnf, its versionlock list
/// (`/etc/dnf/plugins/versionlock.list`, entries
/// `NAME-[EPOCH:]VERSION-RELEASE.*`).
fn held_packages(
    cx: &Context<'_>,
    manager: Manager,
    name: &str,
) -> Result<BTreeSet<String>, ProviderError> {
    if manager == Manager::Apt {
        installed_version(cx, manager, name)?;
    }
    if let Some(held) = cx.session.held.borrow().as_ref() {
        return Ok(held.clone());
    }
    let held: BTreeSet<String> = match manager {
        Manager::Apt => BTreeSet::new(),
        Manager::Dnf => {
            let list = "/etc/dnf/plugins/versionlock.list";
            let text = match cx.host.status(list)? {
                Some(_) => String::from_utf8_lossy(&cx.host.read_file(list)?).into_owned(),
                None => String::new(),
            };
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with(['#', '!']))
                .filter_map(|line| {
                    let mut parts = line.rsplitn(3, '-');
                    let (_release, _version) = (parts.next()?, parts.next()?);
                    parts.next().map(str::to_string)
                })
                .collect()
        }
    };
    *cx.session.held.borrow_mut() = Some(held.clone());
    Ok(held)
}

/// Holds or releases packages: `apt-mark hold|unhold`, `dnf versionlock
/// add|delete` (its plugin is `python3-dnf-plugin-versionlock`).
fn set_holds(
    cx: &Context<'_>,
    manager: Manager,
    hold: bool,
    names: &[String],
) -> Result<(), ProviderError> {
    let spec = match manager {
        Manager::Apt => {
            let mut argv = vec![
                "apt-mark".to_string(),
                if hold { "hold" } else { "unhold" }.into(),
            ];
            argv.extend(names.iter().cloned());
            CommandSpec::new(argv).timeout(Duration::from_secs(120))
        }
        Manager::Dnf => {
            let mut args = vec!["versionlock", if hold { "add" } else { "delete" }];
            args.extend(names.iter().map(String::as_str));
            dnf_command(cx.host, &args).timeout(Duration::from_secs(300))
        }
    };
    let output = cx.host.run(&spec)?;
    if manager == Manager::Dnf
        && !output.success()
        && (output.stderr.contains("No such command") || output.stdout.contains("No such command"))
    {
        return Err(ProviderError::Failed(format!(
            "Failed to {} {}: dnf has no versionlock command; declare [[package]] name = \"python3-dnf-plugin-versionlock\" and require it",
            if hold { "hold" } else { "release" },
            names.join(", ")
        )));
    }
    check_output(&spec, output)
}

fn manager(host: &Host) -> Result<Manager, ProviderError> {
    Manager::detect(host).ok_or_else(|| {
        ProviderError::Failed(format!(
            "Failed to find a package manager under {}: neither dpkg nor rpm is installed",
            host.root().display()
        ))
    })
}

fn installed_version(
    cx: &Context<'_>,
    manager: Manager,
    name: &str,
) -> Result<Option<String>, ProviderError> {
    let mut cache = cx.session.installed.borrow_mut();
    if cache.as_ref().is_none_or(|known| !known.contains_key(name)) {
        let mut names = cx.session.package_names.clone();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        let (installed, held) = query_remembered(cx, manager, &names)?;
        *cache = Some(installed);
        if let Some(held) = held {
            *cx.session.held.borrow_mut() = Some(held);
        }
    }
    Ok(cache
        .as_ref()
        .and_then(|known| known.get(name).cloned())
        .flatten())
}

/// What dpkg answered an earlier run, kept by a long-running agent (the
/// daemon) so that a run on an unchanged database starts no `dpkg-query`:
/// that process reads dpkg's whole status file, 5 to 10 ms of a periodic
/// run that changes nothing. An answer is used again only while dpkg's
/// database is the one it was read from ([`DpkgDatabase`]) and it covers
/// every package asked for. dnf's database is always asked.
#[derive(Debug, Default)]
pub struct PackageMemory {
    kept: std::sync::Mutex<Option<KeptAnswer>>,
}

#[derive(Debug)]
struct KeptAnswer {
    root: std::path::PathBuf,
    database: DpkgDatabase,
    installed: InstalledVersions,
    held: BTreeSet<String>,
}

/// The identity of dpkg's database: its status file and the folder of
/// its journal (`updates/`), each by [`crate::FileIdentity`]. dpkg replaces
/// the status file by a rename (a new inode) and journals into new files
/// of `updates/` before it does, and `apt-mark hold` goes through dpkg, so
/// any change to what `dpkg-query` reads changes this.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DpkgDatabase([crate::FileIdentity; 2]);

impl DpkgDatabase {
    /// `None` when either is missing or unreadable: then nothing is kept.
    fn of(host: &Host) -> Option<DpkgDatabase> {
        let identity = |path: &str| host.identity(path).ok().flatten();
        Some(DpkgDatabase([
            identity("/var/lib/dpkg/status")?,
            identity("/var/lib/dpkg/updates")?,
        ]))
    }
}

impl PackageMemory {
    fn kept(&self) -> std::sync::MutexGuard<'_, Option<KeptAnswer>> {
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The kept answer, if it was read from this database and covers
    /// `names`.
    fn recall(
        &self,
        root: &std::path::Path,
        database: &DpkgDatabase,
        names: &[String],
    ) -> Option<(InstalledVersions, BTreeSet<String>)> {
        let kept = self.kept();
        let answer = kept.as_ref()?;
        (answer.root == root
            && answer.database == *database
            && names.iter().all(|name| answer.installed.contains_key(name)))
        .then(|| (answer.installed.clone(), answer.held.clone()))
    }

    /// Whether an answer is kept (for tests).
    pub fn keeps_an_answer(&self) -> bool {
        self.kept().is_some()
    }
}

/// [`query_packages`], answered from the session's [`PackageMemory`] when
/// dpkg's database has not changed since it was kept.
fn query_remembered(
    cx: &Context<'_>,
    manager: Manager,
    names: &[String],
) -> Result<(InstalledVersions, Option<BTreeSet<String>>), ProviderError> {
    let memory = match (&cx.session.package_memory, manager) {
        (Some(memory), Manager::Apt) => memory,
        _ => return query_packages(cx.host, manager, names),
    };
    // Read before the query: a change made while it runs is seen next run.
    let Some(database) = DpkgDatabase::of(cx.host) else {
        return query_packages(cx.host, manager, names);
    };
    if let Some((installed, held)) = memory.recall(cx.host.root(), &database, names) {
        return Ok((installed, Some(held)));
    }
    let (installed, held) = query_packages(cx.host, manager, names)?;
    if let Some(held) = &held {
        *memory.kept() = Some(KeptAnswer {
            root: cx.host.root().to_path_buf(),
            database,
            installed: installed.clone(),
            held: held.clone(),
        });
    }
    Ok((installed, held))
}

/// The installed version of each package, in one process.
pub fn query_installed(
    host: &Host,
    manager: Manager,
    names: &[String],
) -> Result<BTreeMap<String, Option<String>>, ProviderError> {
    Ok(query_packages(host, manager, names)?.0)
}

/// Installed version by package name, `None` when not installed.
type InstalledVersions = BTreeMap<String, Option<String>>;

/// The installed version of each package and, with dpkg, which of them are
/// held (their selection is `hold`, the first letter of
/// `db:Status-Abbrev`: what `apt-mark hold` sets and `apt-mark showhold`
/// lists), in one process. dnf's holds are a file of their own (`None`).
fn query_packages(
    host: &Host,
    manager: Manager,
    names: &[String],
) -> Result<(InstalledVersions, Option<BTreeSet<String>>), ProviderError> {
    let mut versions: BTreeMap<String, Option<String>> =
        names.iter().map(|n| (n.clone(), None)).collect();
    let mut held = BTreeSet::new();
    if names.is_empty() {
        return Ok((versions, (manager == Manager::Apt).then_some(held)));
    }
    match manager {
        Manager::Apt => {
            let mut argv = vec![
                "dpkg-query".to_string(),
                format!("--admindir={}", host.path("/var/lib/dpkg").display()),
                "-W".into(),
                "-f=${Package}\t${db:Status-Abbrev}\t${Version}\n".into(),
            ];
            argv.extend(names.iter().cloned());
            // dpkg-query exits 1 when some name is unknown; the output for
            // the others is still complete.
            let output = host.run(&CommandSpec::new(argv).timeout(Duration::from_secs(60)))?;
            for line in output.stdout.lines() {
                let mut fields = line.split('\t');
                let (Some(name), Some(status), Some(version)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                // `ii` is installed; `rc` (removed, config left) and the
                // rest are not.
                let name = name.split(':').next().unwrap_or(name);
                if status.trim().starts_with("ii") || status.trim().starts_with("hi") {
                    versions.insert(name.to_string(), Some(version.to_string()));
                }
                if status.trim().starts_with('h') {
                    held.insert(name.to_string());
                }
            }
        }
        Manager::Dnf => {
            let mut argv = vec![
                "rpm".to_string(),
                "--root".into(),
                host.root().display().to_string(),
                "-q".into(),
                "--qf".into(),
                "%{NAME}\t%{VERSION}-%{RELEASE}\n".into(),
            ];
            argv.extend(names.iter().cloned());
            let output = host.run(&CommandSpec::new(argv).timeout(Duration::from_secs(60)))?;
            for line in output.stdout.lines() {
                if let Some((name, version)) = line.split_once('\t') {
                    versions.insert(name.to_string(), Some(version.to_string()));
                }
            }
            return Ok((versions, None));
        }
    }
    Ok((versions, Some(held)))
}

fn candidate_version(
    cx: &Context<'_>,
    manager: Manager,
    name: &str,
) -> Result<Option<String>, ProviderError> {
    if cx.session.index_stale.get() {
        refresh_index(cx, manager)?;
    }
    let mut cache = cx.session.candidates.borrow_mut();
    if let Some(known) = cache.as_ref()
        && let Some(version) = known.get(name)
    {
        return Ok(version.clone());
    }
    let host = cx.host;
    let mut found = BTreeMap::new();
    match manager {
        Manager::Apt => {
            let output = host.run(
                &CommandSpec::new(["apt-cache", "policy", name]).timeout(Duration::from_secs(120)),
            )?;
            let candidate = output
                .stdout
                .lines()
                .find_map(|line| line.trim().strip_prefix("Candidate:"))
                .map(str::trim)
                .filter(|v| *v != "(none)")
                .map(str::to_string);
            found.insert(name.to_string(), candidate);
        }
        Manager::Dnf => {
            let output = host.run(
                &dnf_command(
                    host,
                    &[
                        "-q",
                        "repoquery",
                        "--latest-limit",
                        "1",
                        "--qf",
                        "%{version}-%{release}\n",
                        name,
                    ],
                )
                .timeout(Duration::from_secs(300)),
            )?;
            found.insert(
                name.to_string(),
                output
                    .stdout
                    .lines()
                    .next()
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty()),
            );
        }
    }
    let result = found.get(name).cloned().flatten();
    cache.get_or_insert_with(BTreeMap::new).extend(found);
    Ok(result)
}

fn dnf_command(host: &Host, args: &[&str]) -> CommandSpec {
    let mut argv = vec!["dnf".to_string(), "-y".into()];
    if host.root() != std::path::Path::new("/") {
        argv.push(format!("--installroot={}", host.root().display()));
    }
    argv.extend(args.iter().map(|a| a.to_string()));
    CommandSpec::new(argv)
}

fn apt_command(args: &[&str], packages: &[String]) -> CommandSpec {
    let mut argv: Vec<String> = vec![
        "apt-get".into(),
        "-y".into(),
        "-q".into(),
        // Keep the configuration files the role manages; never ask.
        "-o".into(),
        "Dpkg::Options::=--force-confdef".into(),
        "-o".into(),
        "Dpkg::Options::=--force-confold".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.extend(packages.iter().cloned());
    let mut spec = CommandSpec::new(argv).timeout(PACKAGE_TIMEOUT);
    spec.environment
        .insert("DEBIAN_FRONTEND".into(), "noninteractive".into());
    spec
}

fn refresh_index(cx: &Context<'_>, manager: Manager) -> Result<(), ProviderError> {
    let spec = match manager {
        Manager::Apt => apt_command(&["update"], &[]),
        Manager::Dnf => dnf_command(cx.host, &["makecache", "--refresh"]).timeout(PACKAGE_TIMEOUT),
    };
    let output = cx.host.run(&spec)?;
    let fetch_failures = fetch_failures(&output);
    check_output(&spec, output)?;
    cx.session.index_stale.set(false);
    *cx.session.candidates.borrow_mut() = None;
    *cx.session.index_fetch_failures.borrow_mut() = fetch_failures;
    Ok(())
}

/// The lines in which a refresh of the index says a source could not be
/// fetched: apt-get update treats an unreachable source as transient, warns
/// (`W: Failed to fetch …`) and keeps the old index, exiting 0.
fn fetch_failures(output: &CommandOutput) -> Vec<String> {
    output
        .stdout
        .lines()
        .chain(output.stderr.lines())
        .map(str::trim)
        .filter(|line| {
            line.starts_with("W: Failed to fetch") || line.starts_with("E: Failed to fetch")
        })
        .map(str::to_string)
        .collect()
}

fn install_packages(
    cx: &Context<'_>,
    manager: Manager,
    packages: &[String],
) -> Result<(), ProviderError> {
    if cx.session.index_stale.get() {
        refresh_index(cx, manager)?;
    }
    let spec = match manager {
        Manager::Apt => apt_command(&["install", "--allow-downgrades"], packages),
        Manager::Dnf => {
            let mut args = vec!["install"];
            args.extend(packages.iter().map(String::as_str));
            dnf_command(cx.host, &args).timeout(PACKAGE_TIMEOUT)
        }
    };
    let output = cx.host.run(&spec)?;
    let not_found_in_index = !output.success()
        && [
            "Unable to locate package",
            "has no installation candidate",
            "Version '",
            "Unable to find a match",
            "No match for argument",
        ]
        .iter()
        .any(|symptom| output.stderr.contains(symptom) || output.stdout.contains(symptom));
    if not_found_in_index {
        // A fresh image often has no package lists yet, and a repository
        // may have gained a version since they were read: refresh once and
        // try again.
        refresh_index(cx, manager)?;
        return check_output(&spec, cx.host.run(&spec)?).map_err(|error| {
            let failures = cx.session.index_fetch_failures.borrow();
            match error {
                ProviderError::Failed(message) if !failures.is_empty() => {
                    ProviderError::Failed(format!(
                        "{message}\nthe package index was refreshed without these sources, \
                         which could not be fetched:\n{}",
                        failures.join("\n")
                    ))
                }
                error => error,
            }
        });
    }
    check_output(&spec, output)
}

fn run_manager(
    cx: &Context<'_>,
    manager: Manager,
    action: &str,
    packages: &[String],
) -> Result<(), ProviderError> {
    let spec = match manager {
        Manager::Apt => apt_command(&[action], packages),
        Manager::Dnf => {
            let mut args = vec!["remove"];
            args.extend(packages.iter().map(String::as_str));
            dnf_command(cx.host, &args).timeout(PACKAGE_TIMEOUT)
        }
    };
    check_output(&spec, cx.host.run(&spec)?)
}

/// The command as an error names it: without the `-o Dpkg::Options::=…`
/// pairs every apt command carries.
fn shown_command(argv: &[String]) -> String {
    let mut shown: Vec<&str> = Vec::new();
    let mut arguments = argv.iter().peekable();
    while let Some(argument) = arguments.next() {
        if argument == "-o"
            && arguments
                .peek()
                .is_some_and(|next| next.starts_with("Dpkg::"))
        {
            arguments.next();
            continue;
        }
        shown.push(argument);
    }
    shown.join(" ")
}

fn check_output(spec: &CommandSpec, output: CommandOutput) -> Result<(), ProviderError> {
    if output.success() {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "`{}` failed ({}):\n{}",
            shown_command(&spec.argv),
            output
                .code
                .map_or("killed".to_string(), |c| format!("status {c}")),
            output.tail(15)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_apt_command_leaves_out_the_dpkg_options_and_their_flags() {
        let spec = apt_command(&["install", "--allow-downgrades"], &["nginx=1.2".into()]);
        assert_eq!(
            shown_command(&spec.argv),
            "apt-get -y -q install --allow-downgrades nginx=1.2"
        );
        let other = ["apt-get", "-o", "Acquire::Retries=3", "update"].map(String::from);
        assert_eq!(
            shown_command(&other),
            "apt-get -o Acquire::Retries=3 update"
        );
    }

    #[test]
    fn the_sources_a_refresh_could_not_fetch_are_read_from_its_warnings() {
        let output = CommandOutput {
            code: Some(0),
            stdout: "Err:1 http://10.0.0.1:1 ./ InRelease\n  Could not connect\nReading package lists...\n".into(),
            stderr: "W: Failed to fetch http://10.0.0.1:1/./InRelease  Could not connect to 10.0.0.1:1\n\
                     W: Some index files failed to download. They have been ignored, or old ones used instead.\n\
                     W: Target Packages (Packages) is configured multiple times\n"
                .into(),
        };
        assert_eq!(
            fetch_failures(&output),
            ["W: Failed to fetch http://10.0.0.1:1/./InRelease  Could not connect to 10.0.0.1:1"]
        );
    }
}
