//! The audit log: every admin call, with the operator whose certificate
//! made it, the method, what it acted on, when, and how it ended. The
//! gRPC edge (`service::AdminService`) records each call once it has its
//! outcome, refusals of a revoked or superseded operator credential
//! included; the log lives in the store (`Store::append_audit`), so it is
//! as durable as what it records, and `cms-server audit` reads it back.
//!
//! A call by a node certificate or without any certificate is refused
//! before it names an operator and is not recorded here (it is logged):
//! otherwise anyone could fill the log. Token secrets never reach it, only
//! a token's scope, uses, lifetime and the first characters of its id.

use crate::clock::SharedClock;
use crate::store::{AuditRecord, SharedStore, StoreError};

/// How many records `GetAudit` returns when asked for 0.
pub const DEFAULT_AUDIT_LIMIT: usize = 50;
/// The most records one `GetAudit` returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;
/// The outcome of a call that succeeded.
pub const OK: &str = "ok";

/// Records admin calls and reads them back.
#[derive(Debug, Clone)]
pub struct Audit {
    pub store: SharedStore,
    pub clock: SharedClock,
}

impl Audit {
    /// Records one call: `outcome` is [`OK`] or the refusal's code, with
    /// its message.
    pub fn record(
        &self,
        operator: &str,
        method: &str,
        target: &str,
        outcome: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        self.store.append_audit(&AuditRecord {
            time_unix_ms: self.clock.now_unix_ms(),
            operator: operator.to_owned(),
            method: method.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            message: message.to_owned(),
        })
    }

    /// The last `limit` records ([`DEFAULT_AUDIT_LIMIT`] for 0, at most
    /// [`MAX_AUDIT_LIMIT`]), newest last.
    pub fn last(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = match limit {
            0 => DEFAULT_AUDIT_LIMIT,
            limit => limit.min(MAX_AUDIT_LIMIT),
        };
        self.store.audit(limit)
    }
}

/// What the log says a token creation acted on: never the secret.
pub fn token_target(
    scope: &std::collections::BTreeMap<String, String>,
    uses: u32,
    ttl_seconds: u64,
    token_id: &str,
) -> String {
    let scope: Vec<String> = scope.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "scope={} uses={uses} ttl={ttl_seconds}s id={}",
        scope.join(","),
        token_id.get(..12).unwrap_or(token_id)
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::MemoryStore;

    #[test]
    fn records_read_back_newest_last_with_a_default_and_a_maximum_limit() {
        let clock = Arc::new(ManualClock::at(1_000));
        let audit = Audit {
            store: Arc::new(MemoryStore::default()),
            clock: clock.clone(),
        };
        for index in 0..60 {
            clock.set(1_000 + index);
            audit
                .record("alice", "ListNodes", "", OK, "")
                .expect("record");
        }
        audit
            .record("bob", "RevokeNode", "web-1", "permission_denied", "revoked")
            .expect("record");
        let last = audit.last(0).unwrap();
        assert_eq!(last.len(), DEFAULT_AUDIT_LIMIT);
        let newest = last.last().unwrap();
        assert_eq!(
            (newest.operator.as_str(), newest.method.as_str()),
            ("bob", "RevokeNode")
        );
        assert_eq!(audit.last(2).unwrap()[0].time_unix_ms, 1_059);
        assert_eq!(audit.last(usize::MAX).unwrap().len(), 61);
    }

    #[test]
    fn a_token_target_names_its_scope_and_never_the_secret() {
        let scope = [("env".to_string(), "prod".to_string())].into();
        let secret = "cmst_secret";
        let id = crate::pki::token_id(secret);
        let target = token_target(&scope, 1, 3600, &id);
        assert_eq!(
            target,
            format!("scope=env=prod uses=1 ttl=3600s id={}", &id[..12])
        );
        assert!(!target.contains(secret));
    }
}
