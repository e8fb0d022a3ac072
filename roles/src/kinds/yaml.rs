//! `yaml`: keys of a block-style YAML file the role does not own, set
//! (scalars, quoted when needed) or removed by path (`"a.b.c"`), comments
//! and the rest of the file kept.

use super::edit::{KeyNaming, KeyRules, KeyValues, keyed_kind};

keyed_kind!(
    /// A YAML file's keys by path; scalar values.
    Yaml,
    KeyRules {
        kind: "yaml",
        keys: KeyNaming::Path,
        values: KeyValues::Scalar,
    }
);
