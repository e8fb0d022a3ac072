//! The store in memory, for unit tests of the code above the store: the
//! same method set and the same rules as [`SledStore`](super::SledStore)
//! (ordering, idempotent reports, atomic token use, the current revision
//! only accepted), nothing durable. One mutex guards everything, which
//! makes every method atomic.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{
    AuditRecord, CaRecord, CertificateRecord, DashboardTokenRecord, DashboardTokenRevocation,
    NodeRecord, OperatorRecord, ReportWrite, RevisionRecord, RunSummary, Store, StoreError,
    StoredReport, TokenRecord, TriggerRecord, check_node_id, note_run,
};

/// A store that lives and dies with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

#[derive(Debug, Default)]
struct Data {
    nodes: BTreeMap<String, NodeRecord>,
    /// By (node id, run id), the identity of a report.
    reports: BTreeMap<(String, String), StoredReport>,
    revisions: BTreeMap<String, RevisionRecord>,
    current_revision: Option<String>,
    ca: Option<CaRecord>,
    certificates: BTreeMap<String, CertificateRecord>,
    tokens: BTreeMap<String, TokenRecord>,
    settings: BTreeMap<String, Vec<u8>>,
    /// Dashboard sessions: hash → (expiry (unix ms), hash of its token).
    sessions: BTreeMap<String, (u64, String)>,
    /// Dashboard tokens by hash.
    dashboard_tokens: BTreeMap<String, DashboardTokenRecord>,
    triggers: BTreeMap<String, TriggerRecord>,
    operators: BTreeMap<String, OperatorRecord>,
    /// In order of arrival, which is also time order for one process.
    audit: Vec<AuditRecord>,
}

impl MemoryStore {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        self.data().nodes.insert(node.id.clone(), node.clone());
        Ok(())
    }

    fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self.data().nodes.get(id).cloned())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self.data().nodes.values().cloned().collect())
    }

    fn update_node_with(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, StoreError> {
        let mut data = self.data();
        let Some(node) = data.nodes.get_mut(id) else {
            return Ok(None);
        };
        change(node);
        node.id = id.to_string();
        Ok(Some(node.clone()))
    }

    fn record_enrollment(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
    ) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        let mut data = self.data();
        data.certificates
            .insert(certificate.serial.clone(), certificate.clone());
        data.nodes.insert(node.id.clone(), node.clone());
        Ok(())
    }

    fn claim_name(
        &self,
        certificate: &CertificateRecord,
        node: &NodeRecord,
        expected_serial: Option<&str>,
        clear_history: bool,
    ) -> Result<(), StoreError> {
        check_node_id(&node.id)?;
        let mut data = self.data();
        let held = data
            .nodes
            .get(&node.id)
            .map(|n| n.certificate_serial.as_str());
        if held != expected_serial {
            return Err(StoreError::NameClaimed {
                id: node.id.clone(),
            });
        }
        if clear_history {
            data.reports.retain(|(node_id, _), _| *node_id != node.id);
            for other in data.certificates.values_mut() {
                if other.node_id == node.id && other.serial != certificate.serial {
                    other.revoked = true;
                }
            }
        }
        data.certificates
            .insert(certificate.serial.clone(), certificate.clone());
        data.nodes.insert(node.id.clone(), node.clone());
        Ok(())
    }

    fn touch_nodes_with_facts(
        &self,
        seen: &[(String, u64, Option<serde_json::Value>)],
    ) -> Result<usize, StoreError> {
        let mut data = self.data();
        let mut touched = 0;
        for (id, at, facts) in seen {
            let Some(node) = data.nodes.get_mut(id) else {
                continue;
            };
            if !node.note_seen(*at, facts.as_ref()) {
                continue;
            }
            touched += 1;
        }
        Ok(touched)
    }

    fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
        check_node_id(id)?;
        let mut data = self.data();
        data.reports.retain(|(node_id, _), _| node_id != id);
        Ok(data.nodes.remove(id).is_some())
    }

    fn put_report(&self, report: &StoredReport) -> Result<ReportWrite, StoreError> {
        check_node_id(&report.node_id)?;
        let key = (report.node_id.clone(), report.run_id.clone());
        let mut data = self.data();
        if data.reports.contains_key(&key) {
            return Ok(ReportWrite::AlreadyStored);
        }
        data.reports.insert(key, report.clone());
        Ok(ReportWrite::Stored)
    }

    fn record_run(
        &self,
        report: &StoredReport,
        summary: &RunSummary,
    ) -> Result<ReportWrite, StoreError> {
        check_node_id(&report.node_id)?;
        let key = (report.node_id.clone(), report.run_id.clone());
        let mut data = self.data();
        let write = match data.reports.entry(key) {
            std::collections::btree_map::Entry::Occupied(_) => ReportWrite::AlreadyStored,
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(report.clone());
                ReportWrite::Stored
            }
        };
        if let Some(node) = data.nodes.get_mut(&report.node_id) {
            note_run(node, report, summary);
        }
        Ok(write)
    }

    fn report(&self, node_id: &str, run_id: &str) -> Result<Option<StoredReport>, StoreError> {
        check_node_id(node_id)?;
        Ok(self
            .data()
            .reports
            .get(&(node_id.to_string(), run_id.to_string()))
            .cloned())
    }

    fn reports(&self, node_id: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        check_node_id(node_id)?;
        let mut reports: Vec<StoredReport> = self
            .data()
            .reports
            .values()
            .filter(|r| r.node_id == node_id)
            .cloned()
            .collect();
        // The order of the key layout: newest first, then by run id.
        reports
            .sort_by(|a, b| (b.received_unix_ms, &a.run_id).cmp(&(a.received_unix_ms, &b.run_id)));
        reports.truncate(limit);
        Ok(reports)
    }

    fn prune_reports(&self, older_than_unix_ms: u64) -> Result<usize, StoreError> {
        let mut data = self.data();
        let before = data.reports.len();
        data.reports
            .retain(|_, report| report.received_unix_ms >= older_than_unix_ms);
        Ok(before - data.reports.len())
    }

    fn put_revision(&self, revision: &RevisionRecord) -> Result<(), StoreError> {
        self.data()
            .revisions
            .insert(revision.commit.clone(), revision.clone());
        Ok(())
    }

    fn revision(&self, commit: &str) -> Result<Option<RevisionRecord>, StoreError> {
        Ok(self.data().revisions.get(commit).cloned())
    }

    fn revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        let mut revisions: Vec<RevisionRecord> = self.data().revisions.values().cloned().collect();
        revisions.sort_by(|a, b| (b.synced_unix_ms, &a.commit).cmp(&(a.synced_unix_ms, &b.commit)));
        Ok(revisions)
    }

    fn set_current_revision(&self, commit: &str) -> Result<(), StoreError> {
        let mut data = self.data();
        match data.revisions.get(commit) {
            None => Err(StoreError::RevisionUnknown {
                commit: commit.to_string(),
            }),
            Some(revision) if !revision.accepted => Err(StoreError::RevisionRefused {
                commit: commit.to_string(),
            }),
            Some(_) => {
                data.current_revision = Some(commit.to_string());
                Ok(())
            }
        }
    }

    fn current_revision(&self) -> Result<Option<String>, StoreError> {
        Ok(self.data().current_revision.clone())
    }

    fn put_ca(&self, ca: &CaRecord) -> Result<(), StoreError> {
        self.data().ca = Some(ca.clone());
        Ok(())
    }

    fn ca(&self) -> Result<Option<CaRecord>, StoreError> {
        Ok(self.data().ca.clone())
    }

    fn put_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
        self.data()
            .certificates
            .insert(certificate.serial.clone(), certificate.clone());
        Ok(())
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        Ok(self.data().certificates.get(serial).cloned())
    }

    fn revoke_node(&self, node_id: &str) -> Result<Vec<String>, StoreError> {
        let mut revoked = Vec::new();
        for certificate in self.data().certificates.values_mut() {
            if certificate.node_id == node_id && !certificate.revoked {
                certificate.revoked = true;
                revoked.push(certificate.serial.clone());
            }
        }
        Ok(revoked)
    }

    fn prune_certificates(&self, before_unix: u64) -> Result<usize, StoreError> {
        let mut data = self.data();
        let before = data.certificates.len();
        data.certificates
            .retain(|_, certificate| certificate.not_after_unix >= before_unix);
        Ok(before - data.certificates.len())
    }

    fn put_trigger(&self, trigger: &TriggerRecord) -> Result<(), StoreError> {
        self.data()
            .triggers
            .insert(trigger.id.clone(), trigger.clone());
        Ok(())
    }

    fn trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError> {
        Ok(self.data().triggers.get(id).cloned())
    }

    fn triggers(&self) -> Result<Vec<TriggerRecord>, StoreError> {
        Ok(self.data().triggers.values().cloned().collect())
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.data().tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self.data().tokens.values().cloned().collect())
    }

    fn consume_token(&self, id: &str, now_unix: u64) -> Result<TokenRecord, StoreError> {
        let mut data = self.data();
        let Some(token) = data.tokens.get_mut(id) else {
            return Err(StoreError::TokenUnknown);
        };
        if now_unix >= token.expires_unix {
            return Err(StoreError::TokenExpired {
                expires_unix: token.expires_unix,
            });
        }
        match token.uses_left {
            None => {}
            Some(0) => return Err(StoreError::TokenUsedUp),
            Some(uses_left) => token.uses_left = Some(uses_left - 1),
        }
        Ok(token.clone())
    }

    fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.data().tokens.remove(id).is_some())
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.data().tokens.get(id).cloned())
    }

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        Ok(self.data().operators.get(name).cloned())
    }

    fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        Ok(self.data().operators.values().cloned().collect())
    }

    fn swap_operator(
        &self,
        expected: Option<&OperatorRecord>,
        new: &OperatorRecord,
    ) -> Result<bool, StoreError> {
        let mut data = self.data();
        if data.operators.get(&new.name) != expected {
            return Ok(false);
        }
        data.operators.insert(new.name.clone(), new.clone());
        Ok(true)
    }

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.data().audit.push(record.clone());
        Ok(())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let data = self.data();
        let mut records = data.audit.clone();
        // The key order of the sled store: time, then arrival.
        records.sort_by_key(|record| record.time_unix_ms);
        let skip = records.len().saturating_sub(limit);
        Ok(records.split_off(skip))
    }

    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.data()
            .settings
            .insert(name.to_string(), value.to_vec());
        Ok(())
    }

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.data().settings.get(name).cloned())
    }

    // Dashboard sessions.

    fn open_session(
        &self,
        hash: &str,
        token_hash: &str,
        expires_unix_ms: u64,
        now_unix_ms: u64,
    ) -> Result<(), StoreError> {
        let mut data = self.data();
        data.sessions
            .retain(|_, (expires, _)| *expires > now_unix_ms);
        data.sessions
            .insert(hash.to_string(), (expires_unix_ms, token_hash.to_string()));
        Ok(())
    }

    fn session_is_valid(&self, hash: &str, now_unix_ms: u64) -> Result<bool, StoreError> {
        let data = self.data();
        Ok(data
            .sessions
            .get(hash)
            .filter(|(expires, _)| *expires > now_unix_ms)
            .and_then(|(_, token)| data.dashboard_tokens.get(token))
            .is_some_and(|token| !token.is_revoked()))
    }

    fn close_session(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(self.data().sessions.remove(hash).is_some())
    }

    // Dashboard tokens.

    fn add_dashboard_token(&self, token: &DashboardTokenRecord) -> Result<bool, StoreError> {
        let mut data = self.data();
        if data.dashboard_tokens.contains_key(&token.hash) {
            return Ok(false);
        }
        data.dashboard_tokens
            .insert(token.hash.clone(), token.clone());
        Ok(true)
    }

    fn dashboard_token_is_valid(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .data()
            .dashboard_tokens
            .get(hash)
            .is_some_and(|token| !token.is_revoked()))
    }

    fn dashboard_tokens(&self) -> Result<Vec<DashboardTokenRecord>, StoreError> {
        Ok(self.data().dashboard_tokens.values().cloned().collect())
    }

    fn revoke_dashboard_token(
        &self,
        hash: &str,
        revoked_unix_ms: u64,
        revoked_by: &str,
    ) -> Result<DashboardTokenRevocation, StoreError> {
        let mut data = self.data();
        let Some(token) = data.dashboard_tokens.get_mut(hash) else {
            return Ok(DashboardTokenRevocation::Unknown);
        };
        if token.is_revoked() {
            return Ok(DashboardTokenRevocation::AlreadyRevoked(token.clone()));
        }
        token.revoked_unix_ms = Some(revoked_unix_ms);
        token.revoked_by = Some(revoked_by.to_string());
        Ok(DashboardTokenRevocation::Revoked(token.clone()))
    }

    fn settings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .data()
            .settings
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect())
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        Ok(self.data().certificates.values().cloned().collect())
    }

    fn all_reports(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredReport>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some((node_id, run_id)) => Bound::Excluded((node_id.to_string(), run_id.to_string())),
            None => Bound::Unbounded,
        };
        Ok(self
            .data()
            .reports
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, report)| report.clone())
            .collect())
    }

    /// Atomic under the one mutex.
    fn put_ca_if_absent(&self, ca: &CaRecord) -> Result<CaRecord, StoreError> {
        Ok(self.data().ca.get_or_insert_with(|| ca.clone()).clone())
    }
}
