//! The server's Prometheus metrics, served at `GET /metrics` on the HTTP
//! port in the OpenMetrics text format (what Prometheus asks for first; it
//! reads it like its classic text format).
//!
//! Counters and histograms are fed by one-line calls where things happen
//! (`enrollment`, `catalog_answer`, `run_reported`, `sync_finished`, the
//! rollout calls `rollout_started`, `rollout_wave`, `rollout_ended` and
//! `pins`, `restart_acquisition`, and the compile histogram handed to
//! `Catalogs`). What the store already knows —
//! nodes by role and status, the current revision, the catalog cache — is
//! read at scrape time by `render`, so it is never out of date and costs
//! nothing between scrapes.
//!
//! Metric names (all prefixed `cms_`) are a contract with dashboards:
//! `docs/grafana-dashboard.json` queries them and a test checks that every
//! metric it queries is served.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use cms_proto::report::RunRecord;
use cms_proto::v1 as pb;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node_state::{NodeState, role_of};
use crate::store::NodeRecord;

/// What the fleet machinery did since the server started, exported on
/// `/metrics` (`Metrics::register_fleet`). Clones share their counts: the
/// fleet registry and the domain increment the same atomics.
#[derive(Debug, Default, Clone)]
pub struct FleetCounters {
    pub renewals: Counter,
    pub converge_now_sent: Counter,
    pub nodes_marked_gone: Counter,
    pub nodes_removed: Counter,
}

/// The gauges read at each scrape, from the store and the live server.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub nodes: Vec<NodeRecord>,
    /// The revision served, if any.
    pub revision: Option<String>,
    pub cached_catalogs: usize,
    pub watch_channels: usize,
    /// Restart places held, by (environment, role)
    /// (`RestartBudget::places_held`).
    pub restart_places: BTreeMap<(String, String), usize>,
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    role: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabel {
    answer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabel {
    environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutOutcomeLabels {
    environment: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentRoleLabels {
    environment: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentResultLabels {
    environment: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabel {
    revision: String,
}

/// How a catalog request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogAnswer {
    /// A catalog was sent.
    Catalog,
    /// The agent already had it: `NotModified`.
    NotModified,
    /// Refused or failed (not enrolled, no revision, compile error).
    Error,
}

/// One catalog request being answered (see `Metrics::catalog_request`).
#[derive(Debug)]
pub struct CatalogRequest<'a> {
    metrics: &'a Metrics,
    answered: bool,
}

impl CatalogRequest<'_> {
    pub fn answered(mut self, answer: CatalogAnswer) {
        self.answered = true;
        self.metrics.catalog_answer(answer);
    }
}

impl Drop for CatalogRequest<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.catalog_answer(CatalogAnswer::Error);
        }
    }
}

/// The registry and every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    nodes: Family<NodeLabels, Gauge>,
    runs: Family<ResultLabel, Counter>,
    run_duration: Histogram,
    resources: Family<StatusLabel, Counter>,
    catalog_requests: Family<AnswerLabel, Counter>,
    compile_duration: Histogram,
    catalog_cache_entries: Gauge,
    syncs: Family<ResultLabel, Counter>,
    sync_ok: Gauge,
    last_sync: Gauge<f64, AtomicU64>,
    revision: Family<RevisionLabel, Gauge>,
    enrollments: Family<ResultLabel, Counter>,
    watch_streams: Gauge,
    rollouts_started: Family<EnvironmentLabel, Counter>,
    rollouts_ended: Family<RolloutOutcomeLabels, Counter>,
    rollout_active: Family<EnvironmentLabel, Gauge>,
    rollout_wave: Family<EnvironmentLabel, Gauge>,
    pins: Family<EnvironmentLabel, Gauge>,
    restart_acquisitions: Family<EnvironmentResultLabels, Counter>,
    restart_places_held: Family<EnvironmentRoleLabels, Gauge>,
    /// One scrape at a time: a scrape resets and refills the gauges it
    /// computes.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            nodes: Family::default(),
            runs: Family::default(),
            // 0.25 s to about 34 min: a run with nothing to do takes well
            // under a second, one that installs packages minutes.
            run_duration: Histogram::new(exponential_buckets(0.25, 2.0, 14)),
            resources: Family::default(),
            catalog_requests: Family::default(),
            // 1 ms to about 16 s.
            compile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            catalog_cache_entries: Gauge::default(),
            syncs: Family::default(),
            sync_ok: Gauge::default(),
            last_sync: Gauge::default(),
            revision: Family::default(),
            enrollments: Family::default(),
            watch_streams: Gauge::default(),
            rollouts_started: Family::default(),
            rollouts_ended: Family::default(),
            rollout_active: Family::default(),
            rollout_wave: Family::default(),
            pins: Family::default(),
            restart_acquisitions: Family::default(),
            restart_places_held: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "cms_nodes",
            "Enrolled nodes by role tag and the status of their last run (failed, enrolled, changed, unchanged, gone)",
            metrics.nodes.clone(),
        );
        registry.register(
            "cms_runs",
            "Agent runs reported, by result (failed, changed, unchanged)",
            metrics.runs.clone(),
        );
        registry.register(
            "cms_run_duration_seconds",
            "How long reported agent runs took",
            metrics.run_duration.clone(),
        );
        registry.register(
            "cms_resources",
            "Resources in reported runs, by status (changed, failed, skipped, unchanged)",
            metrics.resources.clone(),
        );
        registry.register(
            "cms_catalog_requests",
            "Catalog requests by answer (catalog, not_modified, error)",
            metrics.catalog_requests.clone(),
        );
        registry.register(
            "cms_catalog_compile_duration_seconds",
            "How long catalog compiles took (cache hits are not compiles)",
            metrics.compile_duration.clone(),
        );
        registry.register(
            "cms_catalog_cache_entries",
            "Compiled catalogs held in the cache",
            metrics.catalog_cache_entries.clone(),
        );
        registry.register(
            "cms_roles_syncs",
            "Syncs of the roles repository by result (accepted, refused, failed); an unchanged branch counts as accepted",
            metrics.syncs.clone(),
        );
        registry.register(
            "cms_roles_sync_ok",
            "1 when the last sync of the roles repository was accepted, 0 when it was refused or failed",
            metrics.sync_ok.clone(),
        );
        registry.register(
            "cms_roles_last_sync_timestamp_seconds",
            "When the roles repository was last synced (Unix time)",
            metrics.last_sync.clone(),
        );
        registry.register(
            "cms_roles_revision",
            "The roles revision catalogs are compiled from, as a label; the value is 1",
            metrics.revision.clone(),
        );
        registry.register(
            "cms_enrollments",
            "Enrollment attempts by result (enrolled, refused)",
            metrics.enrollments.clone(),
        );
        registry.register(
            "cms_watch_streams",
            "Agents holding a watch channel open, which converge-now commands reach",
            metrics.watch_streams.clone(),
        );
        registry.register(
            "cms_rollouts_started",
            "Rollouts started, by environment",
            metrics.rollouts_started.clone(),
        );
        registry.register(
            "cms_rollouts_ended",
            "Rollouts ended, by environment and outcome (done, promoted, rolled_back, aborted)",
            metrics.rollouts_ended.clone(),
        );
        registry.register(
            "cms_rollout_active",
            "1 while a rollout of the environment is in progress (running, baking, paused or rolling back)",
            metrics.rollout_active.clone(),
        );
        registry.register(
            "cms_rollout_wave",
            "The wave the environment's active rollout has started (1 is the first); 0 without one",
            metrics.rollout_wave.clone(),
        );
        registry.register(
            "cms_pins",
            "Pins holding nodes of the environment on a revision",
            metrics.pins.clone(),
        );
        registry.register(
            "cms_restart_acquisitions",
            "Requests for a restart place, by environment and result (granted, refused, no_budget: no budget applied to the node)",
            metrics.restart_acquisitions.clone(),
        );
        registry.register(
            "cms_restart_places_held",
            "Restart places held now, by environment and role group",
            metrics.restart_places_held.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    fn environment_label(environment: &str) -> EnvironmentLabel {
        EnvironmentLabel {
            environment: environment.to_string(),
        }
    }

    /// A rollout of `environment` started.
    pub fn rollout_started(&self, environment: &str) {
        let label = Self::environment_label(environment);
        self.rollouts_started.get_or_create(&label).inc();
        self.rollout_active.get_or_create(&label).set(1);
        self.rollout_wave.get_or_create(&label).set(0);
    }

    /// At start: `environment` has a rollout in progress at `wave` (0 before
    /// its first), or none; counts nothing.
    pub fn rollout_restored(&self, environment: &str, active: bool, wave: u32) {
        let label = Self::environment_label(environment);
        self.rollout_active
            .get_or_create(&label)
            .set(i64::from(active));
        self.rollout_wave
            .get_or_create(&label)
            .set(if active { i64::from(wave) } else { 0 });
    }

    /// The active rollout of `environment` started its wave `wave` (1-based).
    pub fn rollout_wave(&self, environment: &str, wave: u32) {
        self.rollout_wave
            .get_or_create(&Self::environment_label(environment))
            .set(i64::from(wave));
    }

    /// A rollout of `environment` ended with `outcome`.
    pub fn rollout_ended(&self, environment: &str, outcome: &str) {
        let label = Self::environment_label(environment);
        self.rollouts_ended
            .get_or_create(&RolloutOutcomeLabels {
                environment: environment.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.rollout_active.get_or_create(&label).set(0);
        self.rollout_wave.get_or_create(&label).set(0);
    }

    /// `environment` has `count` pins now.
    pub fn pins(&self, environment: &str, count: usize) {
        self.pins
            .get_or_create(&Self::environment_label(environment))
            .set(count as i64);
    }

    /// A node of `environment` asked for a restart place and got `answer`.
    pub fn restart_acquisition(&self, environment: &str, answer: &crate::restart_budget::Answer) {
        let result = match answer {
            crate::restart_budget::Answer::Granted { lease_id, .. } if lease_id.is_empty() => {
                "no_budget"
            }
            crate::restart_budget::Answer::Granted { .. } => "granted",
            crate::restart_budget::Answer::Refused { .. } => "refused",
        };
        self.restart_acquisitions
            .get_or_create(&EnvironmentResultLabels {
                environment: environment.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Registers the fleet machinery's counters (the same atomics the
    /// fleet increments).
    pub fn register_fleet(&mut self, counters: &FleetCounters) {
        for (name, help, counter) in [
            (
                "cms_certificate_renewals",
                "Node certificates renewed by their agents",
                &counters.renewals,
            ),
            (
                "cms_converge_now_sent",
                "Converge-now commands sent over watch channels",
                &counters.converge_now_sent,
            ),
            (
                "cms_nodes_marked_gone",
                "Nodes marked gone after not being seen for the gone-after time",
                &counters.nodes_marked_gone,
            ),
            (
                "cms_nodes_removed",
                "Gone nodes removed with their certificates",
                &counters.nodes_removed,
            ),
        ] {
            self.registry.register(name, help, counter.clone());
        }
    }

    /// An enrollment succeeded or was refused.
    pub fn enrollment<T, E>(&self, outcome: &Result<T, E>) {
        let result = if outcome.is_ok() {
            "enrolled"
        } else {
            "refused"
        };
        self.enrollments
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// A catalog request was answered.
    pub fn catalog_answer(&self, answer: CatalogAnswer) {
        let answer = match answer {
            CatalogAnswer::Catalog => "catalog",
            CatalogAnswer::NotModified => "not_modified",
            CatalogAnswer::Error => "error",
        };
        self.catalog_requests
            .get_or_create(&AnswerLabel {
                answer: answer.into(),
            })
            .inc();
    }

    /// Counts one catalog request: as an error unless `answered` is called
    /// before the guard is dropped.
    pub fn catalog_request(&self) -> CatalogRequest<'_> {
        CatalogRequest {
            metrics: self,
            answered: false,
        }
    }

    /// A run report was received and stored for the first time.
    pub fn run_reported(&self, report: &RunRecord) {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for resource in &report.resources {
            *counts.entry(resource.status.as_str()).or_default() += 1;
        }
        for (status, count) in &counts {
            self.resources
                .get_or_create(&StatusLabel {
                    status: (*status).into(),
                })
                .inc_by(*count);
        }
        let result = if counts.contains_key("failed") {
            "failed"
        } else if counts.contains_key("changed") {
            "changed"
        } else {
            "unchanged"
        };
        self.runs
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.run_duration
            .observe(report.duration_ms as f64 / 1000.0);
    }

    /// The histogram `Catalogs` records each compile's duration in.
    pub fn compile_duration(&self) -> Histogram {
        self.compile_duration.clone()
    }

    /// A sync of the roles repository ended.
    pub fn sync_finished<E>(&self, outcome: &Result<pb::SyncResponse, E>) {
        let result = match outcome {
            Ok(response) if response.accepted => "accepted",
            Ok(_) => "refused",
            Err(_) => "failed",
        };
        self.syncs
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.sync_ok.set(i64::from(result == "accepted"));
        self.last_sync
            .set(crate::clock::now_unix_ms() as f64 / 1000.0);
    }

    /// The metrics in the OpenMetrics text format, with the gauges read for
    /// this scrape.
    pub fn render(&self, gauges: &Gauges) -> String {
        let nodes = &gauges.nodes;
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: BTreeMap<(String, NodeState), i64> = BTreeMap::new();
        for node in nodes {
            *counts
                .entry((role_of(node).to_string(), NodeState::of(node)))
                .or_default() += 1;
        }
        self.nodes.clear();
        // Every status appears for every role, so a status that empties
        // shows 0 rather than vanishing.
        let roles: std::collections::BTreeSet<&String> = counts.keys().map(|(r, _)| r).collect();
        for role in roles {
            for status in NodeState::ALL {
                self.nodes
                    .get_or_create(&NodeLabels {
                        role: role.clone(),
                        status: status.as_str().into(),
                    })
                    .set(
                        counts
                            .get(&(role.clone(), status))
                            .copied()
                            .unwrap_or_default(),
                    );
            }
        }
        self.revision.clear();
        if let Some(revision) = &gauges.revision {
            self.revision
                .get_or_create(&RevisionLabel {
                    revision: revision.clone(),
                })
                .set(1);
        }
        self.catalog_cache_entries
            .set(gauges.cached_catalogs as i64);
        self.watch_streams.set(gauges.watch_channels as i64);
        self.restart_places_held.clear();
        for ((environment, role), held) in &gauges.restart_places {
            self.restart_places_held
                .get_or_create(&EnvironmentRoleLabels {
                    environment: environment.clone(),
                    role: role.clone(),
                })
                .set(*held as i64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn sample(text: &str, line_start: &str) -> String {
        text.lines()
            .find(|line| line.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
            .to_string()
    }

    #[test]
    fn rollouts_and_pins_are_served_per_environment() {
        let metrics = Metrics::new();
        metrics.rollout_started("production");
        metrics.rollout_wave("production", 2);
        metrics.rollout_started("staging");
        metrics.rollout_ended("staging", "rolled_back");
        metrics.pins("production", 3);
        let text = metrics.render(&Gauges::default());

        for (line, value) in [
            (
                "cms_rollouts_started_total{environment=\"production\"}",
                "1",
            ),
            ("cms_rollouts_started_total{environment=\"staging\"}", "1"),
            (
                "cms_rollouts_ended_total{environment=\"staging\",outcome=\"rolled_back\"}",
                "1",
            ),
            ("cms_rollout_active{environment=\"production\"}", "1"),
            ("cms_rollout_active{environment=\"staging\"}", "0"),
            ("cms_rollout_wave{environment=\"production\"}", "2"),
            ("cms_rollout_wave{environment=\"staging\"}", "0"),
            ("cms_pins{environment=\"production\"}", "3"),
        ] {
            assert_eq!(sample(&text, line), format!("{line} {value}"), "{text}");
        }
        for family in [
            "# TYPE cms_rollouts_started counter",
            "# TYPE cms_rollouts_ended counter",
            "# TYPE cms_rollout_active gauge",
            "# TYPE cms_rollout_wave gauge",
            "# TYPE cms_pins gauge",
        ] {
            assert!(text.contains(family), "no {family} in:\n{text}");
        }
    }

    #[test]
    fn restart_acquisitions_and_places_held_are_served_per_group() {
        use crate::restart_budget::Answer;
        let metrics = Metrics::new();
        let granted = |lease_id: &str| Answer::Granted {
            lease_id: lease_id.to_string(),
            expires_unix_ms: 1,
            reason: String::new(),
        };
        metrics.restart_acquisition("production", &granted("ab12"));
        metrics.restart_acquisition("production", &granted("cd34"));
        metrics.restart_acquisition("production", &granted(""));
        metrics.restart_acquisition(
            "production",
            &Answer::Refused {
                retry_after_ms: 2000,
                reason: String::new(),
            },
        );
        let gauges = Gauges {
            restart_places: BTreeMap::from([
                (("production".to_string(), "web".to_string()), 2),
                (("staging".to_string(), "web".to_string()), 0),
            ]),
            ..Gauges::default()
        };
        let text = metrics.render(&gauges);
        for (line, value) in [
            (
                "cms_restart_acquisitions_total{environment=\"production\",result=\"granted\"}",
                "2",
            ),
            (
                "cms_restart_acquisitions_total{environment=\"production\",result=\"refused\"}",
                "1",
            ),
            (
                "cms_restart_acquisitions_total{environment=\"production\",result=\"no_budget\"}",
                "1",
            ),
            (
                "cms_restart_places_held{environment=\"production\",role=\"web\"}",
                "2",
            ),
            (
                "cms_restart_places_held{environment=\"staging\",role=\"web\"}",
                "0",
            ),
        ] {
            assert_eq!(sample(&text, line), format!("{line} {value}"), "{text}");
        }
    }
}
