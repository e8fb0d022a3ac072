//! `properties`: keys of a Java `.properties` file the role does not own,
//! set or removed, comments and order kept, values escaped as
//! `java.util.Properties` reads them.

use super::edit::{KeyNaming, KeyRules, KeyValues, keyed_kind};

keyed_kind!(
    /// A properties file's keys, values as text (a line break is written
    /// escaped).
    Properties,
    KeyRules {
        kind: "properties",
        keys: KeyNaming::Flat,
        values: KeyValues::Text { one_line: false },
    }
);
