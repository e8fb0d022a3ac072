//! The cms role language.
//!
//! A roles repository is a folder (or a git commit) of TOML role files,
//! handlebars templates, static files and hierarchical data. This crate
//! parses it ([`Repository::parse`]), and compiles the [`Catalog`] of one
//! node from its tags and facts ([`compile`], or [`compile_with_secrets`]
//! with the values of the repository's `secrets/`). It does no I/O beyond
//! [`RepoFiles::read_dir`], and never talks to the network: the server and
//! the agent's local mode both call it.

#![forbid(unsafe_code)]

pub mod bounded;
mod catalog;
mod compile;
mod content;
mod diagnostic;
pub mod digest;
mod explain;
mod facts;
mod instances;
mod kinds;
mod node_reads;
mod params;
mod reads;
mod repository;
mod restarts;
mod rollout;
mod secrets;
mod source;
mod template;
mod toml_json;
mod validate;

pub use catalog::{
    Catalog, CatalogDecodeError, MAX_CATALOG_BYTES, Resource, RoleWeight, SizeProblem, human_size,
};
pub use compile::{
    Node, TagListError, compile, compile_encoded_with_secrets, compile_with_secrets, data_layers,
    deep_merge, glob_match, node_context, parse_tag_list, role_matches, select_roles,
};
pub use content::{Content, INLINE_CONTENT_MAX, MAX_CONTENT_BYTES, is_sha256_hex};
pub use diagnostic::{Diagnostic, Diagnostics, LineIndex, Position, render_with_sources};
pub use digest::sha256_hex;
pub use explain::{
    ExplainedLayer, ExplainedValue, Explanation, MatchedEntry, MatchedRole, UnmatchedRole, explain,
    tags_text,
};
pub use facts::{FACTS, Fact, FactType, When, example_facts, fact_named, schema_mismatches};
pub use instances::{MAX_ROLE_INSTANCES, RoleInstance};
pub use kinds::*;
pub use node_reads::aws_references;
pub use params::{Include, Param, ParamType, ParamValue};
pub use reads::{ATTESTED_KEYS, NodeReads};
pub use repository::{
    DeclaredResource, Hierarchy, MAX_DATA_DEPTH, MAX_INCLUDE_DEPTH, Repository, Role,
    SecretsSettings, Settings,
};
pub use restarts::{MaxRestarting, MaxRestartingError, RestartBudgets};
pub use rollout::{Batch, BatchError, RolloutPolicy};
pub use secrets::{
    SecretEntry, SecretSource, SecretValues, check_age_armor, check_aws_reference, check_recipient,
    is_aws_reference, is_secret_key,
};
pub use source::{
    Entry, JoinError, ReadError, RepoFiles, SETTINGS_FILE, is_repository_path, join_inside,
};
pub use template::{MAX_NESTING, Templates};
pub use validate::{
    check_catalog_size, example_attested, unincluded_parameterized_roles, unmatchable_globs,
    validate, validate_with_secrets, validation_tags,
};

#[cfg(test)]
mod params_tests;
#[cfg(test)]
mod restarts_tests;
#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod secret_tests;
#[cfg(test)]
mod tests;
