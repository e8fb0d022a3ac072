//! Secrets as a repository declares them: `secrets/<layer>.toml`, one
//! table per secret, each an armored age file (`age = """…"""`, decrypted
//! only by the server) or a reference to an AWS value (`from = "ssm:/…"`,
//! fetched only by the server), with an optional `scope` of tag names and
//! `trusted.<attested key>` globs that a node must match to receive it.
//!
//! This module only parses and checks syntax; it never decrypts. The
//! values themselves arrive at compile time in [`SecretValues`], given by
//! the server (or stand-ins, for `check`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use toml::de::DeTable;

use crate::diagnostic::{Diagnostic, Diagnostics, LineIndex, Position, unknown_key_message};
use crate::reads::ATTESTED_KEYS;

/// One secret of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEntry {
    /// `secrets/<layer>.toml`.
    pub file: String,
    /// Where its table starts.
    pub position: Position,
    /// Tag name or `trusted.<attested key>` → glob; all must hold.
    pub scope: BTreeMap<String, String>,
    pub source: SecretSource,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An armored age file, as written.
    Age(String),
    /// An AWS reference as written: `ssm:/…`, `secretsmanager:NAME` or
    /// `secretsmanager:NAME#field`.
    Aws(String),
}

impl SecretEntry {
    /// `env=prod, trusted.account_id=1234*`.
    pub fn scope_text(&self) -> String {
        self.scope
            .iter()
            .map(|(name, pattern)| format!("{name}={pattern}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The node's value for a scope name: a tag, or `trusted.<key>`.
pub(crate) fn scope_value<'n>(
    name: &str,
    tags: &'n BTreeMap<String, String>,
    attested: &'n BTreeMap<String, String>,
) -> Option<&'n str> {
    match name.strip_prefix("trusted.") {
        Some(key) => attested.get(key).map(String::as_str),
        None => tags.get(name).map(String::as_str),
    }
}

/// The values of secrets, as the server resolved them: age secrets by
/// layer and key, AWS values by reference. Cheap to clone.
#[derive(Default, Clone)]
pub struct SecretValues {
    pub(crate) age: Arc<BTreeMap<(String, String), Vec<u8>>>,
    pub(crate) aws: Arc<BTreeMap<String, Vec<u8>>>,
}

impl SecretValues {
    pub fn new() -> SecretValues {
        SecretValues::default()
    }

    /// The decrypted value of `secrets/<layer>.toml`'s `key`.
    pub fn insert_age(&mut self, layer: &str, key: &str, value: Vec<u8>) {
        Arc::make_mut(&mut self.age).insert((layer.to_string(), key.to_string()), value);
    }

    /// The value of an AWS reference, as written (`ssm:/prod/x`).
    pub fn insert_aws(&mut self, reference: &str, value: Vec<u8>) {
        Arc::make_mut(&mut self.aws).insert(reference.to_string(), value);
    }

    pub(crate) fn age_value(&self, layer: &str, key: &str) -> Option<&Vec<u8>> {
        self.age.get(&(layer.to_string(), key.to_string()))
    }

    pub(crate) fn aws_value(&self, reference: &str) -> Option<&Vec<u8>> {
        self.aws.get(reference)
    }

    /// Whether there are no values at all.
    pub fn is_empty(&self) -> bool {
        self.age.is_empty() && self.aws.is_empty()
    }
}

/// Shows how many values there are, never a value.
impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretValues({} age, {} aws)",
            self.age.len(),
            self.aws.len()
        )
    }
}

/// Whether a helper parameter or a `from` is an AWS reference at all
/// (rather than a key of `secrets/`).
pub fn is_aws_reference(text: &str) -> bool {
    text.starts_with("ssm:") || text.starts_with("secretsmanager:")
}

/// Checks an AWS reference's syntax: `ssm:/path`, `secretsmanager:NAME`
/// or `secretsmanager:NAME#field`.
pub fn check_aws_reference(text: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/_.-+=@".contains(c);
    let bad = || {
        format!(
            "`{text}` is not an AWS reference: write `ssm:/path/to/parameter`, `secretsmanager:NAME` or `secretsmanager:NAME#field`"
        )
    };
    if let Some(path) = text.strip_prefix("ssm:") {
        if !path.starts_with('/')
            || path.len() < 2
            || path.ends_with('/')
            || path.contains("//")
            || !path.chars().all(allowed)
        {
            return Err(bad());
        }
        return Ok(());
    }
    if let Some(rest) = text.strip_prefix("secretsmanager:") {
        let (name, field) = match rest.split_once('#') {
            Some((name, field)) => (name, Some(field)),
            None => (rest, None),
        };
        if name.is_empty() || !name.chars().all(|c| allowed(c) || c == ':') {
            return Err(bad());
        }
        if let Some(field) = field
            && (field.is_empty() || field.contains('#') || field.chars().any(char::is_control))
        {
            return Err(bad());
        }
        return Ok(());
    }
    Err(bad())
}

/// A secret's key: `[A-Za-z0-9_-]+`.
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

const BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const END: &str = "-----END AGE ENCRYPTED FILE-----";

/// Checks the armor of an age file: the BEGIN and END lines and a body of
/// base64 lines of at most 64 columns, all full but the last. Syntax only.
pub fn check_age_armor(text: &str) -> Result<(), String> {
    let hint = "write the output of `age --armor -r <recipient>…` between the BEGIN and END lines";
    let lines: Vec<&str> = text
        .trim()
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    if lines.first() != Some(&BEGIN) {
        return Err(format!(
            "`age` is not an armored age file: it must start with `{BEGIN}`; {hint}"
        ));
    }
    if lines.len() < 3 || lines.last() != Some(&END) {
        return Err(format!(
            "`age` is not an armored age file: it must end with `{END}` after a body; {hint}"
        ));
    }
    let body = &lines[1..lines.len() - 1];
    for (index, line) in body.iter().enumerate() {
        let last = index + 1 == body.len();
        let length_ok = if last {
            !line.is_empty() && line.len() <= 64
        } else {
            line.len() == 64
        };
        if !length_ok
            || !line
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')
        {
            return Err(format!(
                "`age` is not an armored age file: body line {} is not base64 in lines of 64 columns; {hint}",
                index + 1
            ));
        }
    }
    let joined: String = body.concat();
    if base64::engine::general_purpose::STANDARD
        .decode(joined.as_bytes())
        .is_err()
    {
        return Err(format!(
            "`age` is not an armored age file: its body is not valid base64; {hint}"
        ));
    }
    Ok(())
}

/// Checks an age recipient's syntax: `age1` and 58 bech32 characters.
pub fn check_recipient(text: &str) -> Result<(), String> {
    const CHARSET: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    match text.strip_prefix("age1") {
        Some(data) if data.len() == 58 && data.chars().all(|c| CHARSET.contains(c)) => Ok(()),
        _ => Err(format!(
            "recipient `{text}` is not an age X25519 public key: expected `age1` followed by 58 lowercase bech32 characters (the output of `age-keygen -y`)"
        )),
    }
}

/// Fields a secret's table may have.
const SECRET_FIELDS: &[&str] = &["age", "from", "scope"];

/// Parses `secrets/<layer>.toml`: every valid secret, problems reported.
pub(crate) fn parse_secret_file(
    path: &str,
    text: &str,
    table: &DeTable<'_>,
    diagnostics: &mut Diagnostics,
) -> BTreeMap<String, SecretEntry> {
    let lines = LineIndex::new(text);
    let at = |offset: usize| lines.position(offset);
    let mut secrets = BTreeMap::new();
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        let key_at = at(key.span().start);
        if !is_secret_key(name) {
            diagnostics.push(Diagnostic::new(
                path,
                key_at,
                format!(
                    "secret key `{name}` may hold only letters, digits, `_` and `-`: it is what `{{{{secret \"…\"}}}}` names"
                ),
            ));
            continue;
        }
        let Some(fields) = value.get_ref().as_table() else {
            diagnostics.push(Diagnostic::new(
                path,
                key_at,
                format!("secret `{name}` must be a table: write [{name}] with `age` or `from`"),
            ));
            continue;
        };
        let mut age = None;
        let mut from = None;
        let mut scope = BTreeMap::new();
        let mut failed = false;
        for (field, value) in fields.iter() {
            let field_name = field.get_ref().as_ref();
            let field_at = at(field.span().start);
            let value_at = at(value.span().start);
            match field_name {
                "age" | "from" => {
                    let Some(text) = value.get_ref().as_str() else {
                        diagnostics.push(Diagnostic::new(
                            path,
                            value_at,
                            format!("`{field_name}` of secret `{name}` must be a string"),
                        ));
                        failed = true;
                        continue;
                    };
                    let checked = if field_name == "age" {
                        check_age_armor(text)
                    } else {
                        check_aws_reference(text)
                    };
                    if let Err(message) = checked {
                        diagnostics.push(Diagnostic::new(path, value_at, message));
                        failed = true;
                        continue;
                    }
                    if field_name == "age" {
                        age = Some(text.to_string());
                    } else {
                        from = Some(text.to_string());
                    }
                }
                "scope" => {
                    let Some(entries) = value.get_ref().as_table() else {
                        diagnostics.push(Diagnostic::new(
                            path,
                            value_at,
                            format!(
                                "`scope` of secret `{name}` must be a table of names and globs, e.g. scope = {{ env = \"prod\" }}"
                            ),
                        ));
                        failed = true;
                        continue;
                    };
                    for (scope_name, pattern) in entries.iter() {
                        let scope_name_text = scope_name.get_ref().as_ref();
                        let scope_at = at(scope_name.span().start);
                        if let Err(message) = check_scope_name(scope_name_text) {
                            diagnostics.push(Diagnostic::new(path, scope_at, message));
                            failed = true;
                            continue;
                        }
                        let Some(pattern) = pattern.get_ref().as_str() else {
                            diagnostics.push(Diagnostic::new(
                                path,
                                at(pattern.span().start),
                                format!(
                                    "scope `{scope_name_text}` of secret `{name}` must be a string (a value or a glob)"
                                ),
                            ));
                            failed = true;
                            continue;
                        };
                        scope.insert(scope_name_text.to_string(), pattern.to_string());
                    }
                }
                other => {
                    diagnostics.push(Diagnostic::new(
                        path,
                        field_at,
                        unknown_key_message(other, SECRET_FIELDS),
                    ));
                    failed = true;
                }
            }
        }
        if failed {
            continue;
        }
        let source = match (age, from) {
            (Some(age), None) => SecretSource::Age(age),
            (None, Some(from)) => SecretSource::Aws(from),
            (Some(_), Some(_)) => {
                diagnostics.push(Diagnostic::new(
                    path,
                    key_at,
                    format!(
                        "secret `{name}` has both `age` and `from`: a secret's value comes from exactly one of them"
                    ),
                ));
                continue;
            }
            (None, None) => {
                diagnostics.push(Diagnostic::new(
                    path,
                    key_at,
                    format!(
                        "secret `{name}` has neither `age` nor `from`: give its value as an armored age file (age = \"\"\"-----BEGIN AGE ENCRYPTED FILE-----…\"\"\") or an AWS reference (from = \"ssm:/…\")"
                    ),
                ));
                continue;
            }
        };
        secrets.insert(
            name.to_string(),
            SecretEntry {
                file: path.to_string(),
                position: key_at,
                scope,
                source,
            },
        );
    }
    secrets
}

/// A scope names a tag or `trusted.<attested key>`.
fn check_scope_name(name: &str) -> Result<(), String> {
    if let Some(tag) = name
        .strip_prefix("tag.")
        .or_else(|| name.strip_prefix("trusted.tags."))
    {
        return Err(format!(
            "scope `{name}`: name the tag itself, `{tag}` (a scope's names are tag names or `trusted.<attested key>`)"
        ));
    }
    if let Some(key) = name.strip_prefix("trusted.") {
        if ATTESTED_KEYS.contains(&key) {
            return Ok(());
        }
        return Err(format!(
            "scope `{name}` names no attested value: expected a tag name or one of {}",
            ATTESTED_KEYS
                .iter()
                .map(|k| format!("trusted.{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let tag_like = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-:".contains(c));
    if tag_like {
        Ok(())
    } else {
        Err(format!(
            "scope `{name}` is neither a tag name nor `trusted.<attested key>`: a scope may name only values the server vouches for, e.g. env = \"prod\" or \"trusted.account_id\" = \"1234*\""
        ))
    }
}

/// Every AWS reference of `from =` entries.
pub(crate) fn from_references(
    secrets: &BTreeMap<String, BTreeMap<String, SecretEntry>>,
) -> BTreeSet<String> {
    secrets
        .values()
        .flat_map(BTreeMap::values)
        .filter_map(|entry| match &entry.source {
            SecretSource::Aws(reference) => Some(reference.clone()),
            SecretSource::Age(_) => None,
        })
        .collect()
}

/// Replaces every form a used secret value can take in a message
/// (as written, escaped as Rust's or JSON's debug output shows strings,
/// base64, and each longer line of a multi-line value) by `<sensitive>`.
pub(crate) fn scrub(message: &str, values: &[Vec<u8>]) -> String {
    let mut forms: Vec<String> = Vec::new();
    for value in values {
        let text = String::from_utf8_lossy(value).into_owned();
        if text.is_empty() {
            continue;
        }
        let debug = format!("{text:?}");
        forms.push(debug[1..debug.len() - 1].to_string());
        let json = serde_json::to_string(&text).unwrap_or_default();
        if json.len() >= 2 {
            forms.push(json[1..json.len() - 1].to_string());
        }
        forms.push(base64::engine::general_purpose::STANDARD.encode(value));
        for line in text.lines() {
            if line.trim().len() >= 4 {
                forms.push(line.to_string());
                forms.push(line.trim().to_string());
            }
        }
        forms.push(text);
    }
    // Longest first, so a value is replaced whole before any of its lines.
    forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
    forms.dedup();
    let mut scrubbed = message.to_string();
    for form in forms.iter().filter(|f| !f.is_empty()) {
        scrubbed = scrubbed.replace(form.as_str(), "<sensitive>");
    }
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_references_are_checked_for_their_syntax() {
        for good in [
            "ssm:/prod/orders/db_password",
            "secretsmanager:prod/orders",
            "secretsmanager:prod/orders#password",
            "secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
        ] {
            assert_eq!(check_aws_reference(good), Ok(()), "{good}");
        }
        for bad in [
            "ssm:prod/x",
            "ssm:/",
            "ssm:/a//b",
            "secretsmanager:",
            "secretsmanager:x#",
            "vault:/x",
            "ssm:/a b",
        ] {
            assert!(check_aws_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn age_armor_is_checked_line_by_line() {
        let good = format!("{BEGIN}\n{}\nQUJD\n{END}\n", "A".repeat(64));
        assert_eq!(check_age_armor(&good), Ok(()));
        for bad in [
            "not armored".to_string(),
            format!("{BEGIN}\n{END}"),
            format!("{BEGIN}\nQUJD\n"),
            format!("{BEGIN}\nQU*D\n{END}"),
            format!("{BEGIN}\nQUJD\n{}\n{END}", "A".repeat(64)),
            format!("{BEGIN}\nQUJ\n{END}"),
        ] {
            assert!(check_age_armor(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_name_tags_or_attested_values() {
        assert_eq!(check_scope_name("env"), Ok(()));
        assert_eq!(check_scope_name("trusted.account_id"), Ok(()));
        assert!(
            check_scope_name("tag.env")
                .expect_err("refused")
                .contains("`env`")
        );
        assert!(
            check_scope_name("trusted.tags.env")
                .expect_err("refused")
                .contains("`env`")
        );
        assert!(check_scope_name("trusted.id").is_err());
        assert!(check_scope_name("fact.os").is_err());
        assert!(check_scope_name("").is_err());
    }

    #[test]
    fn recipients_must_look_like_age_public_keys() {
        let key = format!("age1{}", "q".repeat(58));
        assert_eq!(check_recipient(&key), Ok(()));
        assert!(check_recipient("age1short").is_err());
        assert!(check_recipient(&format!("age1{}", "b".repeat(58))).is_err());
        assert!(check_recipient(&format!("AGE-SECRET-KEY-1{}", "Q".repeat(58))).is_err());
    }

    #[test]
    fn scrubbing_replaces_every_form_of_a_value() {
        let values = vec![b"s3cr\"et\nline-two".to_vec()];
        let message = "invalid value: string \"s3cr\\\"et\\nline-two\", and line-two alone";
        let scrubbed = scrub(message, &values);
        assert!(!scrubbed.contains("s3cr"), "{scrubbed}");
        assert!(!scrubbed.contains("line-two"), "{scrubbed}");
    }
}
