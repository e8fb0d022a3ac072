//! Dashboard login tokens, kept in the store (`Store::add_dashboard_token`
//! and its siblings) so that every replica of a shared store honours each
//! one: a token made through one replica signs in on all, and one revoked
//! on any is refused by all at the next login.
//!
//! `cms-server dashboard-token` asks the running server to make one, as an
//! operator over the admin API (`CreateDashboardToken`): the server draws
//! 32 random bytes, stores their sha256 with when and by whom, and answers
//! the token itself once. Listing and revoking are admin calls too. The
//! dashboard's login asks [`DashboardTokens::is_valid`].
//!
//! Servers before this kept the hashes in `<data>/admin/dashboard-tokens`,
//! which `cms-server dashboard-token` wrote without a server. At start a
//! server imports that file into the store ([`import_file`]) and renames
//! it `dashboard-tokens.imported`, which is never read: nobody is locked
//! out by the upgrade, and editing the old file no longer changes anything.
//!
//! Everything here blocks on the store: the gRPC edge runs it through
//! `Blocking`, the dashboard on tokio's blocking threads.

use std::path::{Path, PathBuf};

use cms_roles::digest::sha256_hex;

use crate::clock::SharedClock;
use crate::store::{
    DASHBOARD_TOKEN_ID_DIGITS, DashboardTokenRecord, DashboardTokenRevocation,
    IMPORTED_DASHBOARD_TOKEN, SharedStore, Store, StoreError,
};

/// The prefix of dashboard tokens, so a leaked one is recognisable.
pub const DASHBOARD_TOKEN_PREFIX: &str = "cmsd_";

/// The file of dashboard token hashes that servers before the store kept
/// in the admin folder.
const OLD_TOKENS_FILE: &str = "dashboard-tokens";
/// What that file is renamed once its tokens are in the store.
const IMPORTED_TOKENS_FILE: &str = "dashboard-tokens.imported";

/// Makes, lists, revokes and checks dashboard tokens.
#[derive(Debug, Clone)]
pub struct DashboardTokens {
    pub store: SharedStore,
    pub clock: SharedClock,
}

/// A token just made: the secret, shown once and kept nowhere, and what
/// the store keeps.
#[derive(Debug)]
pub struct CreatedToken {
    pub secret: String,
    pub record: DashboardTokenRecord,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The token as stored now.
    pub record: DashboardTokenRecord,
    /// False when it was revoked before (`record` says when and by whom).
    pub now: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DashboardTokenError {
    #[error(
        "Failed to read the dashboard token id {id:?}: write at least the first {DASHBOARD_TOKEN_ID_DIGITS} hex digits of its sha256, as `cms-server dashboard-token --list` shows them"
    )]
    InvalidId { id: String },
    #[error("no dashboard token has the id {id}; `cms-server dashboard-token --list` shows them")]
    Unknown { id: String },
    #[error(
        "Failed to revoke dashboard token {id}: the ids of {count} tokens start with it; give more hex digits of its sha256"
    )]
    Ambiguous { id: String, count: usize },
    #[error("Failed to read random bytes for a dashboard token from /dev/urandom")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DashboardTokens {
    /// Makes a token at `operator`'s request: stores its sha256, when and
    /// by whom, and returns the secret, which is kept nowhere.
    pub fn create(&self, operator: &str) -> Result<CreatedToken, DashboardTokenError> {
        loop {
            let secret = new_secret()?;
            let record = DashboardTokenRecord {
                hash: sha256_hex(secret.as_bytes()),
                created_unix_ms: self.clock.now_unix_ms(),
                created_by: operator.to_owned(),
                revoked_unix_ms: None,
                revoked_by: None,
            };
            // A hash already stored (never seen: 256 random bits) would be
            // another token's: draw again rather than hand out that one.
            if self.store.add_dashboard_token(&record)? {
                return Ok(CreatedToken { secret, record });
            }
        }
    }

    /// Every token, revoked ones included, ordered by hash.
    pub fn list(&self) -> Result<Vec<DashboardTokenRecord>, DashboardTokenError> {
        Ok(self.store.dashboard_tokens()?)
    }

    /// Revokes the token whose sha256 starts with `id` (at least
    /// [`DASHBOARD_TOKEN_ID_DIGITS`] hex digits, any case) at `operator`'s
    /// request. Revoking a revoked token changes nothing and says so.
    pub fn revoke(&self, id: &str, operator: &str) -> Result<Revoked, DashboardTokenError> {
        let prefix = id.trim().to_ascii_lowercase();
        if prefix.len() < DASHBOARD_TOKEN_ID_DIGITS
            || prefix.len() > 64
            || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(DashboardTokenError::InvalidId { id: id.to_owned() });
        }
        let hash = if prefix.len() == 64 {
            prefix.clone()
        } else {
            let matching: Vec<DashboardTokenRecord> = self
                .store
                .dashboard_tokens()?
                .into_iter()
                .filter(|token| token.hash.starts_with(&prefix))
                .collect();
            match matching.as_slice() {
                [] => return Err(DashboardTokenError::Unknown { id: prefix }),
                [token] => token.hash.clone(),
                more => {
                    return Err(DashboardTokenError::Ambiguous {
                        id: prefix,
                        count: more.len(),
                    });
                }
            }
        };
        match self
            .store
            .revoke_dashboard_token(&hash, self.clock.now_unix_ms(), operator)?
        {
            DashboardTokenRevocation::Revoked(record) => Ok(Revoked { record, now: true }),
            DashboardTokenRevocation::AlreadyRevoked(record) => Ok(Revoked { record, now: false }),
            DashboardTokenRevocation::Unknown => Err(DashboardTokenError::Unknown { id: prefix }),
        }
    }

    /// Whether `secret` (surrounding blanks ignored) is a token the store
    /// holds and nobody revoked.
    pub fn is_valid(&self, secret: &str) -> Result<bool, StoreError> {
        self.store.dashboard_token_is_valid(&token_hash(secret))
    }
}

/// What the store knows a token by: the sha256 (hex) of `secret`,
/// surrounding blanks ignored.
pub fn token_hash(secret: &str) -> String {
    sha256_hex(secret.trim().as_bytes())
}

/// A new token: the prefix and 32 random bytes, URL-safe base64.
fn new_secret() -> Result<String, DashboardTokenError> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(DashboardTokenError::Random)?;
    Ok(format!(
        "{DASHBOARD_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The file of token hashes a server before the store kept in its admin
/// folder `admin_dir` (`<data>/admin`, `startup::admin_dir`).
pub fn old_tokens_file(admin_dir: &Path) -> PathBuf {
    admin_dir.join(OLD_TOKENS_FILE)
}

/// What [`import_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The old file, as it was named.
    pub path: PathBuf,
    /// Its new name, `None` when renaming it failed (`rename_error` says
    /// why; the next start imports it again, which changes nothing).
    pub renamed_to: Option<PathBuf>,
    pub rename_error: Option<String>,
    /// Tokens stored now.
    pub added: usize,
    /// Tokens the store held already (an earlier import, another replica's
    /// copy of the file); a revoked one stays revoked.
    pub already_stored: usize,
    /// Lines that are no token, with their line number and why.
    pub skipped: Vec<String>,
}

/// Imports the tokens of a server's old `<data>/admin/dashboard-tokens`
/// (lines `SHA256 created YYYY-MM-DD HH:MM:SS UTC`) into the store, each
/// made by [`IMPORTED_DASHBOARD_TOKEN`] at the time its line says (else
/// `now_unix_ms`), then renames the file `dashboard-tokens.imported`.
/// Idempotent: a token stored already stays as it is, revoked or not.
/// `None` when there is no such file.
pub fn import_file(
    admin_dir: &Path,
    store: &dyn Store,
    now_unix_ms: u64,
) -> anyhow::Result<Option<Imported>> {
    use anyhow::Context as _;
    let path = old_tokens_file(admin_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| format!("Failed to read {}", path.display()));
        }
    };
    let mut imported = Imported {
        path: path.clone(),
        renamed_to: None,
        rename_error: None,
        added: 0,
        already_stored: 0,
        skipped: Vec::new(),
    };
    for (index, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let Some(hash) = words.next() else {
            continue;
        };
        let hash = hash.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            imported.skipped.push(format!(
                "{}:{}: {hash:?} is not the sha256 of a token (64 hex digits)",
                path.display(),
                index + 1
            ));
            continue;
        }
        let created_unix_ms = match words.next() {
            Some("created") => parse_time(&words.collect::<Vec<_>>().join(" ")),
            _ => None,
        }
        .unwrap_or(now_unix_ms);
        let record = DashboardTokenRecord {
            hash,
            created_unix_ms,
            created_by: IMPORTED_DASHBOARD_TOKEN.to_owned(),
            revoked_unix_ms: None,
            revoked_by: None,
        };
        let added = store.add_dashboard_token(&record).with_context(|| {
            format!(
                "Failed to import the dashboard tokens of {} into the store",
                path.display()
            )
        })?;
        if added {
            imported.added += 1;
        } else {
            imported.already_stored += 1;
        }
    }
    let renamed = path.with_file_name(IMPORTED_TOKENS_FILE);
    let rename = std::fs::rename(&path, &renamed).and_then(|()| match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    });
    match rename {
        Ok(()) => imported.renamed_to = Some(renamed),
        Err(error) => {
            imported.rename_error = Some(format!(
                "Failed to rename {} to {}: {error}",
                path.display(),
                renamed.display()
            ))
        }
    }
    Ok(Some(imported))
}

/// Imports the old tokens file at a server's start (see [`import_file`])
/// and logs what it did; nothing when there is no file, so it is logged
/// once, at the start that renames it.
pub fn import_at_start(
    admin_dir: &Path,
    store: &dyn Store,
    now_unix_ms: u64,
) -> anyhow::Result<()> {
    let Some(imported) = import_file(admin_dir, store, now_unix_ms)? else {
        return Ok(());
    };
    for problem in &imported.skipped {
        tracing::warn!("skipped a line of the old dashboard tokens file: {problem}");
    }
    match (&imported.renamed_to, &imported.rename_error) {
        (Some(renamed), _) => tracing::info!(
            "imported the dashboard tokens of {} into the store: {} added, {} stored already; the file is now {} and is no longer read (`cms-server dashboard-token --list` shows the tokens, `--revoke ID` revokes one)",
            imported.path.display(),
            imported.added,
            imported.already_stored,
            renamed.display()
        ),
        (None, error) => tracing::warn!(
            "imported the dashboard tokens of {} into the store: {} added, {} stored already; {}; the next start imports it again, which changes nothing",
            imported.path.display(),
            imported.added,
            imported.already_stored,
            error.as_deref().unwrap_or("the file was not renamed")
        ),
    }
    Ok(())
}

/// Reads `YYYY-MM-DD HH:MM:SS UTC` (what `dashboard::format_time` writes)
/// as unix milliseconds.
fn parse_time(text: &str) -> Option<u64> {
    let text = text.trim().strip_suffix("UTC")?.trim();
    let (date, time) = text.split_once(' ')?;
    let mut date = date.splitn(3, '-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.splitn(3, ':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (time.next()??, time.next()??, time.next()??);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..61).contains(&second)
    {
        return None;
    }
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm,
    // the inverse of the one `format_time` uses).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(seconds).ok().map(|seconds| seconds * 1000)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::MemoryStore;

    fn tokens() -> (DashboardTokens, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at(1_700_000_000_000));
        let tokens = DashboardTokens {
            store: Arc::new(MemoryStore::default()),
            clock: clock.clone(),
        };
        (tokens, clock)
    }

    #[test]
    fn a_made_token_signs_in_and_the_store_keeps_its_hash_maker_and_time_but_never_the_secret() {
        let (tokens, _) = tokens();
        let made = tokens.create("alice").unwrap();
        assert!(
            made.secret.starts_with(DASHBOARD_TOKEN_PREFIX),
            "{}",
            made.secret
        );
        assert!(made.secret.len() > 40, "{}", made.secret);
        assert!(tokens.is_valid(&made.secret).unwrap());
        assert!(tokens.is_valid(&format!(" {}\n", made.secret)).unwrap());
        assert!(!tokens.is_valid("cmsd_guess").unwrap());
        let stored = tokens.list().unwrap();
        assert_eq!(stored, std::slice::from_ref(&made.record));
        assert_eq!(stored[0].hash, sha256_hex(made.secret.as_bytes()));
        assert_eq!(stored[0].created_by, "alice");
        assert_eq!(stored[0].created_unix_ms, 1_700_000_000_000);
        assert!(!format!("{stored:?}").contains(&made.secret));
        assert_ne!(tokens.create("alice").unwrap().secret, made.secret);
    }

    #[test]
    fn a_token_revoked_by_its_id_no_longer_signs_in_and_a_second_revocation_changes_nothing() {
        let (tokens, clock) = tokens();
        let made = tokens.create("alice").unwrap();
        let other = tokens.create("alice").unwrap();
        clock.set(1_700_000_050_000);
        let id = made.record.id().to_ascii_uppercase();
        let revoked = tokens.revoke(&id, "bob").unwrap();
        assert!(revoked.now);
        assert_eq!(revoked.record.revoked_unix_ms, Some(1_700_000_050_000));
        assert_eq!(revoked.record.revoked_by.as_deref(), Some("bob"));
        assert!(!tokens.is_valid(&made.secret).unwrap());
        assert!(tokens.is_valid(&other.secret).unwrap());
        let again = tokens.revoke(&made.record.hash, "carol").unwrap();
        assert_eq!(
            again,
            Revoked {
                record: revoked.record,
                now: false
            }
        );
    }

    #[test]
    fn a_revocation_names_a_token_by_enough_hex_digits_of_exactly_one_hash() {
        let (tokens, _) = tokens();
        let store = tokens.store.clone();
        for hash in [
            "ab".repeat(32),
            format!("{}{}", "ab".repeat(6), "c".repeat(52)),
        ] {
            store
                .add_dashboard_token(&crate::store::conformance::dashboard_token(&hash, 1))
                .unwrap();
        }
        let error = |id: &str| tokens.revoke(id, "bob").unwrap_err().to_string();
        assert_eq!(
            error("abababab"),
            "Failed to read the dashboard token id \"abababab\": write at least the first 12 hex digits of its sha256, as `cms-server dashboard-token --list` shows them"
        );
        assert!(error("xyzxyzxyzxyz").starts_with("Failed to read the dashboard token id"));
        assert_eq!(
            error("abababababab"),
            "Failed to revoke dashboard token abababababab: the ids of 2 tokens start with it; give more hex digits of its sha256"
        );
        assert_eq!(
            error("0123456789ab"),
            "no dashboard token has the id 0123456789ab; `cms-server dashboard-token --list` shows them"
        );
        assert!(tokens.revoke("ababababababab", "bob").unwrap().now);
        assert!(!store.dashboard_token_is_valid(&"ab".repeat(32)).unwrap());
    }

    /// The file `cms-server dashboard-token` wrote before tokens moved to
    /// the store, holding the hashes of `secrets`.
    fn old_file(admin_dir: &Path, lines: &[String]) -> PathBuf {
        let path = old_tokens_file(admin_dir);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    #[test]
    fn the_old_tokens_file_is_imported_once_renamed_and_a_token_revoked_since_stays_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::default();
        let (first, second) = ("cmsd_first", "cmsd_second");
        let path = old_file(
            dir.path(),
            &[
                format!(
                    "{} created 2025-11-26 08:40:00 UTC",
                    sha256_hex(first.as_bytes())
                ),
                String::new(),
                "not-a-hash created 2025-11-26 08:40:00 UTC".into(),
                sha256_hex(second.as_bytes()),
            ],
        );
        let imported = import_file(dir.path(), &store, 42)
            .unwrap()
            .expect("a file");
        assert_eq!((imported.added, imported.already_stored), (2, 0));
        assert_eq!(imported.skipped.len(), 1, "{:?}", imported.skipped);
        assert!(
            imported.skipped[0].contains("dashboard-tokens:3:"),
            "{:?}",
            imported.skipped
        );
        let renamed = path.with_file_name("dashboard-tokens.imported");
        assert_eq!(imported.renamed_to.as_deref(), Some(renamed.as_path()));
        assert!(!path.exists() && renamed.exists());
        let listed = store.dashboard_tokens().unwrap();
        let first_record = listed
            .iter()
            .find(|t| t.hash == sha256_hex(first.as_bytes()))
            .unwrap();
        assert_eq!(first_record.created_by, IMPORTED_DASHBOARD_TOKEN);
        assert_eq!(
            crate::dashboard::format_time(first_record.created_unix_ms),
            "2025-11-26 08:40:00 UTC"
        );
        let second_record = listed
            .iter()
            .find(|t| t.hash == sha256_hex(second.as_bytes()))
            .unwrap();
        assert_eq!(second_record.created_unix_ms, 42, "no time: the import's");

        // Nothing to import at the next start.
        assert_eq!(import_file(dir.path(), &store, 43).unwrap(), None);
        // The file put back (a restored backup), after a revocation: the
        // revoked token stays revoked, nothing is added twice.
        store
            .revoke_dashboard_token(&sha256_hex(first.as_bytes()), 50, "bob")
            .unwrap();
        std::fs::rename(&renamed, &path).unwrap();
        let again = import_file(dir.path(), &store, 60)
            .unwrap()
            .expect("a file");
        assert_eq!((again.added, again.already_stored), (0, 2));
        assert!(
            !store
                .dashboard_token_is_valid(&sha256_hex(first.as_bytes()))
                .unwrap()
        );
        assert!(
            store
                .dashboard_token_is_valid(&sha256_hex(second.as_bytes()))
                .unwrap()
        );
        assert_eq!(store.dashboard_tokens().unwrap().len(), 2);
    }

    #[test]
    fn a_time_written_by_format_time_reads_back() {
        for unix_ms in [0, 951_782_400_000, 1_700_000_000_000, 4_102_444_799_000] {
            let text = crate::dashboard::format_time(unix_ms);
            assert_eq!(parse_time(&text), Some(unix_ms), "{text}");
        }
        assert_eq!(parse_time("2025-13-01 00:00:00 UTC"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
