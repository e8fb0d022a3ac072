//! The behaviour every implementation of [`Store`] must show, as one
//! function per behaviour taking a fresh, empty store: the unit tests run
//! them against sled and memory, `integration/tests/store_postgres.rs`
//! against a real PostgreSQL. [`all`] lists them, so a new check runs
//! against every store without being listed twice.

use std::collections::BTreeMap;
use std::sync::Barrier;

use cms_proto::report::RunRecord;

use super::*;

/// A check: it gets a fresh, empty store.
pub type Check = fn(&dyn Store);

/// Every check, by name.
pub fn all() -> Vec<(&'static str, Check)> {
    vec![
        (
            "nodes_round_trip_and_list_in_id_order",
            nodes_round_trip_and_list_in_id_order,
        ),
        (
            "touching_nodes_moves_last_seen_forward_only_and_makes_a_gone_node_active",
            touching_nodes_moves_last_seen_forward_only_and_makes_a_gone_node_active,
        ),
        ("triggers_round_trip", triggers_round_trip),
        (
            "update_node_changes_an_existing_node_and_ignores_an_unknown_one",
            update_node_changes_an_existing_node_and_ignores_an_unknown_one,
        ),
        (
            "a_node_id_with_a_nul_byte_is_refused",
            a_node_id_with_a_nul_byte_is_refused,
        ),
        (
            "reports_list_newest_first_up_to_the_limit",
            reports_list_newest_first_up_to_the_limit,
        ),
        (
            "a_resent_report_is_stored_once_and_keeps_its_first_copy",
            a_resent_report_is_stored_once_and_keeps_its_first_copy,
        ),
        (
            "the_same_run_id_on_two_nodes_is_two_reports",
            the_same_run_id_on_two_nodes_is_two_reports,
        ),
        (
            "recording_a_run_stores_its_report_once_and_notes_it_on_its_node",
            recording_a_run_stores_its_report_once_and_notes_it_on_its_node,
        ),
        (
            "prune_removes_only_older_reports_and_lets_their_run_ids_be_stored_again",
            prune_removes_only_older_reports_and_lets_their_run_ids_be_stored_again,
        ),
        (
            "remove_node_removes_its_reports_and_no_one_elses",
            remove_node_removes_its_reports_and_no_one_elses,
        ),
        (
            "revisions_round_trip_newest_first_and_only_an_accepted_one_becomes_current",
            revisions_round_trip_newest_first_and_only_an_accepted_one_becomes_current,
        ),
        (
            "ca_and_settings_round_trip_and_the_ca_key_stays_out_of_debug_output",
            ca_and_settings_round_trip_and_the_ca_key_stays_out_of_debug_output,
        ),
        (
            "revoking_a_node_revokes_all_its_certificates_once",
            revoking_a_node_revokes_all_its_certificates_once,
        ),
        (
            "a_limited_token_is_used_up_and_then_refused",
            a_limited_token_is_used_up_and_then_refused,
        ),
        (
            "an_unlimited_token_works_until_it_expires",
            an_unlimited_token_works_until_it_expires,
        ),
        (
            "an_unknown_token_is_refused_and_a_removed_token_is_unknown",
            an_unknown_token_is_refused_and_a_removed_token_is_unknown,
        ),
        (
            "concurrent_enrollments_never_use_a_token_more_than_allowed",
            concurrent_enrollments_never_use_a_token_more_than_allowed,
        ),
        (
            "concurrent_claims_of_one_name_let_exactly_one_win",
            concurrent_claims_of_one_name_let_exactly_one_win,
        ),
        (
            "a_claim_fails_when_the_name_changed_since_it_was_read",
            a_claim_fails_when_the_name_changed_since_it_was_read,
        ),
        (
            "a_fresh_claim_clears_the_history_and_revokes_the_old_certificates",
            a_fresh_claim_clears_the_history_and_revokes_the_old_certificates,
        ),
        (
            "two_concurrent_uses_of_a_single_use_token_let_exactly_one_win",
            two_concurrent_uses_of_a_single_use_token_let_exactly_one_win,
        ),
        ("a_token_is_found_by_its_id", a_token_is_found_by_its_id),
        (
            "an_operator_is_written_only_over_the_record_the_writer_read",
            an_operator_is_written_only_over_the_record_the_writer_read,
        ),
        (
            "the_audit_log_gives_the_last_records_newest_last",
            the_audit_log_gives_the_last_records_newest_last,
        ),
        (
            "settings_certificates_and_reports_list_everything_for_a_migration",
            settings_certificates_and_reports_list_everything_for_a_migration,
        ),
        (
            "a_ca_put_if_absent_keeps_the_first_one",
            a_ca_put_if_absent_keeps_the_first_one,
        ),
        (
            "a_dashboard_session_is_valid_until_it_expires_or_closes_and_expired_ones_are_pruned",
            a_dashboard_session_is_valid_until_it_expires_or_closes_and_expired_ones_are_pruned,
        ),
        (
            "revoking_a_dashboard_token_ends_the_sessions_it_opened_and_no_others",
            revoking_a_dashboard_token_ends_the_sessions_it_opened_and_no_others,
        ),
        (
            "a_dashboard_token_is_valid_until_revoked_and_stays_revoked_when_added_again",
            a_dashboard_token_is_valid_until_revoked_and_stays_revoked_when_added_again,
        ),
        (
            "dashboard_tokens_list_in_hash_order_with_their_revocations",
            dashboard_tokens_list_in_hash_order_with_their_revocations,
        ),
        (
            "concurrent_revocations_of_a_dashboard_token_let_exactly_one_revoke_it",
            concurrent_revocations_of_a_dashboard_token_let_exactly_one_revoke_it,
        ),
    ]
}

pub fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn node(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.to_string(),
        tags: tags(&[("role", "api"), ("env", "prod")]),
        facts: serde_json::json!({"os": "debian", "memory_mb": 2048}),
        certificate_serial: format!("serial-{id}"),
        first_seen_unix_ms: 1_000,
        last_seen_unix_ms: 2_000,
        last_run: Some(RunSummary {
            run_id: "run-1".to_string(),
            finished_unix_ms: 1_900,
            catalog_id: "catalog-abc".to_string(),
            revision: "0123abcd".to_string(),
            changed: 3,
            failed: 0,
            skipped: 1,
            noop: false,
        }),
        status: NodeStatus::Active,
        gone_since_unix_ms: None,
        attested: Default::default(),
        environment: String::new(),
    }
}

pub fn report(node_id: &str, run_id: &str, received_unix_ms: u64) -> StoredReport {
    StoredReport {
        node_id: node_id.to_string(),
        run_id: run_id.to_string(),
        received_unix_ms,
        report: RunRecord {
            version: cms_proto::report::RUN_RECORD_VERSION,
            run_id: run_id.to_string(),
            catalog_id: "catalog-abc".to_string(),
            revision: "0123abcd".to_string(),
            started_at_unix_ms: received_unix_ms as i64 - 10,
            duration_ms: 5,
            noop: false,
            note: String::new(),
            trigger_id: String::new(),
            resources: vec![cms_proto::report::ResourceRecord {
                reference: "file:/etc/motd".to_string(),
                status: cms_proto::report::ResourceStatus::Changed,
                diff: "+hello".to_string(),
                error: String::new(),
                duration_ms: 1,
            }],
        },
    }
}

pub fn run_ids(reports: &[StoredReport]) -> Vec<&str> {
    reports.iter().map(|r| r.run_id.as_str()).collect()
}

pub fn revision(commit: &str, accepted: bool, synced_unix_ms: u64) -> RevisionRecord {
    RevisionRecord {
        commit: commit.to_string(),
        accepted,
        errors: if accepted {
            Vec::new()
        } else {
            vec![RevisionError {
                file: "roles/api.toml".to_string(),
                line: 3,
                column: 7,
                message: "unknown key `pakage`".to_string(),
            }]
        },
        synced_unix_ms,
    }
}

pub fn token(id: &str, uses_left: Option<u32>, expires_unix: u64) -> TokenRecord {
    TokenRecord {
        id: id.to_string(),
        scope: tags(&[("env", "staging"), ("role", "*")]),
        expires_unix,
        uses_left,
        created_unix: 100,
    }
}

pub fn certificate(serial: &str, node_id: &str) -> CertificateRecord {
    CertificateRecord {
        serial: serial.to_string(),
        node_id: node_id.to_string(),
        not_after_unix: 9_999_999_999,
        revoked: false,
    }
}

pub fn nodes_round_trip_and_list_in_id_order(store: &dyn Store) {
    store.put_node(&node("b")).unwrap();
    store.put_node(&node("a")).unwrap();
    assert_eq!(store.node("a").unwrap(), Some(node("a")));
    assert_eq!(store.node("missing").unwrap(), None);
    let ids: Vec<String> = store.nodes().unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["a", "b"]);
}

pub fn touching_nodes_moves_last_seen_forward_only_and_makes_a_gone_node_active(store: &dyn Store) {
    store.put_node(&node("a")).unwrap();
    let mut gone = node("b");
    gone.status = NodeStatus::Gone;
    gone.gone_since_unix_ms = Some(2_500);
    store.put_node(&gone).unwrap();
    let touched = store
        .touch_nodes(&[
            ("a".into(), 1_500),
            ("b".into(), 3_000),
            ("unknown".into(), 9_000),
        ])
        .unwrap();
    assert_eq!(touched, 1, "a's stored time is newer; unknown is skipped");
    assert_eq!(store.node("a").unwrap().unwrap().last_seen_unix_ms, 2_000);
    let b = store.node("b").unwrap().unwrap();
    assert_eq!(
        (b.last_seen_unix_ms, b.status, b.gone_since_unix_ms),
        (3_000, NodeStatus::Active, None)
    );
    assert!(store.node("unknown").unwrap().is_none());
}

pub fn triggers_round_trip(store: &dyn Store) {
    let trigger = TriggerRecord {
        id: "t1".into(),
        selector: tags(&[("role", "web")]),
        batch: "50%".into(),
        canary: 1,
        noop: false,
        max_failures: 0,
        state: "running".into(),
        message: String::new(),
        started_unix_ms: 1,
        finished_unix_ms: None,
        batches: vec![vec!["web-1".into()], vec!["web-2".into()]],
        batches_started: 1,
        outcomes: BTreeMap::new(),
    };
    store.put_trigger(&trigger).unwrap();
    assert_eq!(store.trigger("t1").unwrap(), Some(trigger.clone()));
    assert_eq!(store.triggers().unwrap(), vec![trigger]);
    assert_eq!(store.trigger("t2").unwrap(), None);
}

pub fn update_node_changes_an_existing_node_and_ignores_an_unknown_one(store: &dyn Store) {
    store.put_node(&node("a")).unwrap();
    let updated = store
        .update_node("a", |node| node.last_seen_unix_ms = 5_000)
        .unwrap()
        .expect("node exists");
    assert_eq!(updated.last_seen_unix_ms, 5_000);
    assert_eq!(store.node("a").unwrap(), Some(updated));
    assert_eq!(store.update_node("nobody", |_| {}).unwrap(), None);
    assert_eq!(store.node("nobody").unwrap(), None);
}

pub fn a_node_id_with_a_nul_byte_is_refused(store: &dyn Store) {
    let error = store.put_node(&node("a\0b")).unwrap_err();
    assert!(matches!(error, StoreError::InvalidNodeId { .. }), "{error}");
}

pub fn reports_list_newest_first_up_to_the_limit(store: &dyn Store) {
    store.put_report(&report("n1", "old", 1_000)).unwrap();
    store.put_report(&report("n1", "newest", 3_000)).unwrap();
    store.put_report(&report("n1", "middle", 2_000)).unwrap();
    // Another node whose id extends n1's must not leak into n1's list.
    store.put_report(&report("n10", "other", 2_500)).unwrap();

    assert_eq!(
        run_ids(&store.reports("n1", 10).unwrap()),
        ["newest", "middle", "old"]
    );
    assert_eq!(
        run_ids(&store.reports("n1", 2).unwrap()),
        ["newest", "middle"]
    );
    assert_eq!(run_ids(&store.reports("n10", 10).unwrap()), ["other"]);
    assert_eq!(
        store.report("n1", "middle").unwrap(),
        Some(report("n1", "middle", 2_000))
    );
}

pub fn a_resent_report_is_stored_once_and_keeps_its_first_copy(store: &dyn Store) {
    let first = report("n1", "run-7", 1_000);
    assert_eq!(store.put_report(&first).unwrap(), ReportWrite::Stored);
    let resent = StoredReport {
        received_unix_ms: 5_000,
        ..first.clone()
    };
    assert_eq!(
        store.put_report(&resent).unwrap(),
        ReportWrite::AlreadyStored
    );
    assert_eq!(store.reports("n1", 10).unwrap(), [first]);
}

pub fn the_same_run_id_on_two_nodes_is_two_reports(store: &dyn Store) {
    assert_eq!(
        store.put_report(&report("n1", "run-1", 1_000)).unwrap(),
        ReportWrite::Stored
    );
    assert_eq!(
        store.put_report(&report("n2", "run-1", 1_000)).unwrap(),
        ReportWrite::Stored
    );
    assert_eq!(store.reports("n1", 10).unwrap().len(), 1);
    assert_eq!(store.reports("n2", 10).unwrap().len(), 1);
}

pub fn recording_a_run_stores_its_report_once_and_notes_it_on_its_node(store: &dyn Store) {
    store.put_node(&node("n1")).unwrap();
    store.put_node(&node("n10")).unwrap();
    let summary = |run_id: &str, changed: u32| RunSummary {
        run_id: run_id.to_string(),
        finished_unix_ms: 4_000,
        catalog_id: "catalog-def".to_string(),
        revision: "4567cdef".to_string(),
        changed,
        failed: 1,
        skipped: 0,
        noop: false,
    };
    let first = report("n1", "run-2", 5_000);
    assert_eq!(
        store.record_run(&first, &summary("run-2", 7)).unwrap(),
        ReportWrite::Stored
    );
    let noted = store.node("n1").unwrap().expect("n1 is stored");
    assert_eq!(noted.last_run, Some(summary("run-2", 7)));
    assert_eq!(noted.last_seen_unix_ms, 5_000);
    assert_eq!(
        NodeRecord {
            last_run: node("n1").last_run,
            last_seen_unix_ms: node("n1").last_seen_unix_ms,
            ..noted
        },
        node("n1"),
        "nothing else of the node changes"
    );
    assert_eq!(
        store.reports("n1", 10).unwrap(),
        std::slice::from_ref(&first)
    );

    // Re-sent: stored once, its first copy kept, the node noted again.
    let resent = StoredReport {
        received_unix_ms: 6_000,
        ..first.clone()
    };
    assert_eq!(
        store.record_run(&resent, &summary("run-2", 7)).unwrap(),
        ReportWrite::AlreadyStored
    );
    assert_eq!(store.reports("n1", 10).unwrap(), [first]);
    assert_eq!(store.node("n1").unwrap().unwrap().last_seen_unix_ms, 6_000);

    // A report received earlier becomes the last run, but does not move
    // the last-seen time back.
    assert_eq!(
        store
            .record_run(&report("n1", "run-1b", 3_000), &summary("run-1b", 0))
            .unwrap(),
        ReportWrite::Stored
    );
    let noted = store.node("n1").unwrap().unwrap();
    assert_eq!(noted.last_run, Some(summary("run-1b", 0)));
    assert_eq!(noted.last_seen_unix_ms, 6_000);
    assert_eq!(store.reports("n1", 10).unwrap().len(), 2);

    // A node that is not stored: the report is, and no node appears.
    assert_eq!(
        store
            .record_run(&report("ghost", "run-1", 1_000), &summary("run-1", 0))
            .unwrap(),
        ReportWrite::Stored
    );
    assert_eq!(store.node("ghost").unwrap(), None);
    assert_eq!(store.reports("ghost", 10).unwrap().len(), 1);

    // Another node, whose id extends n1's, is untouched.
    assert_eq!(store.node("n10").unwrap(), Some(node("n10")));
    assert!(store.reports("n10", 10).unwrap().is_empty());
}

pub fn prune_removes_only_older_reports_and_lets_their_run_ids_be_stored_again(store: &dyn Store) {
    store.put_report(&report("n1", "a", 1_000)).unwrap();
    store.put_report(&report("n1", "b", 2_000)).unwrap();
    store.put_report(&report("n2", "c", 1_500)).unwrap();
    store.put_report(&report("n2", "d", 3_000)).unwrap();

    assert_eq!(store.prune_reports(2_000).unwrap(), 2);
    assert_eq!(run_ids(&store.reports("n1", 10).unwrap()), ["b"]);
    assert_eq!(run_ids(&store.reports("n2", 10).unwrap()), ["d"]);
    assert_eq!(store.report("n1", "a").unwrap(), None);
    assert_eq!(
        store.put_report(&report("n1", "a", 4_000)).unwrap(),
        ReportWrite::Stored
    );
}

pub fn remove_node_removes_its_reports_and_no_one_elses(store: &dyn Store) {
    store.put_node(&node("n1")).unwrap();
    store.put_node(&node("n10")).unwrap();
    store.put_report(&report("n1", "a", 1_000)).unwrap();
    store.put_report(&report("n1", "b", 2_000)).unwrap();
    store.put_report(&report("n10", "c", 1_000)).unwrap();

    assert!(store.remove_node("n1").unwrap());
    assert_eq!(store.node("n1").unwrap(), None);
    assert!(store.reports("n1", 10).unwrap().is_empty());
    assert_eq!(store.report("n1", "a").unwrap(), None);
    assert_eq!(run_ids(&store.reports("n10", 10).unwrap()), ["c"]);
    assert!(store.node("n10").unwrap().is_some());
    assert!(!store.remove_node("n1").unwrap());
}

pub fn revisions_round_trip_newest_first_and_only_an_accepted_one_becomes_current(
    store: &dyn Store,
) {
    assert_eq!(store.current_revision().unwrap(), None);
    store.put_revision(&revision("good1", true, 1_000)).unwrap();
    store.put_revision(&revision("bad", false, 2_000)).unwrap();

    assert_eq!(
        store.revision("bad").unwrap(),
        Some(revision("bad", false, 2_000))
    );
    let commits: Vec<String> = store
        .revisions()
        .unwrap()
        .into_iter()
        .map(|r| r.commit)
        .collect();
    assert_eq!(commits, ["bad", "good1"]);

    store.set_current_revision("good1").unwrap();
    let refused = store.set_current_revision("bad").unwrap_err();
    assert!(
        matches!(refused, StoreError::RevisionRefused { .. }),
        "{refused}"
    );
    let unknown = store.set_current_revision("never-synced").unwrap_err();
    assert!(
        matches!(unknown, StoreError::RevisionUnknown { .. }),
        "{unknown}"
    );
    assert_eq!(store.current_revision().unwrap().as_deref(), Some("good1"));
}

pub fn ca_and_settings_round_trip_and_the_ca_key_stays_out_of_debug_output(store: &dyn Store) {
    assert_eq!(store.ca().unwrap(), None);
    let ca = CaRecord {
        certificate_pem: "-----BEGIN CERTIFICATE-----".to_string(),
        private_key_pem: "-----BEGIN PRIVATE KEY----- secret".to_string(),
    };
    store.put_ca(&ca).unwrap();
    assert_eq!(store.ca().unwrap(), Some(ca.clone()));
    assert!(!format!("{ca:?}").contains("secret"));

    store.put_setting("admin_credential", b"hash").unwrap();
    assert_eq!(
        store.get_setting("admin_credential").unwrap().as_deref(),
        Some(&b"hash"[..])
    );
    assert_eq!(store.get_setting("absent").unwrap(), None);
}

pub fn revoking_a_node_revokes_all_its_certificates_once(store: &dyn Store) {
    store.put_certificate(&certificate("s1", "n1")).unwrap();
    store.put_certificate(&certificate("s2", "n1")).unwrap();
    store.put_certificate(&certificate("s3", "n2")).unwrap();

    let mut revoked = store.revoke_node("n1").unwrap();
    revoked.sort();
    assert_eq!(revoked, ["s1", "s2"]);
    assert!(store.is_revoked("s1").unwrap());
    assert!(store.is_revoked("s2").unwrap());
    assert!(!store.is_revoked("s3").unwrap());
    assert!(!store.is_revoked("unknown").unwrap());
    assert_eq!(store.revoke_node("n1").unwrap(), Vec::<String>::new());
    assert!(store.certificate("s1").unwrap().expect("recorded").revoked);
}

pub fn a_limited_token_is_used_up_and_then_refused(store: &dyn Store) {
    let id = cms_roles::digest::sha256_hex(b"secret");
    store.put_token(&token(&id, Some(2), 1_000)).unwrap();

    assert_eq!(store.consume_token(&id, 500).unwrap().uses_left, Some(1));
    assert_eq!(store.consume_token(&id, 500).unwrap().uses_left, Some(0));
    let error = store.consume_token(&id, 500).unwrap_err();
    assert!(matches!(error, StoreError::TokenUsedUp), "{error}");
    assert_eq!(store.tokens().unwrap(), [token(&id, Some(0), 1_000)]);
}

pub fn an_unlimited_token_works_until_it_expires(store: &dyn Store) {
    store.put_token(&token("t", None, 1_000)).unwrap();
    for _ in 0..3 {
        assert_eq!(store.consume_token("t", 999).unwrap().uses_left, None);
    }
    let error = store.consume_token("t", 1_000).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::TokenExpired {
                expires_unix: 1_000
            }
        ),
        "{error}"
    );
}

pub fn an_unknown_token_is_refused_and_a_removed_token_is_unknown(store: &dyn Store) {
    let error = store.consume_token("nope", 0).unwrap_err();
    assert!(matches!(error, StoreError::TokenUnknown), "{error}");

    store.put_token(&token("t", Some(5), 1_000)).unwrap();
    assert!(store.remove_token("t").unwrap());
    let error = store.consume_token("t", 0).unwrap_err();
    assert!(matches!(error, StoreError::TokenUnknown), "{error}");
}

pub fn concurrent_enrollments_never_use_a_token_more_than_allowed(store: &dyn Store) {
    const USES: u32 = 5;
    const THREADS: usize = 8;
    const ATTEMPTS_PER_THREAD: usize = 4;
    store.put_token(&token("t", Some(USES), 1_000)).unwrap();

    let barrier = Barrier::new(THREADS);
    let outcomes: Vec<Result<TokenRecord, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    (0..ATTEMPTS_PER_THREAD)
                        .map(|_| store.consume_token("t", 10))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("thread"))
            .collect()
    });

    let mut uses_left_after_each_success: Vec<u32> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok())
        .map(|token| token.uses_left.expect("limited"))
        .collect();
    uses_left_after_each_success.sort();
    assert_eq!(uses_left_after_each_success, [0, 1, 2, 3, 4]);
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(matches!(error, StoreError::TokenUsedUp), "{error}");
        }
    }
    assert_eq!(
        store.consume_token("t", 10).unwrap_err().to_string(),
        "Failed to consume the enrollment token: it has no uses left"
    );
}

pub fn concurrent_claims_of_one_name_let_exactly_one_win(store: &dyn Store) {
    const THREADS: usize = 8;
    let barrier = Barrier::new(THREADS);
    let outcomes: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut claimed = node("web-1");
                    claimed.certificate_serial = format!("s{i}");
                    barrier.wait();
                    store.claim_name(
                        &certificate(&format!("s{i}"), "web-1"),
                        &claimed,
                        None,
                        true,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    let winners: Vec<usize> = (0..THREADS).filter(|i| outcomes[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(matches!(error, StoreError::NameClaimed { .. }), "{error}");
        }
    }
    let winner = format!("s{}", winners[0]);
    let stored = store.node("web-1").unwrap().expect("claimed");
    assert_eq!(stored.certificate_serial, winner);
    assert!(!store.is_revoked(&winner).unwrap());
    // The losers' certificates were never recorded.
    for i in (0..THREADS).filter(|i| *i != winners[0]) {
        assert_eq!(store.certificate(&format!("s{i}")).unwrap(), None);
    }
}

pub fn a_claim_fails_when_the_name_changed_since_it_was_read(store: &dyn Store) {
    let mut first = node("web-1");
    first.certificate_serial = "s1".into();
    store
        .claim_name(&certificate("s1", "web-1"), &first, None, false)
        .unwrap();
    // Claimed as if still free: refused, nothing written.
    let mut second = node("web-1");
    second.certificate_serial = "s2".into();
    let error = store
        .claim_name(&certificate("s2", "web-1"), &second, None, true)
        .unwrap_err();
    assert!(matches!(error, StoreError::NameClaimed { .. }), "{error}");
    assert_eq!(store.certificate("s2").unwrap(), None);
    assert!(!store.is_revoked("s1").unwrap());
    // Claimed over what is really there: written.
    store
        .claim_name(&certificate("s2", "web-1"), &second, Some("s1"), false)
        .unwrap();
    assert_eq!(
        store.node("web-1").unwrap().unwrap().certificate_serial,
        "s2"
    );
}

pub fn a_fresh_claim_clears_the_history_and_revokes_the_old_certificates(store: &dyn Store) {
    let mut old = node("web-1");
    old.certificate_serial = "s1".into();
    old.attested = tags(&[("instance_id", "i-1")]);
    store
        .claim_name(&certificate("s1", "web-1"), &old, None, false)
        .unwrap();
    store.put_certificate(&certificate("s0", "web-1")).unwrap();
    store.put_report(&report("web-1", "run-1", 1_000)).unwrap();
    store.put_report(&report("web-2", "run-1", 1_000)).unwrap();
    assert_eq!(
        store.node("web-1").unwrap().unwrap().attested,
        tags(&[("instance_id", "i-1")])
    );
    let mut new = node("web-1");
    new.certificate_serial = "s2".into();
    store
        .claim_name(&certificate("s2", "web-1"), &new, Some("s1"), true)
        .unwrap();
    assert!(store.is_revoked("s0").unwrap());
    assert!(store.is_revoked("s1").unwrap());
    assert!(!store.is_revoked("s2").unwrap());
    assert_eq!(store.reports("web-1", 10).unwrap(), []);
    assert_eq!(store.reports("web-2", 10).unwrap().len(), 1);
    assert_eq!(store.node("web-1").unwrap().unwrap(), new);
}

pub fn two_concurrent_uses_of_a_single_use_token_let_exactly_one_win(store: &dyn Store) {
    for round in 0..20 {
        let id = format!("single-{round}");
        store.put_token(&token(&id, Some(1), 1_000)).unwrap();
        let barrier = Barrier::new(2);
        let outcomes: Vec<Result<TokenRecord, StoreError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (barrier, id) = (&barrier, &id);
                    scope.spawn(move || {
                        barrier.wait();
                        store.consume_token(id, 10)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("thread"))
                .collect()
        });
        let won = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|outcome| matches!(outcome, Err(StoreError::TokenUsedUp))),
            "round {round}: {outcomes:?}"
        );
    }
}

pub fn a_token_is_found_by_its_id(store: &dyn Store) {
    store.put_token(&token("a", Some(1), 1_000)).unwrap();
    store.put_token(&token("b", None, 2_000)).unwrap();
    assert_eq!(store.token("b").unwrap(), Some(token("b", None, 2_000)));
    assert_eq!(store.token("c").unwrap(), None);
}

pub fn operator(name: &str, serial: &str) -> OperatorRecord {
    OperatorRecord {
        name: name.to_string(),
        serial: serial.to_string(),
        created_unix: 100,
        not_after_unix: 9_999_999_999,
        revoked_unix: None,
        added_by: "admin".to_string(),
    }
}

pub fn an_operator_is_written_only_over_the_record_the_writer_read(store: &dyn Store) {
    let alice = operator("alice", "s1");
    assert!(store.swap_operator(None, &alice).unwrap());
    // A second add of the same name finds it taken.
    assert!(!store.swap_operator(None, &operator("alice", "s9")).unwrap());
    let revoked = OperatorRecord {
        revoked_unix: Some(200),
        ..alice.clone()
    };
    assert!(store.swap_operator(Some(&alice), &revoked).unwrap());
    // A renewal that read the record before the revocation loses.
    let renewed = operator("alice", "s2");
    assert!(!store.swap_operator(Some(&alice), &renewed).unwrap());
    assert_eq!(store.operator("alice").unwrap(), Some(revoked.clone()));
    store
        .swap_operator(None, &operator("bob", "s3"))
        .unwrap()
        .then_some(())
        .expect("bob added");
    let names: Vec<String> = store
        .operators()
        .unwrap()
        .into_iter()
        .map(|operator| operator.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(store.operator("carol").unwrap(), None);
}

pub fn the_audit_log_gives_the_last_records_newest_last(store: &dyn Store) {
    let record = |time_unix_ms: u64, method: &str| AuditRecord {
        time_unix_ms,
        operator: "alice".to_string(),
        method: method.to_string(),
        target: String::new(),
        outcome: "ok".to_string(),
        message: String::new(),
    };
    assert_eq!(store.audit(10).unwrap(), []);
    store.append_audit(&record(2_000, "ListNodes")).unwrap();
    store.append_audit(&record(1_000, "CreateToken")).unwrap();
    // Same millisecond: kept in the order they came.
    store.append_audit(&record(3_000, "RevokeNode")).unwrap();
    store.append_audit(&record(3_000, "Sync")).unwrap();
    let methods = |records: Vec<AuditRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.method).collect()
    };
    assert_eq!(
        methods(store.audit(10).unwrap()),
        ["CreateToken", "ListNodes", "RevokeNode", "Sync"]
    );
    assert_eq!(methods(store.audit(2).unwrap()), ["RevokeNode", "Sync"]);
}

pub fn settings_certificates_and_reports_list_everything_for_a_migration(store: &dyn Store) {
    store.put_setting("b", b"2").unwrap();
    store.put_setting("a", b"1").unwrap();
    store
        .put_environment(&EnvironmentRecord {
            name: "prod".into(),
            stable: "c1".into(),
            ..Default::default()
        })
        .unwrap();
    let names: Vec<String> = store
        .settings()
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["a", "b", "environment/prod"]);
    assert_eq!(store.settings().unwrap()[0].1, b"1");

    store.put_certificate(&certificate("s2", "n1")).unwrap();
    store.put_certificate(&certificate("s1", "n2")).unwrap();
    assert_eq!(
        store.certificates().unwrap(),
        [certificate("s1", "n2"), certificate("s2", "n1")]
    );

    store.put_report(&report("n10", "a", 5_000)).unwrap();
    store.put_report(&report("n1", "b", 1_000)).unwrap();
    store.put_report(&report("n1", "a", 2_000)).unwrap();
    store.put_report(&report("n2", "a", 3_000)).unwrap();
    let keys = |reports: Vec<StoredReport>| -> Vec<(String, String)> {
        reports.into_iter().map(|r| (r.node_id, r.run_id)).collect()
    };
    let pair = |n: &str, r: &str| (n.to_string(), r.to_string());
    assert_eq!(
        keys(store.all_reports(None, 2).unwrap()),
        [pair("n1", "a"), pair("n1", "b")]
    );
    assert_eq!(
        keys(store.all_reports(Some(("n1", "b")), 2).unwrap()),
        [pair("n10", "a"), pair("n2", "a")]
    );
    assert_eq!(store.all_reports(Some(("n2", "a")), 2).unwrap(), []);
    assert_eq!(
        store.all_reports(None, 10).unwrap()[0],
        report("n1", "a", 2_000)
    );
}

pub fn a_ca_put_if_absent_keeps_the_first_one(store: &dyn Store) {
    let first = CaRecord {
        certificate_pem: "first certificate".to_string(),
        private_key_pem: "first key".to_string(),
    };
    let second = CaRecord {
        certificate_pem: "second certificate".to_string(),
        private_key_pem: "second key".to_string(),
    };
    assert_eq!(store.put_ca_if_absent(&first).unwrap(), first);
    assert_eq!(store.put_ca_if_absent(&second).unwrap(), first);
    assert_eq!(store.ca().unwrap(), Some(first));
}

pub fn a_dashboard_session_is_valid_until_it_expires_or_closes_and_expired_ones_are_pruned(
    store: &dyn Store,
) {
    let token = "e".repeat(64);
    assert!(
        store
            .add_dashboard_token(&dashboard_token(&token, 500))
            .unwrap()
    );
    let (short, long) = ("a".repeat(64), "b".repeat(64));
    store.open_session(&short, &token, 2_000, 1_000).unwrap();
    store.open_session(&long, &token, 9_000, 1_000).unwrap();
    assert!(store.session_is_valid(&short, 1_999).unwrap());
    assert!(!store.session_is_valid(&short, 2_000).unwrap(), "expired");
    assert!(!store.session_is_valid(&"c".repeat(64), 1_000).unwrap());
    // Opening a session at 3,000 prunes the one expired at 2,000: it does
    // not come back whatever time is asked about.
    store
        .open_session(&"d".repeat(64), &token, 9_000, 3_000)
        .unwrap();
    assert!(!store.session_is_valid(&short, 0).unwrap(), "pruned");
    assert!(store.session_is_valid(&long, 3_000).unwrap());
    assert!(store.close_session(&long).unwrap());
    assert!(!store.session_is_valid(&long, 3_000).unwrap(), "closed");
    assert!(!store.close_session(&long).unwrap(), "closed once");
}

pub fn revoking_a_dashboard_token_ends_the_sessions_it_opened_and_no_others(store: &dyn Store) {
    let (revoked, kept, unknown) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
    for token in [&revoked, &kept] {
        assert!(
            store
                .add_dashboard_token(&dashboard_token(token, 500))
                .unwrap()
        );
    }
    let sessions = ["a".repeat(64), "b".repeat(64), "c".repeat(64)];
    store
        .open_session(&sessions[0], &revoked, 9_000, 1_000)
        .unwrap();
    store
        .open_session(&sessions[1], &kept, 9_000, 1_000)
        .unwrap();
    // A session naming a token the store does not hold is no session.
    store
        .open_session(&sessions[2], &unknown, 9_000, 1_000)
        .unwrap();
    assert!(store.session_is_valid(&sessions[0], 2_000).unwrap());
    assert!(store.session_is_valid(&sessions[1], 2_000).unwrap());
    assert!(!store.session_is_valid(&sessions[2], 2_000).unwrap());
    store
        .revoke_dashboard_token(&revoked, 3_000, "bob")
        .unwrap();
    assert!(
        !store.session_is_valid(&sessions[0], 3_000).unwrap(),
        "the session of the revoked token ended"
    );
    assert!(
        store.session_is_valid(&sessions[1], 3_000).unwrap(),
        "the other token's session goes on"
    );
}

/// A dashboard token record, made by `alice` at `created_unix_ms`, not
/// revoked.
pub fn dashboard_token(hash: &str, created_unix_ms: u64) -> DashboardTokenRecord {
    DashboardTokenRecord {
        hash: hash.to_string(),
        created_unix_ms,
        created_by: "alice".to_string(),
        revoked_unix_ms: None,
        revoked_by: None,
    }
}

pub fn a_dashboard_token_is_valid_until_revoked_and_stays_revoked_when_added_again(
    store: &dyn Store,
) {
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    assert!(
        store
            .add_dashboard_token(&dashboard_token(&a, 1_000))
            .unwrap()
    );
    assert!(
        store
            .add_dashboard_token(&dashboard_token(&b, 2_000))
            .unwrap()
    );
    assert!(store.dashboard_token_is_valid(&a).unwrap());
    assert!(store.dashboard_token_is_valid(&b).unwrap());
    assert!(!store.dashboard_token_is_valid(&"c".repeat(64)).unwrap());
    // A prefix of a hash is not the hash.
    assert!(!store.dashboard_token_is_valid(&a[..12]).unwrap());

    let mut revoked = dashboard_token(&a, 1_000);
    revoked.revoked_unix_ms = Some(5_000);
    revoked.revoked_by = Some("bob".into());
    assert_eq!(
        store.revoke_dashboard_token(&a, 5_000, "bob").unwrap(),
        DashboardTokenRevocation::Revoked(revoked.clone())
    );
    assert!(!store.dashboard_token_is_valid(&a).unwrap(), "revoked");
    assert!(store.dashboard_token_is_valid(&b).unwrap(), "only a");
    // Revoked again: the first revocation stands.
    assert_eq!(
        store.revoke_dashboard_token(&a, 9_000, "carol").unwrap(),
        DashboardTokenRevocation::AlreadyRevoked(revoked.clone())
    );
    assert_eq!(
        store
            .revoke_dashboard_token(&"c".repeat(64), 9_000, "carol")
            .unwrap(),
        DashboardTokenRevocation::Unknown
    );
    // Adding it again (a second import of an old file) changes nothing.
    assert!(
        !store
            .add_dashboard_token(&dashboard_token(&a, 7_000))
            .unwrap()
    );
    assert!(
        !store.dashboard_token_is_valid(&a).unwrap(),
        "still revoked"
    );
    assert_eq!(store.dashboard_tokens().unwrap()[0], revoked);
}

pub fn dashboard_tokens_list_in_hash_order_with_their_revocations(store: &dyn Store) {
    assert_eq!(store.dashboard_tokens().unwrap(), []);
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    // Added as a migration copies them: a revoked one stays revoked.
    let mut revoked = dashboard_token(&b, 2_000);
    revoked.revoked_unix_ms = Some(3_000);
    revoked.revoked_by = Some("bob".into());
    let mut imported = dashboard_token(&c, 500);
    imported.created_by = IMPORTED_DASHBOARD_TOKEN.into();
    for token in [&imported, &revoked, &dashboard_token(&a, 1_000)] {
        assert!(store.add_dashboard_token(token).unwrap());
    }
    assert_eq!(
        store.dashboard_tokens().unwrap(),
        [dashboard_token(&a, 1_000), revoked, imported]
    );
    assert!(!store.dashboard_token_is_valid(&b).unwrap());
    assert!(store.dashboard_token_is_valid(&c).unwrap());
}

pub fn concurrent_revocations_of_a_dashboard_token_let_exactly_one_revoke_it(store: &dyn Store) {
    for round in 0..20u64 {
        let hash = format!("{round:064x}");
        store
            .add_dashboard_token(&dashboard_token(&hash, 1_000))
            .unwrap();
        let barrier = Barrier::new(2);
        let outcomes: Vec<DashboardTokenRevocation> = std::thread::scope(|scope| {
            let handles: Vec<_> = ["bob", "carol"]
                .into_iter()
                .map(|operator| {
                    let (barrier, hash) = (&barrier, &hash);
                    scope.spawn(move || {
                        barrier.wait();
                        store.revoke_dashboard_token(hash, 2_000, operator).unwrap()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("thread"))
                .collect()
        });
        let winner = outcomes
            .iter()
            .find_map(|outcome| match outcome {
                DashboardTokenRevocation::Revoked(token) => Some(token.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("round {round}: none revoked it: {outcomes:?}"));
        assert!(
            outcomes.contains(&DashboardTokenRevocation::AlreadyRevoked(winner.clone())),
            "round {round}: the other sees the winner's revocation: {outcomes:?}"
        );
        assert_eq!(
            store.dashboard_tokens().unwrap().last(),
            Some(&winner),
            "round {round}"
        );
    }
}

/// Puts a record or more of every kind in `store` (1,203 reports, more
/// than two pages of a migration), as `store migrate` tests copy them.
pub fn fill_with_every_kind(store: &dyn Store) {
    store.put_node(&node("n1")).unwrap();
    store.put_node(&node("n2")).unwrap();
    for i in 0..1_203u64 {
        store
            .put_report(&report(&format!("n{}", i % 3), &format!("r{i}"), 1_000 + i))
            .unwrap();
    }
    store.put_revision(&revision("c1", true, 1_000)).unwrap();
    store.put_revision(&revision("c2", false, 2_000)).unwrap();
    store.set_current_revision("c1").unwrap();
    store
        .put_ca(&CaRecord {
            certificate_pem: "cert".into(),
            private_key_pem: "key".into(),
        })
        .unwrap();
    store.put_certificate(&certificate("s1", "n1")).unwrap();
    store.put_certificate(&certificate("s2", "n2")).unwrap();
    store.revoke_node("n2").unwrap();
    store.put_token(&token("t1", Some(3), 9_000)).unwrap();
    store.consume_token("t1", 10).unwrap();
    store.swap_operator(None, &operator("alice", "s9")).unwrap();
    for (time, method) in [(2_000, "b"), (1_000, "a"), (2_000, "c")] {
        store
            .append_audit(&AuditRecord {
                time_unix_ms: time,
                operator: "alice".into(),
                method: method.into(),
                target: String::new(),
                outcome: "ok".into(),
                message: String::new(),
            })
            .unwrap();
    }
    store
        .add_dashboard_token(&dashboard_token(&"d".repeat(64), 1_000))
        .unwrap();
    store
        .add_dashboard_token(&dashboard_token(&"e".repeat(64), 2_000))
        .unwrap();
    store
        .revoke_dashboard_token(&"e".repeat(64), 3_000, "alice")
        .unwrap();
    store.put_setting("admin_credential", b"x").unwrap();
    store
        .put_environment(&EnvironmentRecord {
            name: "prod".into(),
            stable: "c1".into(),
            ..Default::default()
        })
        .unwrap();
}
