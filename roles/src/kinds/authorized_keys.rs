//! `authorized_keys`: the SSH public keys that may log in as a user, in
//! `~USER/.ssh/authorized_keys`. Each key is checked when the catalog is
//! compiled: a known type and base64 that holds a key of that type.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Kind, Resolver};

/// The key types OpenSSH accepts in `authorized_keys`.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

fn exclusive_default() -> bool {
    true
}

/// A user's authorized keys as a role declares them and a catalog carries
/// them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizedKeys {
    pub user: String,
    /// One key per entry: `type base64 [comment]`.
    pub keys: Vec<String>,
    /// `true` (the default): exactly these keys, any other key is removed.
    /// `false`: these keys are added, the others are kept.
    #[serde(default = "exclusive_default")]
    pub exclusive: bool,
}

impl Kind for AuthorizedKeys {
    type Spec = AuthorizedKeys;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.user
    }

    fn resolve(spec: AuthorizedKeys, cx: &mut Resolver<'_>) -> Option<AuthorizedKeys> {
        if spec.user.is_empty() || spec.user.contains([':', '/', '\n', '\0', ' ']) {
            cx.problems.push((
                "user",
                format!(
                    "invalid user name {:?}: write the name of an account, e.g. user = \"deploy\"",
                    spec.user
                ),
            ));
        }
        for (index, key) in spec.keys.iter().enumerate() {
            if let Err(problem) = check_public_key(key) {
                cx.problems
                    .push(("keys", format!("keys[{index}]: {problem}")));
            }
        }
        let keys = spec.keys.iter().map(|key| key_identity(key));
        let mut seen = std::collections::BTreeSet::new();
        for (index, identity) in keys.enumerate() {
            if let Some(identity) = identity
                && !seen.insert(identity)
            {
                cx.problems.push((
                    "keys",
                    format!("keys[{index}]: the same key is listed twice; list each key once"),
                ));
            }
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        format!(" keys={} exclusive={}", self.keys.len(), self.exclusive)
    }
}

/// The type and base64 of a key line, which say which key it is (the
/// comment does not).
pub fn key_identity(line: &str) -> Option<(String, String)> {
    let mut fields = line.split_whitespace();
    Some((fields.next()?.to_string(), fields.next()?.to_string()))
}

/// Checks one key, `type base64 [comment]`: a known type, and base64 whose
/// bytes start with that type as SSH's wire format writes it.
fn check_public_key(key: &str) -> Result<(), String> {
    const EXAMPLE: &str = "write it as the .pub file holds it, e.g. \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... user@host\"";
    if key.contains(['\n', '\r', '\0']) {
        return Err(format!("a key is one line; {EXAMPLE}"));
    }
    let mut fields = key.split_whitespace();
    let key_type = fields.next().unwrap_or_default();
    if !SSH_KEY_TYPES.contains(&key_type) {
        return Err(format!(
            "`{key_type}` is not an SSH key type (expected one of {}); options before the type are not supported; {EXAMPLE}",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let Some(encoded) = fields.next() else {
        return Err(format!("the {key_type} key has no base64 part; {EXAMPLE}"));
    };
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return Err(format!("the base64 part of the {key_type} key is not valid base64; {EXAMPLE}"));
    };
    if !is_wire_key_of_type(&blob, key_type) {
        return Err(format!(
            "the base64 part does not hold a {key_type} key (a truncated key, or the type of another key); {EXAMPLE}"
        ));
    }
    Ok(())
}

/// Whether `blob` is a public key in SSH's wire format: length-prefixed
/// fields, the first the key type, at least one more, nothing left over.
fn is_wire_key_of_type(blob: &[u8], key_type: &str) -> bool {
    let mut fields = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        let Some((length, after)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let length = u32::from_be_bytes(*length) as usize;
        if after.len() < length {
            return false;
        }
        fields.push(&after[..length]);
        rest = &after[length..];
    }
    fields.len() >= 2 && fields[0] == key_type.as_bytes()
}
