//! The `[restarts]` table of `cms.toml`: how many nodes of a role group
//! may restart services at the same time. The server keeps the places
//! (cms-server's `restart_budget`); an agent asks for one before a
//! restart. docs/roles.md describes the table.
//!
//! ```toml
//! [restarts]
//! max_restarting = "10%"   # every role group of the environment
//! [restarts.role.web]
//! max_restarting = 2       # role web's own budget
//! ```
//!
//! Like `[rollout]` (`rollout.rs`), the table is read key by key so that
//! every bad value is reported where it is written, and a mistake in it
//! leaves the rest of `cms.toml` in force. That each role named exists is
//! checked once the roles are parsed ([`check_restart_roles`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::diagnostic::{Diagnostic, Diagnostics, LineIndex, unknown_key_message};
use crate::rollout::{Batch, BatchError};
use crate::source::SETTINGS_FILE;

/// `[restarts]` of `cms.toml`: the restart budget of each role group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartBudgets {
    /// `max_restarting` of `[restarts]`: the budget of every role group
    /// without one of its own; `None`: only the roles named have one.
    pub default: Option<MaxRestarting>,
    /// `[restarts.role.NAME]`: a role's own budget, by role name.
    pub roles: BTreeMap<String, MaxRestarting>,
}

impl RestartBudgets {
    /// The budget of role `role`'s group: its own, else the default.
    pub fn for_role(&self, role: &str) -> Option<MaxRestarting> {
        self.roles.get(role).copied().or(self.default)
    }
}

/// `max_restarting`: how many nodes of a role group may restart at once.
/// It displays as it is written (`20%`, `2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxRestarting {
    /// `"20%"`: that share of the group's nodes, 1 to 100, rounded down
    /// but never below one node.
    Percent(u8),
    /// `2` or `"2"`: that many nodes, at least 1.
    Count(u32),
}

impl MaxRestarting {
    /// Parses the text of a `max_restarting` string; the error says what
    /// was wrong.
    pub fn parse(text: &str) -> Result<MaxRestarting, MaxRestartingError> {
        // The grammar of `[rollout] batch`, without its empty "the rest".
        match Batch::parse(text) {
            Ok(Batch::Percent(percent)) => Ok(MaxRestarting::Percent(percent)),
            Ok(Batch::Count(count)) => Ok(MaxRestarting::Count(count)),
            Ok(Batch::All) | Err(BatchError::NotABatch) => Err(MaxRestartingError::NotABudget),
            Err(BatchError::PercentOutOfRange) => Err(MaxRestartingError::PercentOutOfRange),
            Err(BatchError::CountOutOfRange) => Err(MaxRestartingError::CountOutOfRange),
        }
    }

    /// How many nodes of a group of `group_size` may restart at once: a
    /// count as written, a share rounded down, and never fewer than one,
    /// so that a small group can still restart.
    pub fn places(&self, group_size: usize) -> usize {
        let places = match *self {
            MaxRestarting::Percent(percent) => group_size.saturating_mul(percent as usize) / 100,
            MaxRestarting::Count(count) => count as usize,
        };
        places.max(1)
    }

    /// The value as it is written in `cms.toml`: `"20%"` or `2`.
    pub fn as_toml(&self) -> String {
        match self {
            MaxRestarting::Percent(percent) => format!("\"{percent}%\""),
            MaxRestarting::Count(count) => count.to_string(),
        }
    }
}

impl fmt::Display for MaxRestarting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxRestarting::Percent(percent) => write!(f, "{percent}%"),
            MaxRestarting::Count(count) => write!(f, "{count}"),
        }
    }
}

/// A `max_restarting` value [`MaxRestarting::parse`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MaxRestartingError {
    #[error("not a share of the nodes (\"20%\") nor a number of nodes (2)")]
    NotABudget,
    #[error("a share of the nodes is 1% to 100%")]
    PercentOutOfRange,
    #[error("a number of nodes is 1 or more (at most 4294967295)")]
    CountOutOfRange,
}

/// The keys `[restarts]` takes.
const RESTARTS_KEYS: &[&str] = &["max_restarting", "role"];
/// The keys `[restarts.role.NAME]` takes.
const ROLE_KEYS: &[&str] = &["max_restarting"];

/// Reads `[restarts]` from `cms.toml` (`text`, already known to be valid
/// TOML). `None` when there is no such table. A bad value is reported at
/// the value and left out; the caller refuses the repository for it, as
/// for any diagnostic.
pub(crate) fn parse_restarts(text: &str, diagnostics: &mut Diagnostics) -> Option<RestartBudgets> {
    let document = DeTable::parse(text).ok()?;
    let (key, value) = document
        .get_ref()
        .iter()
        .find(|(key, _)| key.get_ref().as_ref() == "restarts")?;
    let lines = LineIndex::new(text);
    let mut report = |offset: usize, message: String| {
        diagnostics.push(Diagnostic::new(
            SETTINGS_FILE,
            lines.position(offset),
            message,
        ));
    };
    let DeValue::Table(table) = value.get_ref() else {
        report(
            key.span().start,
            "`restarts` must be a table: write [restarts] on a line of its own, with max_restarting = \"10%\" below it"
                .to_string(),
        );
        return None;
    };
    let mut budgets = RestartBudgets::default();
    for (key, value) in table.iter() {
        match key.get_ref().as_ref() {
            "max_restarting" => match parse_max_restarting(value) {
                Ok(max) => budgets.default = Some(max),
                Err(reason) => report(
                    value.span().start,
                    bad_value_message("[restarts]", written(text, value), &reason),
                ),
            },
            "role" => {
                let DeValue::Table(roles) = value.get_ref() else {
                    report(
                        key.span().start,
                        "[restarts] role must be a table of roles: write [restarts.role.web] on a line of its own, with max_restarting = 2 below it"
                            .to_string(),
                    );
                    continue;
                };
                for (role_key, role_value) in roles.iter() {
                    let role = role_key.get_ref().as_ref();
                    let header = format!("[restarts.role.{role}]");
                    let DeValue::Table(fields) = role_value.get_ref() else {
                        report(
                            role_key.span().start,
                            format!(
                                "{header} must be a table: write {header} on a line of its own, with max_restarting = 2 below it"
                            ),
                        );
                        continue;
                    };
                    let mut max = None;
                    for (field, field_value) in fields.iter() {
                        match field.get_ref().as_ref() {
                            "max_restarting" => match parse_max_restarting(field_value) {
                                Ok(value) => max = Some(value),
                                Err(reason) => report(
                                    field_value.span().start,
                                    bad_value_message(&header, written(text, field_value), &reason),
                                ),
                            },
                            other => report(
                                field.span().start,
                                format!("{header} {}", unknown_key_message(other, ROLE_KEYS)),
                            ),
                        }
                    }
                    match max {
                        Some(max) => {
                            budgets.roles.insert(role.to_string(), max);
                        }
                        // A bad or misspelt key was reported where written.
                        None if fields.iter().next().is_some() => {}
                        None => report(
                            role_key.span().start,
                            format!(
                                "{header} has no max_restarting: write max_restarting = 2 (or \"20%\") below it, or remove the table"
                            ),
                        ),
                    }
                }
            }
            other => report(
                key.span().start,
                format!("[restarts] {}", unknown_key_message(other, RESTARTS_KEYS)),
            ),
        }
    }
    Some(budgets)
}

/// Reports each `[restarts.role.NAME]` of `cms.toml` (`text`) whose role
/// does not exist (`known` says whether one does), at the line naming it.
pub(crate) fn check_restart_roles(
    text: &str,
    known: impl Fn(&str) -> bool,
    diagnostics: &mut Diagnostics,
) {
    let Ok(document) = DeTable::parse(text) else {
        return;
    };
    let Some(DeValue::Table(restarts)) = entry(document.get_ref(), "restarts") else {
        return;
    };
    let Some(DeValue::Table(roles)) = entry(restarts, "role") else {
        return;
    };
    let lines = LineIndex::new(text);
    for (role_key, _) in roles.iter() {
        let role = role_key.get_ref().as_ref();
        if !known(role) {
            diagnostics.push(Diagnostic::new(
                SETTINGS_FILE,
                lines.position(role_key.span().start),
                format!(
                    "[restarts.role.{role}] names no role: there is no roles/{role}.toml; name an existing role or remove the table"
                ),
            ));
        }
    }
}

/// The value of `key` in `table`.
fn entry<'a, 't>(table: &'a DeTable<'t>, key: &str) -> Option<&'a DeValue<'t>> {
    table
        .iter()
        .find(|(name, _)| name.get_ref().as_ref() == key)
        .map(|(_, value)| value.get_ref())
}

/// What was written for `value`, as the user wrote it.
fn written<'t>(text: &'t str, value: &Spanned<DeValue<'_>>) -> &'t str {
    text.get(value.span()).unwrap_or("").trim()
}

fn bad_value_message(table: &str, written: &str, reason: &str) -> String {
    format!(
        "{table} max_restarting = {written}: {reason}; write max_restarting = \"20%\" (a share of the role group's nodes) or max_restarting = 2 (a number of nodes)"
    )
}

/// `max_restarting` is a whole number or a string holding one or a share.
fn parse_max_restarting(value: &Spanned<DeValue<'_>>) -> Result<MaxRestarting, String> {
    match value.get_ref() {
        DeValue::String(text) => MaxRestarting::parse(text).map_err(|error| error.to_string()),
        DeValue::Integer(_) => match u32::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(count @ 1..) => Ok(MaxRestarting::Count(count)),
            _ => Err(MaxRestartingError::CountOutOfRange.to_string()),
        },
        _ => Err("not a number nor a string".to_string()),
    }
}
