//! The store on a full disk: each test mounts a small tmpfs (as root; it
//! skips with a message otherwise), puts the data directory on it, fills it
//! and frees it again, and checks what callers see: a write fails with the
//! disk's own cause, the store says it cannot write (what `/healthz`
//! reports), and writes work again by themselves once space returns,
//! without a restart. A start on the full disk fails with the cause and
//! leaves nothing that stops the next start.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cms_proto::report::RunRecord;
use cms_server::store::{NodeRecord, SharedStore, StoredReport};

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallDisk {
    /// `None` (and a message) when this process may not mount.
    fn mount(size: &str) -> Option<SmallDisk> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", mount.display());
        Some(SmallDisk { _dir: dir, mount })
    }

    fn path(&self) -> &Path {
        &self.mount
    }

    /// Fills the disk: one file grows until the disk refuses more.
    fn fill(&self) -> PathBuf {
        let path = self.mount.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            if let Err(error) = file.write_all(&chunk) {
                assert_eq!(error.raw_os_error(), Some(28), "{error}");
                break;
            }
        }
        // Whatever is left below a chunk, byte by byte.
        while file.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

/// Records built from JSON, as the store reads them: a field added later
/// (with its serde default) does not break these tests.
fn node(id: &str) -> NodeRecord {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "tags": {},
        "facts": {},
        "certificate_serial": "serial",
        "first_seen_unix_ms": 1,
        "last_seen_unix_ms": 1,
        "last_run": null,
        "status": "active",
    }))
    .expect("a node record")
}

/// A report of about 16 KiB, so that a few dozen fill a log segment.
fn report(run: u64) -> StoredReport {
    let record: RunRecord = serde_json::from_value(serde_json::json!({
        "run_id": format!("run-{run}"),
        "catalog_id": "catalog",
        "revision": "commit",
        "started_at_unix_ms": 1,
        "duration_ms": 1,
        "noop": false,
        "note": "x".repeat(16 * 1024),
        "resources": [],
    }))
    .expect("a run record");
    StoredReport {
        node_id: "n1".to_string(),
        run_id: format!("run-{run}"),
        received_unix_ms: 1_000 + run,
        report: record,
    }
}

/// Puts reports until one fails; returns the runs stored and the error.
fn write_until_refused(store: &SharedStore) -> (Vec<u64>, cms_server::store::StoreError) {
    let mut stored = Vec::new();
    for run in 0..100_000 {
        match store.put_report(&report(run)) {
            Ok(_) => stored.push(run),
            Err(error) => return (stored, error),
        }
    }
    panic!("100,000 reports fitted on a full disk");
}

#[test]
fn on_a_full_disk_writes_fail_with_the_cause_and_work_again_by_themselves_once_space_returns() {
    let Some(disk) = SmallDisk::mount("24m") else {
        return;
    };
    let db = disk.path().join("db");
    let store = cms_server::store::open(&db).expect("open the store");
    store.put_node(&node("n1")).unwrap();
    store
        .check_writable()
        .expect("writable before the disk fills");

    let filler = disk.fill();
    let (stored, error) = write_until_refused(&store);
    let message = cms_server::store::error_chain(&error);
    assert!(
        message.contains("No space left on device")
            && message.contains("the server's store cannot write")
            && message.contains(&db.display().to_string()),
        "{message}"
    );
    // Reads go on (agents still authenticate and get catalogs).
    assert_eq!(
        store.node("n1").unwrap().map(|n| n.id).as_deref(),
        Some("n1")
    );
    // What /healthz reports while the disk stays full.
    let unhealthy = store.check_writable().expect_err("unhealthy while full");
    assert!(
        cms_server::store::error_chain(&unhealthy).contains("No space left on device"),
        "{unhealthy}"
    );
    assert!(store.put_report(&report(1_000_000)).is_err());

    std::fs::remove_file(&filler).unwrap();
    // Space is back: writes work without a restart, and the health check
    // turns healthy by itself.
    store.check_writable().expect("healthy once space returns");
    store
        .put_report(&report(2_000_000))
        .expect("a write after space returned");
    for run in &stored {
        assert!(
            store.report("n1", &format!("run-{run}")).unwrap().is_some(),
            "acknowledged report run-{run} lost"
        );
    }
    drop(store);
    let reopened = cms_server::store::open(&db).expect("reopen after the fault");
    for run in stored.iter().chain([&2_000_000]) {
        assert!(
            reopened
                .report("n1", &format!("run-{run}"))
                .unwrap()
                .is_some(),
            "acknowledged report run-{run} lost across a restart"
        );
    }
}

#[test]
fn a_report_that_fits_on_a_nearly_full_disk_is_stored_though_the_zeros_laid_ahead_of_it_do_not() {
    let Some(disk) = SmallDisk::mount("24m") else {
        return;
    };
    let db = disk.path().join("db");
    let store = cms_server::store::open(&db).expect("open the store");
    store.put_node(&node("n1")).unwrap();
    // The first report lays the log's zeros a megabyte ahead.
    store.put_report(&report(0)).unwrap();
    let filler = disk.fill();
    // Room for a frame that passes the zeros by about 120 KiB, not for the
    // next megabyte of zeros.
    let free = 320 * 1024;
    let filled = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(filled - free)
        .unwrap();
    let mut large = report(1);
    large.report.note = "y".repeat(1024 * 1024 + 100 * 1024);
    store
        .put_report(&large)
        .expect("a report that fits is stored on a nearly full disk");
    // The zeros that did not fit were given back: the rest of the free
    // space is still there for sled and the other files.
    std::fs::write(disk.path().join("after"), vec![0u8; 128 * 1024])
        .expect("the space the report did not use is free");
    drop(store);
    // Opening sled needs room of its own.
    std::fs::remove_file(&filler).unwrap();
    let reopened = cms_server::store::open(&db).expect("reopen");
    let read = reopened
        .report("n1", "run-1")
        .unwrap()
        .expect("the report survives a restart");
    assert_eq!(read.report.note.len(), large.report.note.len());
    assert!(reopened.report("n1", "run-0").unwrap().is_some());
}

#[test]
fn on_a_full_disk_a_write_that_recovers_by_itself_needs_no_health_check_first() {
    let Some(disk) = SmallDisk::mount("24m") else {
        return;
    };
    let store = cms_server::store::open(&disk.path().join("db")).expect("open the store");
    let filler = disk.fill();
    let (_, error) = write_until_refused(&store);
    assert!(
        cms_server::store::error_chain(&error).contains("No space left on device"),
        "{error}"
    );
    std::fs::remove_file(&filler).unwrap();
    store
        .put_node(&node("n2"))
        .expect("the first write after space returned");
    assert!(store.node("n2").unwrap().is_some());
}

#[test]
fn a_start_on_a_full_disk_fails_with_the_cause_and_the_next_start_after_space_returns_opens_the_store()
 {
    let Some(disk) = SmallDisk::mount("24m") else {
        return;
    };
    let db = disk.path().join("db");
    {
        let store = cms_server::store::open(&db).expect("open the store");
        store.put_node(&node("n1")).unwrap();
        for run in 0..50 {
            store.put_report(&report(run)).unwrap();
        }
    }
    let filler = disk.fill();
    // Starts while the disk is full, with a little more space each time
    // (4 KiB more per start, up to 1 MiB): each fails with the disk's
    // cause until one fits. Somewhere on the way sled gets as far as its
    // snapshot and leaves it unfinished, `snap.*.generating` (0 bytes).
    let filler_len = std::fs::metadata(&filler).unwrap().len();
    for step in 0..256u64 {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap()
            .set_len(filler_len.saturating_sub(step * 4096))
            .unwrap();
        match cms_server::store::open(&db) {
            Ok(_) => break,
            Err(error) => {
                let message = cms_server::store::error_chain(&error);
                assert!(
                    message.contains("No space left on device"),
                    "start with {} KiB free: {message}",
                    step * 4
                );
            }
        }
    }
    std::fs::remove_file(&filler).unwrap();
    let store = cms_server::store::open(&db).expect("the store opens once space returns");
    assert!(store.node("n1").unwrap().is_some());
    for run in 0..50 {
        assert!(store.report("n1", &format!("run-{run}")).unwrap().is_some());
    }
    store.put_node(&node("n3")).expect("and writes");
    let leftovers: Vec<String> = std::fs::read_dir(&db)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".generating"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
