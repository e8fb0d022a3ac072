//! The sled store's report log: the bodies of run reports, appended to
//! segment files of the store's own (`report-log/` in the database
//! directory) and made durable by one `fdatasync` shared by the writers of
//! the moment, instead of written into sled's trees and flushed there.
//!
//! Why: a report is a few kilobytes that is written once and read rarely.
//! In sled, each one was copied into its log buffers, rewritten with its
//! leaf page and flushed through sled's thread pool; that made the report
//! the most expensive step of an agent's run on the server (see
//! docs/BENCHMARKS.md, "The report log"). Here it costs one `pwrite` and a
//! share of one `fdatasync`; sled keeps a 21-byte pointer to it and the
//! report index, without a flush of its own.
//!
//! # Format
//!
//! Segments are named by a counter (`00000000000000000001.log`) and written
//! one after another; a segment is closed (synced) when it passes
//! `SEGMENT_BYTES` and never written again. Each entry is a frame:
//! payload length (u32, little-endian), CRC-32 of the payload (u32,
//! little-endian), payload (the JSON of a `LogEntry`). A frame that is cut
//! short or whose CRC does not match ends the segment: it is what a crash
//! during a write leaves, and opening the log clears it (writes zeros over
//! it).
//!
//! Zeros follow the frames: the open segment is extended with zeros
//! `ZERO_AHEAD` at a time, before frames are written there, as PostgreSQL
//! fills its WAL segments. A frame written over zeros leaves the file's
//! size and blocks as they were, so the `fdatasync` that makes it durable
//! writes its data and nothing else; a frame that grows the file makes the
//! sync commit the file system's journal too, which costs about half again
//! as much CPU per sync (docs/BENCHMARKS.md, "Zeros ahead of the report
//! log"). A zero length is no frame, so the zeros read as the end.
//!
//! # What makes it durable
//!
//! An entry is acknowledged only after a sync that started after it was
//! written (`GroupCommit`). sled receives the pointer only after that, and
//! is not flushed for it; the store's own flushes record in sled how far
//! the log is applied (`Position`), and opening the store applies again
//! what follows that point (`SledStore::replay_report_log`).

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// A segment is closed once it holds this much.
pub(super) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Frame header: payload length, then its CRC-32.
const HEADER: u64 = 8;
/// How far ahead of the frames the open segment is filled with zeros, at
/// most to the segment's size.
const ZERO_AHEAD: u64 = 1024 * 1024;
/// The largest payload a frame may claim; a longer claim is damage.
const MAX_PAYLOAD: u64 = 1 << 30;
/// The first byte of a pointer stored in sled in place of a report's JSON
/// (JSON starts with `{`).
const POINTER_TAG: u8 = 1;
const POINTER_LEN: usize = 1 + 8 + 8 + 4;

/// A place in the log: a segment and an offset in it. Ordered as the log
/// is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.segment.to_be_bytes());
        bytes[8..].copy_from_slice(&self.offset.to_be_bytes());
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Position> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        Some(Position {
            segment: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// Where one entry is: what sled keeps in place of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pointer {
    pub at: Position,
    /// The payload's length.
    pub len: u32,
}

impl Pointer {
    pub fn to_bytes(self) -> [u8; POINTER_LEN] {
        let mut bytes = [0; POINTER_LEN];
        bytes[0] = POINTER_TAG;
        bytes[1..17].copy_from_slice(&self.at.to_bytes());
        bytes[17..].copy_from_slice(&self.len.to_be_bytes());
        bytes
    }

    /// `None` for a value that is not a pointer (a report stored as JSON
    /// in sled, as every report was before the log).
    pub fn from_bytes(bytes: &[u8]) -> Option<Pointer> {
        if bytes.len() != POINTER_LEN || bytes[0] != POINTER_TAG {
            return None;
        }
        Some(Pointer {
            at: Position::from_bytes(&bytes[1..17])?,
            len: u32::from_be_bytes(bytes[17..].try_into().ok()?),
        })
    }
}

/// The log of one store. One writer appends at a time (the state's lock);
/// syncs are shared.
#[derive(Debug)]
pub(super) struct ReportLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    segment: u64,
    file: Arc<File>,
    /// Where the frames end.
    len: u64,
    /// The file's size: frames, then zeros.
    zeroed: u64,
    /// Entries written but not yet in sled, with their (node id, run id):
    /// how far the log is applied, and which re-sent reports are on their
    /// way already.
    in_flight: Vec<(Position, String, String)>,
    /// A sync failed: what was written since the last good one may be
    /// lost while a later sync succeeds (the kernel may drop the failed
    /// pages), so nothing more is appended to this open log; the store is
    /// opened again (`Reopening`), which cuts the log after its last whole
    /// entry.
    failed_sync: bool,
}

impl LogState {
    /// Where the next entry goes.
    fn end(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.len,
        }
    }
}

/// What `append` did.
pub(super) enum Appended {
    Written(Pointer),
    /// The same (node id, run id) is being written by another caller.
    InFlight,
}

impl ReportLog {
    /// Opens the log in `dir` (created owner-only if missing), cutting off
    /// a frame a crash left unfinished at the end of the last segment;
    /// segments close at `segment_bytes` (`SEGMENT_BYTES`).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> io::Result<ReportLog> {
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            sync_directory(dir)?;
            if let Some(parent) = dir.parent() {
                sync_directory(parent)?;
            }
        }
        let segments = segments(dir)?;
        let segment = segments.last().copied().unwrap_or(1);
        let path = segment_path(dir, segment);
        let file = open_segment(&path)?;
        if segments.is_empty() {
            sync_directory(dir)?;
        }
        let (len, zeroed) = clear_after_frames(&file, &path)?;
        Ok(ReportLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: Mutex::new(LogState {
                segment,
                file: Arc::new(file),
                len,
                zeroed,
                in_flight: Vec::new(),
                failed_sync: false,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `payload` for (node id, run id) unless `stored` says the
    /// report is stored already (`Ok(None)`) or the same report is being
    /// written (`InFlight`). Not durable until `sync`; `applied` must
    /// follow, whatever happens next.
    pub fn append<E>(
        &self,
        node_id: &str,
        run_id: &str,
        payload: &[u8],
        stored: impl FnOnce() -> Result<bool, E>,
        io_error: impl Fn(io::Error) -> E,
    ) -> Result<Option<Appended>, E> {
        let mut state = self.state();
        if state.failed_sync {
            return Err(io_error(io::Error::other(
                "an earlier sync of the report log failed, so it takes no more reports until the store is opened again",
            )));
        }
        if state
            .in_flight
            .iter()
            .any(|(_, node, run)| node == node_id && run == run_id)
        {
            return Ok(Some(Appended::InFlight));
        }
        if stored()? {
            return Ok(None);
        }
        if state.len >= self.segment_bytes {
            self.rotate(&mut state).map_err(&io_error)?;
        }
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| u64::from(len) <= MAX_PAYLOAD)
            .ok_or_else(|| {
                io_error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a report of over 1 GiB",
                ))
            })?;
        let mut frame = Vec::with_capacity(HEADER as usize + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        let at = state.end();
        let end = at.offset + frame.len() as u64;
        if let Err(error) = self.zero_ahead(&mut state, end) {
            // The zeros save work, they are not needed: on a disk too full
            // for them, the frame grows the file itself.
            tracing::debug!(%error, "could not lay zeros ahead in the report log");
        }
        if let Err(error) = state.file.write_all_at(&frame, at.offset) {
            // What was written of it is cut, or overwritten by the next
            // entry; opening the log would clear it too.
            let _ = state.file.set_len(at.offset);
            state.zeroed = at.offset;
            return Err(io_error(error));
        }
        state.len = end;
        state.zeroed = state.zeroed.max(end);
        state
            .in_flight
            .push((at, node_id.to_string(), run_id.to_string()));
        Ok(Some(Appended::Written(Pointer { at, len })))
    }

    /// The entry at `at` is in sled now (or never will be).
    pub fn applied(&self, at: Position) {
        self.state().in_flight.retain(|(p, _, _)| *p != at);
    }

    /// Every entry before this position is in sled; what a flush records.
    pub fn applied_through(&self) -> Position {
        let state = self.state();
        state
            .in_flight
            .iter()
            .map(|(p, _, _)| *p)
            .min()
            .unwrap_or(state.end())
    }

    /// Makes what was appended durable: the open segment's data (closed
    /// segments were synced when they were closed).
    ///
    /// After one failure every later sync of this open log fails too: a
    /// second `fdatasync` may succeed without the pages the first lost.
    pub fn sync(&self) -> io::Result<()> {
        let file = {
            let state = self.state();
            if state.failed_sync {
                return Err(io::Error::other(
                    "an earlier sync of the report log failed, so what was written since may be lost; the store opens it again",
                ));
            }
            state.file.clone()
        };
        file.sync_data()
            .inspect_err(|_| self.state().failed_sync = true)
    }

    /// Where the next entry goes.
    pub fn end(&self) -> Position {
        self.state().end()
    }

    /// Fills the open segment with zeros past `end`, where the next frame
    /// ends, when it is not already: `ZERO_AHEAD` on, at most to the
    /// segment's size (a frame that passes it grows the file itself).
    fn zero_ahead(&self, state: &mut LogState, end: u64) -> io::Result<()> {
        if end <= state.zeroed {
            return Ok(());
        }
        let to = (state.zeroed + ZERO_AHEAD).min(self.segment_bytes).max(end);
        if let Err(error) = write_zeros(&state.file, state.zeroed, to) {
            // On a disk too full for them, the zeros written so far are
            // given back: what the frame does not need stays free for
            // the rest of the store.
            let _ = state.file.set_len(state.zeroed);
            return Err(error);
        }
        state.zeroed = to;
        Ok(())
    }

    fn rotate(&self, state: &mut LogState) -> io::Result<()> {
        state.file.sync_data()?;
        let segment = state.segment + 1;
        let file = open_segment(&segment_path(&self.dir, segment))?;
        sync_directory(&self.dir)?;
        state.segment = segment;
        state.file = Arc::new(file);
        state.len = 0;
        state.zeroed = 0;
        Ok(())
    }

    /// The payload `pointer` points to, checked against its CRC; `None`
    /// when its segment was removed (pruned meanwhile).
    pub fn read(&self, pointer: Pointer) -> io::Result<Option<Vec<u8>>> {
        let file = match File::open(segment_path(&self.dir, pointer.at.segment)) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut frame = vec![0; HEADER as usize + pointer.len as usize];
        file.read_exact_at(&mut frame, pointer.at.offset)?;
        match payload_of(&frame) {
            Some(payload) if payload.len() == pointer.len as usize => Ok(Some(payload.to_vec())),
            _ => Err(damaged(
                &segment_path(&self.dir, pointer.at.segment),
                pointer.at.offset,
            )),
        }
    }

    /// Every entry from `from` on, in order, with its pointer.
    pub fn entries_from(&self, from: Position) -> io::Result<Vec<(Pointer, Vec<u8>)>> {
        let mut entries = Vec::new();
        for segment in segments(&self.dir)? {
            if segment < from.segment {
                continue;
            }
            let start = if segment == from.segment {
                from.offset
            } else {
                0
            };
            // Only what follows `start`: a start reads nothing it already
            // applied.
            let mut file = File::open(segment_path(&self.dir, segment))?;
            io::Seek::seek(&mut file, io::SeekFrom::Start(start))?;
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut file, &mut bytes)?;
            entries.extend(whole_frames(&bytes).map(|(offset, payload)| {
                (
                    Pointer {
                        at: Position {
                            segment,
                            offset: start + offset,
                        },
                        len: payload.len() as u32,
                    },
                    payload.to_vec(),
                )
            }));
        }
        Ok(entries)
    }

    /// Removes the closed segments before `keep_from` that no pointer in
    /// `referenced` points into. Returns how many.
    pub fn remove_unreferenced(
        &self,
        keep_from: u64,
        referenced: &std::collections::BTreeSet<u64>,
    ) -> io::Result<usize> {
        let open = self.state().segment;
        let mut removed = 0;
        for segment in segments(&self.dir)? {
            if segment >= keep_from || segment >= open || referenced.contains(&segment) {
                continue;
            }
            std::fs::remove_file(segment_path(&self.dir, segment))?;
            removed += 1;
        }
        if removed > 0 {
            sync_directory(&self.dir)?;
        }
        Ok(removed)
    }
}

fn damaged(path: &Path, offset: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the report log entry at byte {offset} of {} is damaged (its checksum does not match)",
            path.display()
        ),
    )
}

/// The payload of a whole frame, if its header matches it.
fn payload_of(frame: &[u8]) -> Option<&[u8]> {
    let payload = payload_of_prefix(frame)?;
    (HEADER as usize + payload.len() == frame.len()).then_some(payload)
}

/// The payload of the frame at the start of `bytes`, if it is complete and
/// its CRC matches.
fn payload_of_prefix(bytes: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    // No entry is empty: a zero length is a region the file system left
    // zeroed, not a frame (the CRC of nothing is 0).
    if len == 0 || len as u64 > MAX_PAYLOAD {
        return None;
    }
    let payload = bytes.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Where the whole frames at the start of `file` end, and the file's size.
/// Whatever follows them that is not zeros (a frame that a crash or a full
/// disk left unfinished, never acknowledged) is overwritten with zeros and
/// synced, so that no later frame written there can be read together with
/// what is left of it.
fn clear_after_frames(file: &File, path: &Path) -> io::Result<(u64, u64)> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut &*file, &mut bytes)?;
    let len = whole_frames(&bytes).last().map_or(0, |(offset, payload)| {
        offset + HEADER + payload.len() as u64
    });
    let rest = &bytes[len as usize..];
    if let Some(last) = rest.iter().rposition(|&byte| byte != 0) {
        tracing::warn!(
            "cleared the end of {} after byte {len}: a report write that a crash or a full disk left unfinished (it was never acknowledged)",
            path.display()
        );
        write_zeros(file, len, len + last as u64 + 1)?;
        file.sync_data()?;
    }
    Ok((len, bytes.len() as u64))
}

/// Writes zeros over `from..to` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// The whole frames at the start of `bytes`, each with its offset and
/// payload, up to the first that is cut short or damaged.
fn whole_frames(bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut offset = 0u64;
    std::iter::from_fn(move || {
        let payload = payload_of_prefix(bytes.get(offset as usize..)?)?;
        let at = offset;
        offset += HEADER + payload.len() as u64;
        Some((at, payload))
    })
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// The segments in `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".log"))
            .filter(|stem| stem.len() == 20)
            .and_then(|stem| stem.parse::<u64>().ok())
        {
            segments.push(number);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

fn open_segment(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(log: &ReportLog, run: &str, payload: &[u8]) -> Pointer {
        match log.append("n1", run, payload, || Ok(false), |e| e).unwrap() {
            Some(Appended::Written(pointer)) => {
                log.applied(pointer.at);
                pointer
            }
            _ => panic!("appended"),
        }
    }

    #[test]
    fn an_entry_reads_back_by_its_pointer_after_the_log_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        let first = append(&log, "r1", b"first");
        let second = append(&log, "r2", b"second entry");
        log.sync().unwrap();
        drop(log);
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        assert_eq!(log.read(first).unwrap().unwrap(), b"first");
        assert_eq!(log.read(second).unwrap().unwrap(), b"second entry");
        assert_eq!(Pointer::from_bytes(&second.to_bytes()), Some(second));
        assert_eq!(Pointer::from_bytes(b"{\"node_id\":1}"), None);
    }

    #[test]
    fn zeros_or_a_frame_cut_short_by_a_crash_are_cleared_at_open_and_the_next_entry_follows_the_last_whole_one()
     {
        let dir = tempfile::tempdir().unwrap();
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        let whole = append(&log, "r1", b"whole");
        drop(log);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        // What a file system may leave after a crash: its size grown,
        // zeros where the data was to be.
        bytes.extend_from_slice(&[0; 64]);
        let mut torn = Vec::new();
        torn.extend_from_slice(&100u32.to_le_bytes());
        torn.extend_from_slice(&0u32.to_le_bytes());
        torn.extend_from_slice(b"only part of it");
        bytes.extend_from_slice(&torn);
        std::fs::write(&path, &bytes).unwrap();

        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        let next = append(&log, "r2", b"next");
        assert_eq!(next.at.offset, HEADER + 5);
        assert_eq!(log.read(whole).unwrap().unwrap(), b"whole");
        let entries = log
            .entries_from(Position {
                segment: 1,
                offset: 0,
            })
            .unwrap();
        let payloads: Vec<&[u8]> = entries.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [&b"whole"[..], &b"next"[..]]);
        // What is left of the cut frame after `next` reads as zeros, not as
        // the rest of a frame.
        let bytes = std::fs::read(&path).unwrap();
        let after_next = (2 * HEADER + 5 + 4) as usize;
        assert!(bytes[after_next..].iter().all(|&b| b == 0));
    }

    #[test]
    fn entries_are_written_over_zeros_laid_ahead_which_read_as_the_end_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        let first = append(&log, "r1", b"first");
        // The file is grown once, ahead of the frames, not by each frame.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ZERO_AHEAD);
        let second = append(&log, "r2", b"second");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ZERO_AHEAD);
        log.sync().unwrap();
        drop(log);
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        assert_eq!(
            log.end(),
            Position {
                segment: 1,
                offset: 2 * HEADER + 5 + 6
            }
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ZERO_AHEAD);
        let third = append(&log, "r3", b"third");
        let entries = log.entries_from(first.at).unwrap();
        let pointers: Vec<Pointer> = entries.iter().map(|(p, _)| *p).collect();
        assert_eq!(pointers, [first, second, third]);
        assert_eq!(log.read(third).unwrap().unwrap(), b"third");
    }

    #[test]
    fn zeros_are_laid_ahead_again_when_the_frames_reach_them_and_never_past_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let segment_bytes = ZERO_AHEAD + ZERO_AHEAD / 2;
        let log = ReportLog::open_with(dir.path(), segment_bytes).unwrap();
        let big = vec![b'x'; (ZERO_AHEAD - 2 * HEADER) as usize];
        append(&log, "r1", &big);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ZERO_AHEAD);
        // This one passes the zeros: they go on to the segment's size.
        let second = append(&log, "r2", b"second one");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), segment_bytes);
        // A frame longer than what is left grows the file itself.
        let third = append(&log, "r3", &big);
        assert_eq!(third.at.segment, 1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            third.at.offset + HEADER + big.len() as u64
        );
        let next = append(&log, "r4", b"next");
        assert_eq!(next.at.segment, 2);
        assert_eq!(log.read(second).unwrap().unwrap(), b"second one");
    }

    #[test]
    fn after_a_failed_sync_the_open_log_takes_no_more_entries_and_no_later_sync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        append(&log, "r1", b"before");
        // What `sync` notes when fdatasync fails.
        log.state().failed_sync = true;
        let error = log
            .append("n1", "r2", b"after", || Ok(false), |e| e)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("opened again"), "{error}");
        assert!(log.sync().is_err(), "a later sync acknowledges nothing");
        drop(log);
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        append(&log, "r2", b"after");
    }

    #[test]
    fn a_damaged_entry_is_an_error_naming_its_file_not_another_report() {
        let dir = tempfile::tempdir().unwrap();
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        let pointer = append(&log, "r1", b"the report");
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let error = log.read(pointer).unwrap_err().to_string();
        assert!(
            error.contains("damaged") && error.contains(&path.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn segments_close_at_their_size_and_only_unreferenced_closed_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = ReportLog::open_with(dir.path(), 64).unwrap();
        let pointers: Vec<Pointer> = (0..6)
            .map(|i| append(&log, &format!("r{i}"), &[b'x'; 40]))
            .collect();
        let used: Vec<u64> = pointers.iter().map(|p| p.at.segment).collect();
        assert_eq!(used, [1, 1, 2, 2, 3, 3]);
        let referenced = std::collections::BTreeSet::from([2]);
        assert_eq!(log.remove_unreferenced(4, &referenced).unwrap(), 1);
        assert_eq!(log.read(pointers[0]).unwrap(), None);
        assert!(log.read(pointers[2]).unwrap().is_some());
        // The open segment stays, referenced or not.
        assert!(log.read(pointers[5]).unwrap().is_some());
    }

    #[test]
    fn a_report_on_its_way_is_not_appended_twice_and_how_far_the_log_is_applied_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = ReportLog::open_with(dir.path(), SEGMENT_BYTES).unwrap();
        let Some(Appended::Written(first)) =
            log.append("n1", "r1", b"one", || Ok(false), |e| e).unwrap()
        else {
            panic!("appended");
        };
        assert!(matches!(
            log.append("n1", "r1", b"one", || Ok(false), |e| e).unwrap(),
            Some(Appended::InFlight)
        ));
        let second = append(&log, "r2", b"two");
        assert_eq!(log.applied_through(), first.at);
        log.applied(first.at);
        assert!(log.applied_through() > second.at);
        assert!(
            log.append("n1", "r1", b"one", || Ok(true), |e| e)
                .unwrap()
                .is_none()
        );
    }
}
