//! The cms server: roles from a git repository, catalogs for enrolled nodes,
//! and the reports they send back.
//!
//! Today it offers `cms-server check`, the repository checker a team runs in
//! its own CI before merging a role change; the serving half builds on the
//! same checker to refuse bad commits.

#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
