//! The cms role language.
//!
//! A roles repository is a folder (or a git commit) of TOML role files,
//! handlebars templates, static files and hierarchical data. This crate
//! parses it ([`Repository::parse`]), and compiles the [`Catalog`] of one
//! node from its tags and facts ([`compile`]). It does no I/O beyond
//! [`RepoFiles::read_dir`], and never talks to the network: the server and
//! the agent's local mode both call it.

#![forbid(unsafe_code)]

mod catalog;
mod compile;
mod content;
mod diagnostic;
pub mod digest;
mod kinds;
mod repository;
mod source;
mod template;
mod validate;

pub use catalog::{
    Catalog, CatalogDecodeError, MAX_CATALOG_BYTES, Resource, RoleWeight, SizeProblem, human_size,
};
pub use compile::{
    Node, TagListError, compile, deep_merge, glob_match, parse_tag_list, role_matches, select_roles,
};
pub use content::{Content, INLINE_CONTENT_MAX, MAX_CONTENT_BYTES, is_sha256_hex};
pub use diagnostic::{Diagnostic, Diagnostics, Position};
pub use digest::sha256_hex;
pub use kinds::*;
pub use repository::{DeclaredResource, Hierarchy, Repository, Role, Settings};
pub use source::{Entry, JoinError, ReadError, RepoFiles, SETTINGS_FILE, join_inside};
pub use template::Templates;
pub use validate::{check_catalog_size, example_facts, validate};

#[cfg(test)]
mod tests;
