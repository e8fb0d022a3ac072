//! The `[rollout]` table of `cms.toml`: how the server moves an
//! environment's nodes to a new commit (canary nodes, waves, bake time,
//! failures allowed, how long to wait for a node). The rollouts themselves
//! are the server's; docs/rollouts.md describes them.
//!
//! The table is read key by key rather than by serde in one go, so that
//! every bad value is reported where it is written, and a mistake in it
//! leaves the rest of `cms.toml` in force.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::diagnostic::{Diagnostic, Diagnostics, LineIndex, unknown_key_message};
use crate::kinds::Seconds;
use crate::source::SETTINGS_FILE;

/// `[rollout]` of `cms.toml`. The server applies the policy of an
/// environment's stable revision (the one being replaced) to a new commit,
/// so that a commit cannot loosen its own rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutPolicy {
    /// Canary nodes per affected role group, moved alone in a first wave;
    /// 0: no canary wave.
    pub canary: u32,
    /// How many nodes each later wave moves.
    pub batch: Batch,
    /// How long to wait after a wave's last healthy report before the next
    /// wave starts.
    pub bake: Duration,
    /// Failed or unreachable nodes allowed over the whole rollout; a failed
    /// canary halts it whatever this says.
    pub max_failures: u32,
    /// How long a wave waits for one node's report; never zero.
    pub timeout: Duration,
}

impl Default for RolloutPolicy {
    /// What an empty `[rollout]` table means.
    fn default() -> Self {
        RolloutPolicy {
            canary: 1,
            batch: Batch::All,
            bake: Duration::ZERO,
            max_failures: 0,
            timeout: Duration::from_secs(600),
        }
    }
}

/// `batch` of `[rollout]`: how many nodes each wave after the canary wave
/// moves. It displays as it is written (`"20%"`, `"5"`, `""`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Batch {
    /// `""`: all the remaining nodes in one wave.
    #[default]
    All,
    /// `"20%"`: that share of the affected nodes, 1 to 100. `"100%"` moves
    /// the rest at once, like [`Batch::All`].
    Percent(u8),
    /// `"5"`: that many nodes, at least 1.
    Count(u32),
}

impl Batch {
    /// Parses the text of `batch`; the error says what was wrong.
    pub fn parse(text: &str) -> Result<Batch, BatchError> {
        if text.is_empty() {
            return Ok(Batch::All);
        }
        let digits = text.strip_suffix('%').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BatchError::NotABatch);
        }
        if digits.len() < text.len() {
            match digits.parse::<u8>() {
                Ok(percent @ 1..=100) => Ok(Batch::Percent(percent)),
                _ => Err(BatchError::PercentOutOfRange),
            }
        } else {
            match digits.parse::<u32>() {
                Ok(count @ 1..) => Ok(Batch::Count(count)),
                _ => Err(BatchError::CountOutOfRange),
            }
        }
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Batch::All => Ok(()),
            Batch::Percent(percent) => write!(f, "{percent}%"),
            Batch::Count(count) => write!(f, "{count}"),
        }
    }
}

/// A `batch` text [`Batch::parse`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("not a share of the nodes (\"20%\") nor a number of nodes (\"5\")")]
    NotABatch,
    #[error("a share of the nodes is 1% to 100%")]
    PercentOutOfRange,
    #[error("a number of nodes is 1 or more (at most 4294967295)")]
    CountOutOfRange,
}

/// The keys `[rollout]` takes.
const ROLLOUT_KEYS: &[&str] = &["canary", "batch", "bake", "max_failures", "timeout"];

/// Reads `[rollout]` from `cms.toml` (`text`, already known to be valid
/// TOML). `None` when there is no such table. A bad value is reported at
/// the value and left at its default; the caller refuses the repository
/// for it, as for any diagnostic.
pub(crate) fn parse_rollout(text: &str, diagnostics: &mut Diagnostics) -> Option<RolloutPolicy> {
    let document = DeTable::parse(text).ok()?;
    let (key, value) = document
        .get_ref()
        .iter()
        .find(|(key, _)| key.get_ref().as_ref() == "rollout")?;
    let lines = LineIndex::new(text);
    let report = |diagnostics: &mut Diagnostics, offset: usize, message: String| {
        diagnostics.push(Diagnostic::new(
            SETTINGS_FILE,
            lines.position(offset),
            message,
        ));
    };
    let DeValue::Table(table) = value.get_ref() else {
        report(
            diagnostics,
            key.span().start,
            "`rollout` must be a table: write [rollout] on a line of its own, with its keys below it"
                .to_string(),
        );
        return None;
    };
    let mut policy = RolloutPolicy::default();
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        let written = text.get(value.span()).unwrap_or("").trim();
        let at = value.span().start;
        match name {
            "canary" | "max_failures" => match deserialize_value::<u32>(value) {
                Ok(count) if name == "canary" => policy.canary = count,
                Ok(count) => policy.max_failures = count,
                Err(_) => {
                    let example = if name == "canary" { 1 } else { 0 };
                    report(
                        diagnostics,
                        at,
                        format!(
                            "[rollout] {name} = {written} is not a number of nodes: write a whole number, 0 or more, e.g. {name} = {example}"
                        ),
                    );
                }
            },
            "batch" => match parse_batch(value) {
                Ok(batch) => policy.batch = batch,
                Err(reason) => report(
                    diagnostics,
                    at,
                    format!(
                        "[rollout] batch = {written}: {reason}; write batch = \"20%\" or \"5\" (a share or a number of the affected nodes per wave), or leave it out to move the rest at once"
                    ),
                ),
            },
            "bake" | "timeout" => match deserialize_value::<Seconds>(value) {
                Ok(Seconds(0)) if name == "timeout" => report(
                    diagnostics,
                    at,
                    format!(
                        "[rollout] timeout = {written} leaves a node no time to report: write a duration above zero, e.g. timeout = \"10m\""
                    ),
                ),
                Ok(Seconds(seconds)) if name == "timeout" => {
                    policy.timeout = Duration::from_secs(seconds);
                }
                Ok(Seconds(seconds)) => policy.bake = Duration::from_secs(seconds),
                Err(_) => {
                    let example = if name == "bake" { "2m" } else { "10m" };
                    report(
                        diagnostics,
                        at,
                        format!(
                            "[rollout] {name} = {written} is not a duration: write a number with a unit s, m, h or d, e.g. {name} = \"{example}\""
                        ),
                    );
                }
            },
            other => report(
                diagnostics,
                key.span().start,
                format!("[rollout] {}", unknown_key_message(other, ROLLOUT_KEYS)),
            ),
        }
    }
    Some(policy)
}

/// A value of the table as `T`, serde's error if it is not one.
fn deserialize_value<T: for<'de> Deserialize<'de>>(
    value: &Spanned<DeValue<'_>>,
) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(value.clone()))
}

/// `batch` is a string; a number is refused rather than guessed at.
fn parse_batch(value: &Spanned<DeValue<'_>>) -> Result<Batch, String> {
    match value.get_ref() {
        DeValue::String(text) => Batch::parse(text).map_err(|error| error.to_string()),
        DeValue::Integer(_) => Err("a number of nodes is written as a string".to_string()),
        _ => Err("not a string".to_string()),
    }
}
