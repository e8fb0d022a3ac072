//! The last run's figures for node_exporter's textfile collector: parsed
//! back with a Prometheus text-format parser, replaced atomically, and
//! written to the default place only when node-exporter's folder exists.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cms_agent::report::{ResourceResult, RunReport, Status};
use cms_agent::textfile::{Textfile, record, render};
use openmetrics_parser::{PrometheusType, PrometheusValue};

fn report(statuses: &[Status]) -> RunReport {
    let resources: Vec<ResourceResult> = statuses
        .iter()
        .enumerate()
        .map(|(i, status)| ResourceResult {
            reference: format!("file:/etc/app-{i}.conf"),
            status: *status,
            changes: Vec::new(),
            not_done: Vec::new(),
            refresh: None,
            error: None,
            reason: None,
            duration_ms: 1.0,
        })
        .collect();
    RunReport {
        run_id: "web-1-1".into(),
        catalog_id: "c0ffee\"\\".into(),
        roles: vec!["web".into()],
        noop: false,
        started_at_unix_ms: 1_764_000_000_500,
        duration_ms: 2500.0,
        summary: RunReport::summarize(&resources),
        resources,
    }
}

/// name{labels} → value, from the text format.
fn parse(text: &str) -> std::collections::BTreeMap<String, f64> {
    let exposition = openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e:?}\n{text}"));
    let mut values = std::collections::BTreeMap::new();
    for (name, family) in &exposition.families {
        assert_eq!(
            family.family_type,
            PrometheusType::Gauge,
            "{name} is a gauge"
        );
        for sample in family.iter_samples() {
            let labels: Vec<String> = sample
                .get_labelset()
                .expect("bound to its family")
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let PrometheusValue::Gauge(value) = &sample.value else {
                panic!("{name} has a gauge value");
            };
            values.insert(format!("{name}{labels:?}"), value.as_f64());
        }
    }
    values
}

#[test]
fn a_run_with_a_failure_is_written_as_gauges_the_text_format_parser_reads() {
    let text = render(&report(&[
        Status::Changed,
        Status::Failed,
        Status::Skipped,
        Status::Unchanged,
        Status::Unchanged,
    ]));
    let values = parse(&text);
    let get = |key: &str| {
        *values
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing in\n{text}"))
    };
    assert_eq!(
        get("cms_agent_last_run_timestamp_seconds[]"),
        1_764_000_000.5
    );
    assert_eq!(get("cms_agent_last_run_duration_seconds[]"), 2.5);
    assert_eq!(get("cms_agent_last_run_resources[\"status=changed\"]"), 1.0);
    assert_eq!(get("cms_agent_last_run_resources[\"status=failed\"]"), 1.0);
    assert_eq!(get("cms_agent_last_run_resources[\"status=skipped\"]"), 1.0);
    assert_eq!(
        get("cms_agent_last_run_resources[\"status=unchanged\"]"),
        2.0
    );
    assert_eq!(get("cms_agent_last_run_success[]"), 0.0);
    assert_eq!(get("cms_agent_last_run_exit_code[]"), 6.0);
    assert_eq!(get("cms_agent_last_run_noop[]"), 0.0);
    // The catalog id is a label value: quotes and backslashes escaped.
    let info = openmetrics_parser::prometheus::parse_prometheus(&text).expect("parsed");
    let labels = info.families["cms_agent_last_run_info"]
        .iter_samples()
        .next()
        .expect("one sample")
        .get_labelset()
        .expect("labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<Vec<_>>();
    assert_eq!(
        labels,
        vec![("catalog_id".to_string(), "c0ffee\"\\".to_string())]
    );
}

#[test]
fn a_configured_file_is_replaced_atomically_world_readable_with_nothing_left_beside_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cms_agent.prom");
    std::fs::write(&path, "stale").expect("write");
    let textfile = Textfile::Configured(path.clone());
    record(&textfile, &report(&[Status::Changed]));
    let text = std::fs::read_to_string(&path).expect("written");
    assert_eq!(
        parse(&text)["cms_agent_last_run_success[]"],
        1.0,
        "a run without failures: {text}"
    );
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "node_exporter's user reads it");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["cms_agent.prom".to_string()]);
}

#[test]
fn the_default_file_is_written_only_where_node_exporter_reads_and_an_empty_setting_turns_it_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let absent = dir.path().join("node-exporter/cms_agent.prom");
    let textfile = Textfile::Default(absent.clone());
    assert_eq!(textfile.target(), None);
    record(&textfile, &report(&[Status::Unchanged]));
    assert!(!absent.parent().expect("folder").exists());

    std::fs::create_dir(absent.parent().expect("folder")).expect("mkdir");
    assert_eq!(textfile.target(), Some(absent.as_path()));
    record(&textfile, &report(&[Status::Unchanged]));
    assert!(absent.is_file());

    assert_eq!(
        Textfile::from_setting(None),
        Textfile::Default(Path::new("/var/lib/prometheus/node-exporter/cms_agent.prom").into())
    );
    assert_eq!(Textfile::from_setting(Some("")), Textfile::Off);
    assert_eq!(Textfile::Off.target(), None);
}
