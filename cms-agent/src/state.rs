//! The agent's state directory: the last run's report, the last good
//! catalog, and the queue of reports the server has not acknowledged yet.
//! Everything is written owner-only through a temporary file and a rename,
//! so a reader, or a failed write, never sees half a file, and the last
//! good state is never lost to a failed write.
//!
//! What must survive a crash of the machine is also fsynced ([`Durability`]):
//! the catalog, and the report of a run that changed something or failed,
//! both in the queue and in `last_run.json`. The report of a run that found
//! nothing to do is written without fsync, so the periodic check flushes
//! nothing to disk: it is sent to the server at once, and made durable only
//! when that fails ([`ReportQueue::make_durable`]). A crash of the machine
//! in the few milliseconds between the run and its delivery can lose that
//! report (and then only that one: the machine is as the previous report
//! said, and the next run reports again); the agent being killed cannot,
//! since the file is written before the delivery and the kernel keeps it.
//!
//! The state holds values (the cached catalog and contents carry rendered
//! secrets): a folder or file of it found wider than owner-only (made by an
//! older agent, or by hand) is narrowed when the agent next uses it
//! ([`narrow_to_owner`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cms_roles::Catalog;

use crate::report::RunReport;

/// Creates the agent's state folders owner-only (0700): they hold the
/// node's private key, its catalog (with secrets) and backups. One that
/// exists wider is narrowed to 0700.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("Failed to create the state directory {}", dir.display()))?;
    narrow_to_owner(dir)
}

/// Takes the group and other permission bits away from `path` (a folder
/// becomes 0700 at most, a file 0600 at most) when it has any. Nothing
/// there is fine; a symlink is left alone (never followed).
pub fn narrow_to_owner(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(error).with_context(|| format!("Failed to inspect {}", path.display()));
        }
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if metadata.file_type().is_symlink() || mode & 0o077 == 0 {
        return Ok(());
    }
    let narrowed = if metadata.is_dir() {
        0o700
    } else {
        mode & 0o700 & !0o100
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(narrowed))
        .with_context(|| format!("Failed to make {} owner-only", path.display()))
}

/// Whether a state file must survive a crash of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Temporary file, fsync, rename, fsync of the folder: after a crash
    /// the new content is there.
    Durable,
    /// Temporary file and rename, no fsync: readers see the old content or
    /// the new, never half; after a crash of the machine the file may hold
    /// the older content (or, on a filesystem that does not write data
    /// before a rename, nothing).
    Atomic,
}

impl Durability {
    /// What a run's report needs: durable when the run changed something
    /// or failed, atomic when it found nothing to do.
    pub fn of_report(report: &RunReport) -> Durability {
        if report.found_nothing_to_do() {
            Durability::Atomic
        } else {
            Durability::Durable
        }
    }
}

/// Writes `bytes` to `path` owner-only (0600), atomically and durably.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_private(path, bytes, Durability::Durable)
}

/// Writes `bytes` to `path` owner-only (0600), atomically; fsynced when
/// `durability` says so.
pub fn write_private(path: &Path, bytes: &[u8], durability: Durability) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let directory = path.parent().context("a state file has a folder")?;
    create_private_dir(directory)?;
    let file_name = path
        .file_name()
        .context("a state file has a name")?
        .to_string_lossy();
    let temporary = directory.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        if durability == Durability::Durable {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)?;
        if durability == Durability::Durable {
            std::fs::File::open(directory)?.sync_all()?;
        }
        Ok(())
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
        .with_context(|| format!("Failed to write {}", path.display()))
}

/// Writes `last_run.json`: fsynced when the run changed something or
/// failed, not when it found nothing to do ([`Durability::of_report`]).
pub fn save_report(state_dir: &Path, report: &RunReport) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(report).context("Failed to encode the run report")?;
    write_private(
        &state_dir.join("last_run.json"),
        &bytes,
        Durability::of_report(report),
    )
}

/// Records a finished run: queues its report for the server first, so
/// nothing written after it (a full disk, a `last_run.json` that cannot be
/// replaced) can keep the server from learning of the run; then writes
/// `last_run.json`, whose failure is only a warning. Only a failure to
/// queue is an error. Returns where the report is queued, and whether it
/// is durable yet: the report of a run that found nothing to do is not
/// ([`Durability::of_report`]), and the caller makes it durable with
/// [`ReportQueue::make_durable`] if delivering it fails.
pub fn record_run(
    state_dir: &Path,
    queue: &ReportQueue,
    report: &RunReport,
    revision: &str,
    note: Option<&str>,
    trigger_id: &str,
) -> anyhow::Result<(PathBuf, Durability)> {
    let durability = Durability::of_report(report);
    let queued = queue.write(
        QueuedReport {
            report: report.clone(),
            revision: revision.to_string(),
            note: note.map(str::to_string),
            trigger_id: trigger_id.to_string(),
        },
        durability,
    )?;
    if let Err(error) = save_report(state_dir, report) {
        eprintln!("warning: {error:#}; the report is queued for the server all the same");
    }
    Ok((queued, durability))
}

/// The last catalog that was fetched and verified, for converging while the
/// server is away.
#[derive(Debug, Clone)]
pub struct CatalogCache {
    path: PathBuf,
}

impl CatalogCache {
    /// The cache in `state_dir`. A cached catalog (or one set aside) left
    /// wider than 0600 by an older agent is narrowed: it holds the
    /// rendered values of secrets.
    pub fn new(state_dir: &Path) -> CatalogCache {
        let cache = CatalogCache {
            path: state_dir.join("catalog.json"),
        };
        for path in [
            state_dir.to_path_buf(),
            cache.path.clone(),
            cache.path.with_extension("json.corrupt"),
        ] {
            if let Err(error) = narrow_to_owner(&path) {
                eprintln!("warning: {error:#}");
            }
        }
        cache
    }

    pub fn save(&self, catalog: &Catalog) -> anyhow::Result<()> {
        write_private_atomically(&self.path, &catalog.canonical_bytes())
    }

    /// The cached catalog, checked against its id; `None` when there is
    /// none. A cache that fails its check is an error: the operator must
    /// learn that the disk lies. Runs use [`CatalogCache::load_or_set_aside`].
    pub fn load(&self) -> anyhow::Result<Option<Catalog>> {
        let Some(bytes) = self.read()? else {
            return Ok(None);
        };
        self.verify(&bytes).map(Some)
    }

    /// The cached catalog for a run. One that fails its check (a torn
    /// write, a bad disk, an edit) is moved aside to `catalog.json.corrupt`
    /// (replacing an older one there) and the run goes on without a cache,
    /// so it pulls a fresh catalog instead of failing forever; the second
    /// value says what happened, for the run's report. A cache that cannot
    /// be read at all is still an error.
    pub fn load_or_set_aside(&self) -> anyhow::Result<(Option<Catalog>, Option<String>)> {
        let Some(bytes) = self.read()? else {
            return Ok((None, None));
        };
        let error = match self.verify(&bytes) {
            Ok(catalog) => return Ok((Some(catalog), None)),
            Err(error) => error,
        };
        let aside = self.path.with_extension("json.corrupt");
        std::fs::rename(&self.path, &aside).with_context(|| {
            format!(
                "{error:#}; and failed to move it aside to {}",
                aside.display()
            )
        })?;
        let note = format!(
            "{error:#}; it was moved aside to {} and a fresh catalog is pulled",
            aside.display()
        );
        eprintln!("warning: {note}");
        Ok((None, Some(note)))
    }

    fn read(&self) -> anyhow::Result<Option<Vec<u8>>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => {
                Err(error).with_context(|| format!("Failed to read {}", self.path.display()))
            }
        }
    }

    fn verify(&self, bytes: &[u8]) -> anyhow::Result<Catalog> {
        Catalog::from_canonical_bytes(bytes).with_context(|| {
            format!(
                "Failed to verify the cached catalog {}",
                self.path.display()
            )
        })
    }
}

/// Removes the temporary files a killed run of this agent left in the
/// state directory and its report queue (`.<name>.<pid>.tmp`, written by
/// [`write_private_atomically`], when process `pid` no longer runs). They
/// can hold a catalog with secrets. Links and directories are never
/// followed or removed. Returns how many went.
pub fn remove_stale_temporary_files(state_dir: &Path) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let own_pid = std::process::id();
    let mut removed = 0;
    for dir in [state_dir.to_path_buf(), state_dir.join("reports")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = temporary_file_pid(&name.to_string_lossy()) else {
                continue;
            };
            let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
            if pid != own_pid
                && is_file
                && !Path::new(&format!("/proc/{pid}")).exists()
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// The pid in a temporary name `.<name>.<pid>.tmp`.
fn temporary_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, pid) = rest.rsplit_once('.')?;
    pid.parse().ok()
}

/// Run reports waiting for the server's acknowledgement, one file each,
/// oldest first. A report leaves the queue only when the server has stored
/// it, so none is lost across a restart of either side.
#[derive(Debug, Clone)]
pub struct ReportQueue {
    dir: PathBuf,
}

impl ReportQueue {
    pub fn new(state_dir: &Path) -> ReportQueue {
        ReportQueue {
            dir: state_dir.join("reports"),
        }
    }

    /// Queues a report; returns where it is kept.
    pub fn enqueue(&self, report: &RunReport) -> anyhow::Result<PathBuf> {
        self.enqueue_with(report, "", None)
    }

    /// Queues the report of a run a fleet trigger asked for.
    pub fn enqueue_for_trigger(
        &self,
        report: &RunReport,
        revision: &str,
        note: Option<&str>,
        trigger_id: &str,
    ) -> anyhow::Result<PathBuf> {
        self.write(
            QueuedReport {
                report: report.clone(),
                revision: revision.to_string(),
                note: note.map(str::to_string),
                trigger_id: trigger_id.to_string(),
            },
            Durability::Durable,
        )
    }

    /// Queues a report with the revision its catalog came from and a note
    /// (why it did not use a fresh catalog).
    pub fn enqueue_with(
        &self,
        report: &RunReport,
        revision: &str,
        note: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        self.write(
            QueuedReport {
                report: report.clone(),
                revision: revision.to_string(),
                note: note.map(str::to_string),
                trigger_id: String::new(),
            },
            Durability::Durable,
        )
    }

    fn write(&self, queued: QueuedReport, durability: Durability) -> anyhow::Result<PathBuf> {
        let report = &queued.report;
        let bytes = serde_json::to_vec(&queued).context("Failed to encode the run report")?;
        // Start time first, so names sort oldest first.
        let path = self.dir.join(format!(
            "{:020}-{}.json",
            report.started_at_unix_ms,
            sanitize(&report.run_id)
        ));
        write_private(&path, &bytes, durability)?;
        Ok(path)
    }

    /// Flushes a report queued without fsync ([`Durability::Atomic`]) to
    /// disk, with the folder's entry: its delivery failed, so it must now
    /// survive a crash until the server takes it. A report already
    /// delivered (the file is gone) needs nothing.
    pub fn make_durable(&self, path: &Path) -> anyhow::Result<()> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(error).with_context(|| format!("Failed to open {}", path.display()));
            }
        };
        file.sync_all()
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all())
            .with_context(|| format!("Failed to flush {} to disk", path.display()))
    }

    /// Every queued report, oldest first. A file that does not decode is
    /// moved aside to `<name>.corrupt` and reported, never dropped silently.
    pub fn pending(&self) -> anyhow::Result<Vec<(PathBuf, QueuedReport)>> {
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("Failed to list {}", self.dir.display()));
            }
        };
        paths.sort();
        let mut reports = Vec::new();
        for path in paths {
            let decoded = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| {
                    serde_json::from_slice::<QueuedReport>(&bytes).map_err(anyhow::Error::from)
                });
            match decoded {
                Ok(report) => reports.push((path, report)),
                Err(error) => {
                    let aside = path.with_extension("json.corrupt");
                    eprintln!(
                        "warning: queued report {} does not decode ({error:#}); kept as {}",
                        path.display(),
                        aside.display()
                    );
                    let _ = std::fs::rename(&path, &aside);
                }
            }
        }
        Ok(reports)
    }

    /// The queued reports as the contract carries them.
    pub fn pending_proto(&self) -> anyhow::Result<Vec<(PathBuf, cms_proto::v1::RunReport)>> {
        Ok(self
            .pending()?
            .into_iter()
            .map(|(path, queued)| {
                let mut proto = crate::report::to_proto(
                    &queued.report,
                    &queued.revision,
                    queued.note.as_deref(),
                );
                proto.trigger_id = queued.trigger_id;
                (path, proto)
            })
            .collect())
    }

    /// The server refused it for good (`why`): kept aside as
    /// `<name>.json.refused`, out of the queue, with a log line; never
    /// dropped.
    pub fn set_aside(&self, path: &Path, why: &str) -> anyhow::Result<()> {
        let aside = path.with_extension("json.refused");
        eprintln!(
            "warning: the server refused queued report {} for good ({why}); kept as {}",
            path.display(),
            aside.display()
        );
        std::fs::rename(path, &aside)
            .with_context(|| format!("Failed to set {} aside", path.display()))
    }

    /// The server stored it: drop it from the queue. The removal is not
    /// fsynced: should a crash bring the file back, the report is sent
    /// again, and the server stores a run id once (it answers a repeat as
    /// stored, and the file goes then).
    pub fn acknowledge(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::remove_file(path).with_context(|| format!("Failed to remove {}", path.display()))
    }
}

/// A queued report and what the server needs besides it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueuedReport {
    pub report: RunReport,
    pub revision: String,
    pub note: Option<String>,
    /// The fleet trigger that asked for the run, if any.
    #[serde(default)]
    pub trigger_id: String,
}

fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{RunReport, Summary};

    fn report(run_id: &str, started: u64) -> RunReport {
        RunReport {
            run_id: run_id.into(),
            catalog_id: "c".into(),
            roles: vec![],
            noop: false,
            started_at_unix_ms: started,
            duration_ms: 1.0,
            summary: Summary::default(),
            resources: vec![],
        }
    }

    #[test]
    fn queued_reports_survive_a_restart_and_leave_only_when_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = ReportQueue::new(dir.path());
        queue.enqueue(&report("second", 2000)).expect("enqueue");
        queue.enqueue(&report("first", 1000)).expect("enqueue");

        let reopened = ReportQueue::new(dir.path());
        let pending = reopened.pending().expect("pending");
        let ids: Vec<&str> = pending
            .iter()
            .map(|(_, q)| q.report.run_id.as_str())
            .collect();
        assert_eq!(ids, ["first", "second"]);
        reopened.acknowledge(&pending[0].0).expect("ack");
        let left: Vec<String> = reopened
            .pending()
            .expect("pending")
            .into_iter()
            .map(|(_, q)| q.report.run_id)
            .collect();
        assert_eq!(left, ["second"]);
    }

    #[test]
    fn a_corrupt_queued_report_is_kept_aside_not_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = ReportQueue::new(dir.path());
        queue.enqueue(&report("good", 1)).expect("enqueue");
        std::fs::write(
            dir.path().join("reports/00000000000000000000-bad.json"),
            "{truncated",
        )
        .expect("write");
        let pending = queue.pending().expect("pending");
        assert_eq!(pending.len(), 1);
        assert!(
            dir.path()
                .join("reports/00000000000000000000-bad.json.corrupt")
                .exists()
        );
    }

    #[test]
    fn a_run_whose_last_run_file_cannot_be_written_is_still_queued_for_the_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where last_run.json goes: the rename over it fails,
        // as a full disk or a read-only file would make it fail.
        std::fs::create_dir_all(dir.path().join("last_run.json/in-the-way")).expect("mkdir");
        let queue = ReportQueue::new(dir.path());

        let recorded = record_run(dir.path(), &queue, &report("run-1", 1), "rev", None, "");

        assert!(recorded.is_ok(), "{recorded:?}");
        let queued: Vec<String> = queue
            .pending()
            .expect("pending")
            .into_iter()
            .map(|(_, q)| q.report.run_id)
            .collect();
        assert_eq!(queued, ["run-1"], "record_run said {recorded:?}");
    }

    #[test]
    fn the_report_of_a_run_that_found_nothing_to_do_is_queued_and_made_durable_only_on_demand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = ReportQueue::new(dir.path());
        let mut changed = report("changed", 1);
        changed.summary.changed = 1;

        let (quiet, quiet_durability) =
            record_run(dir.path(), &queue, &report("quiet", 2), "rev", None, "").expect("queued");
        let (_, changed_durability) =
            record_run(dir.path(), &queue, &changed, "rev", None, "").expect("queued");

        assert_eq!(
            (quiet_durability, changed_durability),
            (Durability::Atomic, Durability::Durable)
        );
        let queued: Vec<String> = queue
            .pending()
            .expect("pending")
            .into_iter()
            .map(|(_, q)| q.report.run_id)
            .collect();
        assert_eq!(queued, ["changed", "quiet"], "both wait for the server");
        queue.make_durable(&quiet).expect("flushed");
        queue.acknowledge(&quiet).expect("acknowledged");
        queue
            .make_durable(&quiet)
            .expect("a report already delivered needs nothing");
    }

    #[test]
    fn a_corrupt_cached_catalog_is_set_aside_so_the_run_pulls_a_fresh_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CatalogCache::new(dir.path());
        let catalog = Catalog::new(vec!["base".into()], vec![], Default::default());
        cache.save(&catalog).expect("save");
        let text = std::fs::read(dir.path().join("catalog.json")).expect("read");
        // A write torn by a crash or a bad disk: half the file.
        std::fs::write(dir.path().join("catalog.json"), &text[..text.len() / 2]).expect("tear");

        let (loaded, note) = cache
            .load_or_set_aside()
            .expect("a damaged cache is no error");

        assert_eq!(loaded, None);
        let note = note.expect("the run says what happened");
        assert!(note.contains("catalog.json.corrupt"), "{note}");
        assert_eq!(
            std::fs::read(dir.path().join("catalog.json.corrupt")).expect("kept aside"),
            &text[..text.len() / 2]
        );
        assert!(!dir.path().join("catalog.json").exists());
        cache
            .save(&catalog)
            .expect("the fresh pull is cached again");
        assert_eq!(
            cache.load_or_set_aside().expect("loads"),
            (Some(catalog), None)
        );
    }

    #[test]
    fn temporary_files_of_a_killed_run_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("reports")).expect("mkdir");
        let mut finished = std::process::Command::new("true")
            .spawn()
            .expect("runs true");
        let dead_pid = finished.id();
        finished.wait().expect("waits");
        let stale = [
            format!(".catalog.json.{dead_pid}.tmp"),
            format!("reports/.00000000000000000001-run.json.{dead_pid}.tmp"),
        ];
        let kept = [
            // pid 1 runs; our own pid runs; not a temporary name.
            ".catalog.json.1.tmp".to_string(),
            format!(".catalog.json.{}.tmp", std::process::id()),
            "catalog.json".to_string(),
        ];
        for name in stale.iter().chain(&kept) {
            std::fs::write(dir.path().join(name), b"x").expect("writes");
        }
        // A link named like a stale temporary file, pointing at a file
        // outside: neither the link's target nor anything else goes.
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("precious"), b"keep").expect("writes");
        let link = dir.path().join(format!(".link.{dead_pid}.tmp"));
        std::os::unix::fs::symlink(outside.path().join("precious"), &link).expect("links");

        let removed = remove_stale_temporary_files(dir.path());

        assert_eq!(removed, 2);
        for name in &stale {
            assert!(!dir.path().join(name).exists(), "{name} removed");
        }
        for name in &kept {
            assert!(dir.path().join(name).exists(), "{name} kept");
        }
        assert!(outside.path().join("precious").exists());
    }

    #[test]
    fn the_catalog_cache_returns_what_was_saved_and_refuses_a_tampered_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CatalogCache::new(dir.path());
        assert!(cache.load().expect("no cache yet").is_none());
        let catalog = Catalog::new(vec!["base".into()], vec![], Default::default());
        cache.save(&catalog).expect("save");
        assert_eq!(cache.load().expect("loads"), Some(catalog));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("catalog.json"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(dir.path().join("catalog.json")).expect("read");
        std::fs::write(
            dir.path().join("catalog.json"),
            text.replace("base", "evil"),
        )
        .expect("tamper");
        assert!(cache.load().is_err());
    }

    #[test]
    fn a_cached_catalog_left_world_readable_by_an_older_agent_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let catalog = Catalog::new(Vec::new(), Vec::new(), Default::default());
        CatalogCache::new(&state).save(&catalog).expect("save");
        assert_eq!(
            (mode(&state), mode(&state.join("catalog.json"))),
            (0o700, 0o600)
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            state.join("catalog.json"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let cache = CatalogCache::new(&state);

        assert_eq!(
            (mode(&state), mode(&state.join("catalog.json"))),
            (0o700, 0o600)
        );
        assert_eq!(cache.load().unwrap(), Some(catalog));
    }
}
