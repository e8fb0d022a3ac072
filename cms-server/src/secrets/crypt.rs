//! Armored age encryption to X25519 recipients, and its decryption with
//! one identity: the only two operations on secret values.

use std::io::{Read as _, Write as _};

/// Parses an age X25519 recipient (`age1…`).
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    text.trim()
        .parse::<age::x25519::Recipient>()
        .map_err(|error| format!("`{text}` is not an age X25519 recipient (age1…): {error}"))
}

/// `value` encrypted to every recipient, as an armored age file.
pub fn encrypt_armored(
    value: &[u8],
    recipients: &[age::x25519::Recipient],
) -> anyhow::Result<String> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|error| anyhow::anyhow!("Failed to encrypt: {error}"))?;
    let mut armored = Vec::new();
    let output =
        age::armor::ArmoredWriter::wrap_output(&mut armored, age::armor::Format::AsciiArmor)?;
    let mut writer = encryptor.wrap_output(output)?;
    writer.write_all(value)?;
    writer.finish()?.finish()?;
    Ok(String::from_utf8(armored).expect("armor is ASCII"))
}

/// The value of an armored (or binary) age file, decrypted with `identity`.
/// The error says why (not encrypted to this identity, damaged), never
/// any of the plaintext.
pub fn decrypt(armored: &str, identity: &age::x25519::Identity) -> Result<Vec<u8>, String> {
    let reader = age::armor::ArmoredReader::new(armored.trim().as_bytes());
    // age's own message for a damaged header suggests upgrading age, which
    // would mislead here: the text was changed or cut, not made by a newer
    // tool.
    let decryptor = age::Decryptor::new(reader).map_err(|error| match error {
        age::DecryptError::UnknownFormat | age::DecryptError::InvalidHeader => {
            "damaged: its header is not an age header (was the text edited or cut? encrypt it again)"
                .to_string()
        }
        other => format!("not a readable age file: {other}"),
    })?;
    let mut plain = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|error| match error {
            age::DecryptError::NoMatchingKeys => {
                "not encrypted to this server's key (re-encrypt it with `cms-server secrets reencrypt`, or encrypt it again with the recipients of cms.toml)".to_string()
            }
            other => format!("cannot be decrypted: {other}"),
        })?;
    let mut value = Vec::new();
    plain
        .read_to_end(&mut value)
        .map_err(|error| format!("damaged ciphertext: {error}"))?;
    Ok(value)
}
