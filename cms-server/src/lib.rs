//! The cms server: roles from a git repository, catalogs for enrolled nodes,
//! and the reports they send back.
//!
//! Today it offers `cms-server check`, the repository checker a team runs in
//! its own CI before merging a role change; the serving half builds on the
//! same checker to refuse bad commits.

#![forbid(unsafe_code)]

pub mod admin;
pub mod catalogs;
pub mod check;
pub mod cli;
pub mod commands;
pub mod dashboard;
pub mod fleet;
pub mod git_sync;
pub mod http;
pub mod metrics;
pub mod pki;
pub mod resolve;
pub mod server;
pub mod service;
pub mod store;
pub mod trigger_cli;
pub mod watch;
pub mod webhook;
