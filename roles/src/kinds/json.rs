//! `json`: keys of a JSON file the role does not own, set (typed: TOML
//! values become JSON values) or removed by path (`"a.b.c"`), the rest of
//! the file kept as written.

use super::edit::{KeyNaming, KeyRules, KeyValues, keyed_kind};

keyed_kind!(
    /// A JSON file's keys by path; any value.
    Json,
    KeyRules {
        kind: "json",
        keys: KeyNaming::Path,
        values: KeyValues::Any,
    }
);
