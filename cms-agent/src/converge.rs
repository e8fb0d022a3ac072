//! The converge engine: apply a catalog to a host, resource by resource, in
//! catalog order.
//!
//! For each resource: skip it if something it requires (or something that
//! notifies it) failed; otherwise check, and apply what differs. A resource
//! that changed queues a refresh of the resources it notifies; since the
//! compiler orders every notifier before its target, a target is refreshed
//! once, when the engine reaches it, after all its notifiers ran. A failure
//! never stops the run: independent resources still converge, and the
//! report says what failed and what was skipped because of it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cms_modules::package::{PackageProvider, apply_batch};
use cms_modules::{BackupStore, Change, Context, Host, Provider, Restarts, Session, provider};
use cms_roles::{Catalog, Package, ResourceKind, is_path_type};

use crate::clock;
use crate::report::{ResourceResult, RunReport, Status};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct ConvergeOptions {
    /// Check and report, change nothing.
    pub noop: bool,
    /// A name for the run in its report.
    pub run_id: String,
    /// What earlier runs of this process learned of the package database
    /// (a daemon keeps it from run to run); `None` asks afresh.
    pub package_memory: Option<std::sync::Arc<cms_modules::package::PackageMemory>>,
}

/// Converges `catalog` onto `host` and reports every resource.
pub fn converge(
    catalog: &Catalog,
    host: &Host,
    backups: &BackupStore,
    options: &ConvergeOptions,
    restarts: &dyn Restarts,
) -> RunReport {
    let started = clock::instant();
    let started_at_unix_ms = clock::unix_ms();
    let managed_paths: BTreeSet<String> = catalog
        .resources
        .iter()
        .filter(|r| is_path_type(r.kind.type_name()))
        .map(|r| r.kind.name().to_string())
        .collect();
    let package_names = catalog
        .resources
        .iter()
        // Each provider names the packages it reads (a Java application's
        // runtime is read in the same query as the packages).
        .flat_map(|r| cms_modules::packages_of(&r.kind))
        .collect();
    let session = Session::new(package_names).remembering(options.package_memory.clone());
    let context = Context {
        host,
        contents: &catalog.contents,
        backups,
        managed_paths: &managed_paths,
        session: &session,
        restarts,
        sensitive: false,
    };
    // Results of packages installed together with an earlier one.
    let mut batched: HashMap<&str, Result<Vec<Change>, String>> = HashMap::new();
    // Who notifies whom, looked up when the engine reaches the target.
    let mut notifiers: HashMap<&str, Vec<&str>> = HashMap::new();
    for resource in &catalog.resources {
        for target in &resource.notify {
            notifiers
                .entry(target.as_str())
                .or_default()
                .push(resource.reference.as_str());
        }
    }
    if !options.noop {
        remove_stale_temporary_files(host, catalog);
    }
    let confined = host.root() != std::path::Path::new("/");
    let mut outcomes: BTreeMap<&str, Outcome> = BTreeMap::new();
    let mut results = Vec::with_capacity(catalog.resources.len());
    // Under --noop: the directories the real run would create, so that a
    // path below one is not predicted to fail on its missing parent.
    let mut would_create: HashSet<&str> = HashSet::new();
    for resource in &catalog.resources {
        let resource_started = clock::instant();
        let reference = resource.reference.as_str();
        let incoming: &[&str] = notifiers.get(reference).map(Vec::as_slice).unwrap_or(&[]);
        let blocker = resource
            .require
            .iter()
            .map(String::as_str)
            .chain(incoming.iter().copied())
            .find(|dependency| {
                outcomes
                    .get(dependency)
                    .is_some_and(|o| o.blocks_dependents)
            });
        let mut result = ResourceResult {
            reference: reference.to_string(),
            status: Status::Unchanged,
            changes: Vec::new(),
            not_done: Vec::new(),
            refresh: None,
            error: None,
            reason: None,
            duration_ms: 0.0,
        };
        let mut blocks_dependents = false;
        if let Some(blocker) = blocker {
            result.status = Status::Skipped;
            result.reason = Some(format!("{blocker} failed or was skipped"));
            blocks_dependents = true;
        } else if confined && !is_path_type(resource.kind.type_name()) {
            // Under --root only files are confined; packages, services and
            // commands would act on the real machine.
            result.status = Status::Skipped;
            result.reason = Some(format!(
                "not applied under --root {}: only file, directory and symlink resources stay inside a root",
                host.root().display()
            ));
        } else {
            let context = Context {
                sensitive: resource.sensitive,
                ..context
            };
            let provider = provider(&resource.kind);
            if let ResourceKind::Package(_) = &resource.kind
                && !batched.contains_key(reference)
            {
                let index = results.len();
                batch_packages(
                    catalog,
                    index,
                    &outcomes,
                    &context,
                    options.noop,
                    &mut batched,
                );
            }
            let notified = incoming
                .iter()
                .any(|n| outcomes.get(n).is_some_and(|o| o.changed));
            match batched.remove(reference) {
                Some(Ok(changes)) => {
                    if !changes.is_empty() {
                        result.status = Status::Changed;
                        result.changes = changes;
                    }
                }
                Some(Err(error)) => {
                    result.status = Status::Failed;
                    result.error = Some(if resource.sensitive {
                        cms_modules::withheld_error()
                    } else {
                        error
                    });
                }
                None => run_resource(
                    &*provider,
                    &context,
                    options.noop,
                    notified,
                    &resource.kind,
                    &mut result,
                ),
            }
            if options.noop && is_path_type(resource.kind.type_name()) {
                predict_missing_parent(
                    host,
                    &resource.kind,
                    resource.sensitive,
                    &mut would_create,
                    &mut result,
                );
            }
            if result.status == Status::Changed
                && !options.noop
                && is_path_type(resource.kind.type_name())
            {
                // A unit file, or a link masking one, changed.
                session.file_changed(resource.kind.name());
            }
            blocks_dependents = result.status == Status::Failed;
            if resource.sensitive {
                redact(&mut result, options.noop);
            }
        }
        result.duration_ms = resource_started.elapsed().as_secs_f64() * 1000.0;
        outcomes.insert(
            reference,
            Outcome {
                changed: result.status == Status::Changed,
                blocks_dependents,
            },
        );
        results.push(result);
    }
    RunReport {
        run_id: options.run_id.clone(),
        catalog_id: catalog.catalog_id.clone(),
        roles: catalog.roles.clone(),
        noop: options.noop,
        started_at_unix_ms,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        summary: RunReport::summarize(&results),
        resources: results,
    }
}

/// Checks the run of consecutive package resources that starts at `start`
/// and applies all their changes in one transaction, so that a role's ten
/// packages cost one `apt-get install`, not ten. Packages whose
/// dependencies failed are left for the main loop to skip.
fn batch_packages<'c>(
    catalog: &'c Catalog,
    start: usize,
    outcomes: &BTreeMap<&str, Outcome>,
    context: &Context<'_>,
    noop: bool,
    batched: &mut HashMap<&'c str, Result<Vec<Change>, String>>,
) {
    let mut members: Vec<(&'c str, &'c Package)> = Vec::new();
    for resource in &catalog.resources[start..] {
        let ResourceKind::Package(package) = &resource.kind else {
            break;
        };
        let blocked = resource.require.iter().any(|r| {
            outcomes
                .get(r.as_str())
                .is_some_and(|o| o.blocks_dependents)
        });
        if blocked {
            break;
        }
        members.push((resource.reference.as_str(), package));
    }
    let mut checked: Vec<(&str, &Package, Vec<Change>)> = Vec::new();
    for (reference, package) in members {
        match PackageProvider(package).check(context) {
            Ok(changes) => checked.push((reference, package, changes)),
            Err(error) => {
                batched.insert(reference, Err(cms_modules::error_text(&error)));
            }
        }
    }
    let outcome = if noop {
        Ok(())
    } else {
        let work: Vec<(&Package, &[Change])> = checked
            .iter()
            .filter(|(_, _, c)| !c.is_empty())
            .map(|(_, p, c)| (*p, c.as_slice()))
            .collect();
        if work.is_empty() {
            Ok(())
        } else {
            // Packages bring and take unit files; systemd must see them
            // before the next service action.
            context.session.packages_changed();
            apply_batch(&work, context).map_err(|e| cms_modules::error_text(&e))
        }
    };
    for (reference, _, changes) in checked {
        let result = match &outcome {
            Err(error) if !changes.is_empty() => Err(error.clone()),
            _ => Ok(changes),
        };
        batched.insert(reference, result);
    }
}

/// Under --noop, what the real run of a path resource that would create
/// its path will find: a parent directory that neither exists nor is
/// created earlier in the run fails the real run, so the prediction is that
/// failure, with the real run's message, instead of "would change".
fn predict_missing_parent<'c>(
    host: &Host,
    kind: &'c ResourceKind,
    sensitive: bool,
    would_create: &mut HashSet<&'c str>,
    result: &mut ResourceResult,
) {
    let creates = result
        .changes
        .iter()
        .any(|c| c.attribute == "ensure" && c.from == "absent" && c.to != "absent");
    if result.status != Status::Changed || !creates {
        return;
    }
    let path = kind.name();
    let parent = cms_modules::host::fs::parent_path(path);
    if !would_create.contains(parent)
        && let Err(error) = cms_modules::require_parent_directory(host, path)
    {
        result.status = Status::Failed;
        result.error = Some(cms_modules::report_error(&error, sensitive));
        return;
    }
    if matches!(kind, ResourceKind::Directory(_)) {
        would_create.insert(path);
    }
}

/// After a failed apply: which of the planned `changes` were made before
/// the failure (a check no longer finds them) and which were not. A check
/// that fails too leaves every change not done: nothing is claimed that
/// cannot be seen.
fn split_done(
    provider: &dyn Provider,
    context: &Context<'_>,
    changes: Vec<Change>,
) -> (Vec<Change>, Vec<Change>) {
    if changes.len() < 2 {
        // One change failed is one change not made; a second check would
        // only run an exec's guards again.
        return (Vec::new(), changes);
    }
    match provider.check(context) {
        Ok(still) => changes
            .into_iter()
            .partition(|c| !still.iter().any(|s| s.attribute == c.attribute)),
        Err(_) => (Vec::new(), changes),
    }
}

/// Takes every value out of a sensitive resource's result, whatever its
/// type: the one place where redaction happens, before the result reaches
/// the output, `--format json`, the logs, `last_run.json`, the report sent
/// to the server and the metrics. Changes keep their attribute names
/// ([`cms_modules::redact_changes`]); a refresh says only that it happened.
/// Errors were already made safe where they were turned into text
/// ([`cms_modules::report_error`]).
fn redact(result: &mut ResourceResult, noop: bool) {
    cms_modules::redact_changes(&mut result.changes);
    cms_modules::redact_changes(&mut result.not_done);
    if result.refresh.is_some() {
        result.refresh = Some(cms_modules::redacted_refresh(noop));
    }
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    changed: bool,
    blocks_dependents: bool,
}

fn run_resource(
    provider: &dyn Provider,
    context: &Context<'_>,
    noop: bool,
    notified: bool,
    kind: &ResourceKind,
    result: &mut ResourceResult,
) {
    let changes = match provider.check(context) {
        Ok(changes) => changes,
        Err(error) => {
            result.status = Status::Failed;
            result.error = Some(cms_modules::report_error(&error, context.sensitive));
            return;
        }
    };
    if !changes.is_empty() {
        if !noop && let Err(error) = provider.apply(&changes, context) {
            result.status = Status::Failed;
            result.error = Some(cms_modules::report_error(&error, context.sensitive));
            (result.changes, result.not_done) = split_done(provider, context, changes);
            return;
        }
        result.status = Status::Changed;
        result.changes = changes;
    }
    if notified && !refreshed_by_its_own_change(&result.changes, kind) {
        if noop {
            match provider.refresh_description(context) {
                Ok(Some(description)) => {
                    result.refresh = Some(description);
                    result.status = Status::Changed;
                }
                Ok(None) => {}
                Err(error) => {
                    result.status = Status::Failed;
                    result.error = Some(cms_modules::report_error(&error, context.sensitive));
                }
            }
        } else {
            match provider.refresh(context) {
                Ok(Some(done)) => {
                    result.refresh = Some(done);
                    result.status = Status::Changed;
                }
                Ok(None) => {}
                Err(error) => {
                    result.status = Status::Failed;
                    result.error = Some(cms_modules::report_error(&error, context.sensitive));
                }
            }
        }
    }
}

/// A service this run started, or a Java application it restarted, needs no
/// restart for the changes that notified it: it started with them. An exec that ran in this run has done
/// what a notification asks; it does not run twice. Each provider says which
/// of its changes count (`Provider::refreshed_by`).
fn refreshed_by_its_own_change(changes: &[Change], kind: &ResourceKind) -> bool {
    cms_modules::refreshed_by_own_change(kind, changes)
}

/// Removes the temporary files a killed run left next to managed paths:
/// in the directory of each file, directory and symlink resource, and in
/// each managed directory. Only the agent's own `.cms-tmp-<pid>-…` names
/// of processes that no longer run go; nothing is followed on the way.
/// A file or symlink resource's own path is no folder to sweep (a
/// temporary file is only ever written next to its target), so it is not
/// opened; the folders swept are the ones the checks then read from.
fn remove_stale_temporary_files(host: &Host, catalog: &Catalog) {
    let mut directories: BTreeSet<&str> = BTreeSet::new();
    for resource in &catalog.resources {
        if !is_path_type(resource.kind.type_name()) {
            continue;
        }
        let path = resource.kind.name();
        directories.insert(cms_modules::host::fs::parent_path(path));
        if matches!(resource.kind, ResourceKind::Directory(_)) {
            directories.insert(path);
        }
    }
    for directory in directories {
        // Best effort: a path that is not a directory removes nothing.
        host.remove_stale_temporary_files(directory);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use cms_modules::ProviderError;

    use super::*;
    use crate::report::EXIT_CHANGED_AND_FAILED;

    /// A resource of two steps that makes the first and fails on the
    /// second, as a Java application that created its user and folders and
    /// then failed on its release does.
    struct FailsOnTheSecondStep {
        first_done: Cell<bool>,
    }

    impl Provider for FailsOnTheSecondStep {
        fn check(&self, _cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
            let mut changes = Vec::new();
            if !self.first_done.get() {
                changes.push(Change::new("user", "absent", "present"));
            }
            changes.push(Change::new("release", "absent", "r2"));
            Ok(changes)
        }

        fn apply(&self, _changes: &[Change], _cx: &Context<'_>) -> Result<(), ProviderError> {
            self.first_done.set(true);
            Err(ProviderError::Failed("the release failed".into()))
        }

        fn packages(&self) -> Vec<String> {
            Vec::new()
        }

        fn refreshed_by(&self, _changes: &[Change]) -> bool {
            false
        }
    }

    #[test]
    fn a_resource_that_fails_half_way_reports_what_it_changed_and_what_it_did_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = Host::new(dir.path());
        let backups = BackupStore::open(dir.path().join("backups")).expect("backups");
        let contents = std::collections::BTreeMap::new();
        let managed_paths = BTreeSet::new();
        let session = Session::new(Vec::new());
        let context = Context {
            host: &host,
            contents: &contents,
            backups: &backups,
            managed_paths: &managed_paths,
            session: &session,
            restarts: &cms_modules::UNCOORDINATED,
            sensitive: false,
        };
        let provider = FailsOnTheSecondStep {
            first_done: Cell::new(false),
        };
        let kind = ResourceKind::Package(Package {
            name: "orders".into(),
            ensure: Default::default(),
            hold: Some(false),
        });
        let mut result = ResourceResult {
            reference: "java_app:orders".into(),
            status: Status::Unchanged,
            changes: Vec::new(),
            not_done: Vec::new(),
            refresh: None,
            error: None,
            reason: None,
            duration_ms: 0.0,
        };

        run_resource(&provider, &context, false, false, &kind, &mut result);

        assert_eq!(result.status, Status::Failed);
        assert_eq!(result.changes, [Change::new("user", "absent", "present")]);
        assert_eq!(result.not_done, [Change::new("release", "absent", "r2")]);
        let summary = RunReport::summarize(std::slice::from_ref(&result));
        assert_eq!((summary.failed, summary.failed_after_changes), (1, 1));
        let report = RunReport {
            run_id: "r".into(),
            catalog_id: "c".into(),
            roles: Vec::new(),
            noop: false,
            started_at_unix_ms: 0,
            duration_ms: 1.0,
            summary,
            resources: vec![result],
        };
        assert_eq!(report.exit_code(), EXIT_CHANGED_AND_FAILED);
        let mut text = Vec::new();
        crate::output::write_text(&mut text, &report, crate::output::Colour::Never)
            .expect("writes");
        assert_eq!(
            String::from_utf8(text).expect("utf-8"),
            "failed java_app:orders\n    done: user: absent -> present\n    not done: release: absent -> r2\n    the release failed\nsummary: 1 resources, 0 changed, 0 unchanged, 1 failed (1 after changing something), 0 skipped in 1 ms\n"
        );
    }
}
