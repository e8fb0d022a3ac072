//! `ini`: keys of an ini file the role does not own (`php.ini`, `my.cnf`),
//! set or removed in their sections, comments, order and the rest of the
//! file kept.

use super::edit::{KeyNaming, KeyRules, KeyValues, keyed_kind};

keyed_kind!(
    /// An ini file's keys: `[section, key]` (section `""` before the first
    /// header), values as text.
    Ini,
    KeyRules {
        kind: "ini",
        keys: KeyNaming::Sections,
        values: KeyValues::Text { one_line: true },
    }
);
