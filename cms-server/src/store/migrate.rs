//! `cms-server store migrate`: copies every record of one store into
//! another, empty one (sled to PostgreSQL, or back), then counts each kind
//! of record on both sides.
//!
//! It goes through the [`Store`] trait only, so any pair of stores works
//! and no table or tree layout is repeated here. Reports are copied in
//! pages (`all_reports`), so a store with millions of them does not have
//! to fit in memory; received times, revocations, token uses and the order
//! of the audit log are kept as they are. Dashboard tokens (their hashes
//! and revocations) are credentials and are carried; dashboard sessions
//! last hours and are not (whoever was signed in signs in again). The server must be stopped
//! while it runs: a sled store is locked by its server anyway, and a
//! PostgreSQL one would keep changing under the copy.

use std::collections::BTreeMap;
use std::fmt;

use super::{Store, StoreError};

/// How many reports are read and written per page.
const REPORT_PAGE: usize = 500;

/// How many records of each kind a store holds, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<&'static str, u64>);

impl Counts {
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// What a migration found: the counts of both stores, kind by kind.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub source: Counts,
    pub target: Counts,
}

impl Outcome {
    /// Whether every kind has as many records in the target as in the
    /// source.
    pub fn matches(&self) -> bool {
        self.source == self.target
    }
}

impl fmt::Display for Outcome {
    /// A table: kind, source count, target count, and `MISMATCH` where
    /// they differ.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<26} {:>10} {:>10}", "KIND", "SOURCE", "TARGET")?;
        for (kind, source) in &self.source.0 {
            let target = self.target.0.get(kind).copied().unwrap_or(0);
            let flag = if target == *source { "" } else { "  MISMATCH" };
            writeln!(f, "{kind:<26} {source:>10} {target:>10}{flag}")?;
        }
        Ok(())
    }
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "Failed to migrate: the target store is not empty ({count} records: {kinds}); migrate into a new database or an empty directory"
    )]
    TargetNotEmpty { count: u64, kinds: String },
    #[error("Failed to migrate: reading the source store")]
    Source(#[source] StoreError),
    #[error("Failed to migrate: writing the target store")]
    Target(#[source] StoreError),
}

/// Counts each kind of record in `store`.
pub fn count(store: &dyn Store) -> Result<Counts, StoreError> {
    let mut counts = BTreeMap::new();
    let mut put = |kind: &'static str, n: usize| {
        counts.insert(kind, n as u64);
    };
    put("nodes", store.nodes()?.len());
    let mut reports = 0;
    let mut after: Option<(String, String)> = None;
    loop {
        let page = store.all_reports(
            after.as_ref().map(|(n, r)| (n.as_str(), r.as_str())),
            REPORT_PAGE,
        )?;
        reports += page.len();
        match page.last() {
            Some(last) => after = Some((last.node_id.clone(), last.run_id.clone())),
            None => break,
        }
    }
    put("reports", reports);
    put("revisions", store.revisions()?.len());
    put(
        "current revision",
        usize::from(store.current_revision()?.is_some()),
    );
    put("ca", usize::from(store.ca()?.is_some()));
    let certificates = store.certificates()?;
    put("certificates", certificates.len());
    put(
        "revoked certificates",
        certificates.iter().filter(|c| c.revoked).count(),
    );
    put("tokens", store.tokens()?.len());
    let dashboard_tokens = store.dashboard_tokens()?;
    put("dashboard tokens", dashboard_tokens.len());
    put(
        "revoked dashboard tokens",
        dashboard_tokens.iter().filter(|t| t.is_revoked()).count(),
    );
    put("triggers", store.triggers()?.len());
    put("operators", store.operators()?.len());
    put("audit records", store.audit(usize::MAX)?.len());
    let settings = store.settings()?;
    let environments = settings
        .iter()
        .filter(|(name, _)| name.starts_with("environment/"))
        .count();
    put("environments", environments);
    put("other settings", settings.len() - environments);
    Ok(Counts(counts))
}

/// Copies everything from `source` into `target`, which must be empty,
/// then counts both. The caller decides what a mismatch means (the
/// command exits non-zero).
pub fn migrate(source: &dyn Store, target: &dyn Store) -> Result<Outcome, MigrateError> {
    let before = count(target).map_err(MigrateError::Target)?;
    if before.total() > 0 {
        let kinds = before
            .0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(MigrateError::TargetNotEmpty {
            count: before.total(),
            kinds,
        });
    }
    copy(source, target)?;
    Ok(Outcome {
        source: count(source).map_err(MigrateError::Source)?,
        target: count(target).map_err(MigrateError::Target)?,
    })
}

fn copy(source: &dyn Store, target: &dyn Store) -> Result<(), MigrateError> {
    use MigrateError::{Source, Target};
    // Revisions first, so that the current one can be set.
    for revision in source.revisions().map_err(Source)? {
        target.put_revision(&revision).map_err(Target)?;
    }
    if let Some(current) = source.current_revision().map_err(Source)? {
        target.set_current_revision(&current).map_err(Target)?;
    }
    if let Some(ca) = source.ca().map_err(Source)? {
        target.put_ca(&ca).map_err(Target)?;
    }
    for certificate in source.certificates().map_err(Source)? {
        target.put_certificate(&certificate).map_err(Target)?;
    }
    for node in source.nodes().map_err(Source)? {
        target.put_node(&node).map_err(Target)?;
    }
    let mut after: Option<(String, String)> = None;
    loop {
        let page = source
            .all_reports(
                after.as_ref().map(|(n, r)| (n.as_str(), r.as_str())),
                REPORT_PAGE,
            )
            .map_err(Source)?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.node_id.clone(), last.run_id.clone()));
        for report in &page {
            target.put_report(report).map_err(Target)?;
        }
    }
    for token in source.tokens().map_err(Source)? {
        target.put_token(&token).map_err(Target)?;
    }
    // Credentials, revocations included: a token revoked on the source
    // stays revoked on the target.
    for token in source.dashboard_tokens().map_err(Source)? {
        target.add_dashboard_token(&token).map_err(Target)?;
    }
    for trigger in source.triggers().map_err(Source)? {
        target.put_trigger(&trigger).map_err(Target)?;
    }
    for operator in source.operators().map_err(Source)? {
        target.swap_operator(None, &operator).map_err(Target)?;
    }
    // Oldest first, so the target keeps their order.
    for record in source.audit(usize::MAX).map_err(Source)? {
        target.append_audit(&record).map_err(Target)?;
    }
    for (name, value) in source.settings().map_err(Source)? {
        target.put_setting(&name, &value).map_err(Target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{fill_with_every_kind as fill, node};
    use crate::store::{MemoryStore, SledStore};

    #[test]
    fn a_migration_copies_every_record_and_the_counts_match() {
        let dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(&dir.path().join("db")).unwrap();
        fill(&source);
        let target = MemoryStore::default();
        let outcome = migrate(&source, &target).unwrap();
        assert!(outcome.matches(), "{outcome}");
        assert_eq!(outcome.target.0["reports"], 1_203);
        assert_eq!(outcome.target.0["revoked certificates"], 1);
        assert_eq!(target.tokens().unwrap(), source.tokens().unwrap());
        assert_eq!(outcome.target.0["dashboard tokens"], 2);
        assert_eq!(outcome.target.0["revoked dashboard tokens"], 1);
        assert_eq!(
            target.dashboard_tokens().unwrap(),
            source.dashboard_tokens().unwrap()
        );
        assert_eq!(target.audit(10).unwrap(), source.audit(10).unwrap());
        assert_eq!(target.current_revision().unwrap().as_deref(), Some("c1"));
        assert_eq!(
            target.reports("n1", 5).unwrap(),
            source.reports("n1", 5).unwrap()
        );
        assert_eq!(target.ca().unwrap(), source.ca().unwrap());
    }

    #[test]
    fn a_migration_into_a_store_that_holds_records_is_refused() {
        let source = MemoryStore::default();
        fill(&source);
        let target = MemoryStore::default();
        target.put_node(&node("other")).unwrap();
        let error = migrate(&source, &target).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Failed to migrate: the target store is not empty (1 records: 1 nodes); migrate into a new database or an empty directory"
        );
        assert_eq!(target.nodes().unwrap().len(), 1);
    }

    #[test]
    fn the_outcome_table_flags_a_kind_whose_counts_differ() {
        let mut source = Counts::default();
        source.0.insert("nodes", 2);
        let mut target = Counts::default();
        target.0.insert("nodes", 1);
        let outcome = Outcome { source, target };
        assert!(!outcome.matches());
        assert!(
            outcome
                .to_string()
                .contains("nodes                               2          1  MISMATCH"),
            "{outcome}"
        );
    }
}
