//! The cms server: roles from a git repository, catalogs for enrolled nodes,
//! and the reports they send back; and its command line: `cli` (the flags
//! as written), `resolve` (every default decided once), `commands`,
//! `check`, `trigger_cli`, `diff_cli`, `rollout_cli`, `pin_cli`, `admin`.
//!
//! The serving half is layered: `server` wires the APIs (`service` for
//! gRPC, `watch`, `http`, `dashboard`) to the domain (`enrollment`,
//! `nodes`, `reports`, `triggers`, `operators`, `audit`, `dashboard_tokens`,
//! `restart_budget`), which takes narrow handles (`store`,
//! `pki`, `fleet`, `clock`, `catalogs`) and returns typed errors that
//! `status` turns into gRPC statuses.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod blocking;
pub mod bus;
pub mod catalog_diff;
pub mod catalogs;
pub mod check;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod dashboard;
pub mod dashboard_tokens;
pub mod diff_cli;
pub mod enrollment;
pub mod environments;
pub mod explain;
pub mod fleet;
pub mod fleet_diff;
pub mod git_sync;
pub mod http;
pub mod leader;
pub mod listener;
pub mod metrics;
pub mod node_state;
pub mod nodes;
pub mod operators;
pub mod pin_cli;
pub mod pki;
pub mod reports;
pub mod resolve;
pub mod restart_budget;
pub mod restart_leases;
pub mod revision;
pub mod rollout_cli;
pub mod rollouts;
pub mod secrets;
pub mod server;
pub mod service;
pub mod startup;
pub mod status;
pub mod store;
pub mod sync;
pub mod trigger_cli;
pub mod triggers;
pub mod watch;
pub mod webhook;
