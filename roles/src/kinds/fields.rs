//! The values resource fields are made of, shared by several kinds
//! (`ensure`, modes, durations), and the checks of names and paths that
//! several kinds make.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Problems;

/// `present` or `absent`, for everything that simply exists or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ensure {
    #[default]
    Present,
    Absent,
}

/// Unix permission bits, written in roles as an octal string (`"0644"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl serde::de::Visitor<'_> for ModeVisitor {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal mode as a string, e.g. \"0644\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Mode, E> {
                let digits = text.strip_prefix("0o").unwrap_or(text);
                if digits.is_empty() || digits.len() > 4 {
                    return Err(E::custom(format!(
                        "invalid mode `{text}`: expected 3 or 4 octal digits, e.g. \"0644\""
                    )));
                }
                u32::from_str_radix(digits, 8).map(Mode).map_err(|_| {
                    E::custom(format!(
                        "invalid mode `{text}`: expected octal digits 0-7, e.g. \"0644\""
                    ))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "mode {value} is a number: write it as a string, e.g. mode = \"0{value}\", so it is read as octal"
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Mode, E> {
                self.visit_i64(value as i64)
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}

/// A duration in seconds, written as an integer (seconds) or a string with a
/// unit: `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;
        impl serde::de::Visitor<'_> for SecondsVisitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration: seconds as an integer, or a string like \"30s\", \"5m\", \"1h\"",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Seconds, E> {
                Ok(Seconds(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Seconds, E> {
                u64::try_from(value)
                    .map(Seconds)
                    .map_err(|_| E::custom(format!("duration {value} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Seconds, E> {
                parse_duration(text).map(Seconds).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SecondsVisitor)
    }
}

/// A duration [`parse_duration`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "invalid duration `{0}`: expected a number with an optional unit s, m, h or d, e.g. \"30s\""
    )]
    NotANumber(String),
    #[error("invalid duration `{text}`: unknown unit `{unit}`, expected s, m, h or d")]
    UnknownUnit { text: String, unit: String },
    #[error("invalid duration `{0}`: too long to count in seconds")]
    TooLong(String),
}

/// Parses `"90"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber(text.to_string()))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            });
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| DurationError::TooLong(text.to_string()))
}

/// A name must hold something, and nothing that would split a line.
pub(crate) fn check_name(name: &str, problems: &mut Problems) {
    if name.trim().is_empty() {
        problems.push(("name", "name is empty".into()));
    } else if name.contains(['\n', '\0']) {
        problems.push(("name", format!("name {name:?} contains a newline or NUL")));
    }
}

/// A path must be absolute and normalized: the agent compares paths as
/// strings, so `/etc//x` and `/etc/x` must not both be possible.
pub(crate) fn check_path(path: &str, field: &'static str, problems: &mut Problems) {
    if !path.starts_with('/') {
        problems.push((field, format!("{field} `{path}` must be absolute")));
    } else if path.split('/').any(|part| part == ".." || part == ".")
        || path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
        || path.contains('\0')
    {
        problems.push((field, format!("{field} `{path}` must be a normalized absolute path (no `.`, `..`, `//` or trailing `/`)")));
    }
}
