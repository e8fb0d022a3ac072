//! The secrets commands that edit a roles repository's `secrets/` files:
//! `encrypt` (one value, read from standard input, encrypted to the
//! recipients of `cms.toml`; needs no private key) and `reencrypt` (every
//! `age` secret decrypted with one identity and encrypted again to the
//! current recipients). Files are edited with `toml_edit`, so their other
//! secrets and comments stay, and written atomically (a temporary file,
//! then a rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::crypt::{decrypt, encrypt_armored, parse_recipient};

/// The recipients of `repo/cms.toml`'s `[secrets] recipients`.
pub fn recipients(repo: &Path) -> anyhow::Result<Vec<age::x25519::Recipient>> {
    let path = repo.join(cms_roles::SETTINGS_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("Failed to read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", path.display()))?;
    let hint = "add `[secrets]\nrecipients = [\"age1…\"]` (`cms-server secrets recipient` prints the server's; add the team's break-glass key too)";
    let Some(list) = table
        .get("secrets")
        .and_then(|secrets| secrets.get("recipients"))
    else {
        bail!("{}: no recipients configured: {hint}", path.display());
    };
    let Some(list) = list.as_array() else {
        bail!(
            "{}: [secrets] recipients: expected a list of age1… strings",
            path.display()
        );
    };
    let mut recipients = Vec::new();
    for (index, item) in list.iter().enumerate() {
        let Some(text) = item.as_str() else {
            bail!(
                "{}: [secrets] recipients[{index}]: expected a string (age1…)",
                path.display()
            );
        };
        recipients.push(parse_recipient(text).map_err(|e| {
            anyhow::anyhow!("{}: [secrets] recipients[{index}]: {e}", path.display())
        })?);
    }
    if recipients.is_empty() {
        bail!("{}: [secrets] recipients is empty: {hint}", path.display());
    }
    Ok(recipients)
}

/// Checks a secret's key: `[A-Za-z0-9_-]+`.
pub fn check_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        bail!("invalid secret key `{key}`: use letters, digits, `_` and `-`");
    }
    Ok(())
}

/// The file of a layer (`env/prod` → `repo/secrets/env/prod.toml`); the
/// layer must be a clean relative path.
pub fn layer_file(repo: &Path, layer: &str) -> anyhow::Result<PathBuf> {
    let clean = !layer.is_empty()
        && !layer.ends_with(".toml")
        && layer.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.@+".contains(&b))
        });
    if !clean {
        bail!(
            "invalid layer `{layer}`: a relative path of the hierarchy like `common` or `env/prod` (no `..`, no leading `/`, no `.toml`)"
        );
    }
    Ok(repo.join("secrets").join(format!("{layer}.toml")))
}

/// Parses `--scope name=glob,...`.
pub fn parse_scope(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut scope = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((name, glob)) = pair.split_once('=') else {
            bail!("--scope: `{pair}` is not name=glob");
        };
        let name = name.trim();
        if name.is_empty() {
            bail!("--scope: `{pair}` has no name");
        }
        scope.insert(name.to_string(), glob.trim().to_string());
    }
    Ok(scope)
}

/// Encrypts `value` to the repository's recipients as secret `key` of
/// `layer`, keeping the file's other secrets and comments. A `scope`
/// given replaces the secret's; none keeps it.
pub fn encrypt_into(
    repo: &Path,
    layer: &str,
    key: &str,
    value: &[u8],
    scope: Option<&BTreeMap<String, String>>,
) -> anyhow::Result<PathBuf> {
    check_key(key)?;
    let path = layer_file(repo, layer)?;
    let recipients = recipients(repo)?;
    let armored = encrypt_armored(value, &recipients)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(error).with_context(|| format!("Failed to read {}", path.display()));
        }
    };
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", path.display()))?;
    let entry = document
        .entry(key)
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(table) = entry.as_table_mut() else {
        bail!(
            "{}: `{key}` is not a table: write secrets as [{key}]",
            path.display()
        );
    };
    table.remove("from");
    table.insert("age", toml_edit::value(armored));
    if let Some(scope) = scope {
        if scope.is_empty() {
            table.remove("scope");
        } else {
            let mut inline = toml_edit::InlineTable::new();
            for (name, glob) in scope {
                inline.insert(name, glob.as_str().into());
            }
            table.insert("scope", toml_edit::value(inline));
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("Failed to create {}", parent.display()))?;
    }
    write_atomically(&path, document.to_string().as_bytes())?;
    Ok(path)
}

/// What `reencrypt` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reencrypted {
    pub files: usize,
    pub secrets: usize,
}

/// Decrypts every `age` secret under `repo/secrets/` with `identity` and
/// encrypts it again to the current recipients. Nothing is written unless
/// every secret decrypts: the error names each one that does not
/// (file:line).
pub fn reencrypt(repo: &Path, identity: &age::x25519::Identity) -> anyhow::Result<Reencrypted> {
    let recipients = recipients(repo)?;
    let mut files = Vec::new();
    collect_toml(&repo.join("secrets"), &mut files)?;
    files.sort();
    let mut problems = Vec::new();
    let mut edited = Vec::new();
    let mut done = Reencrypted::default();
    for path in files {
        let shown = path
            .strip_prefix(repo)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("Failed to read {}", path.display()))?;
        let mut document: toml_edit::DocumentMut = text
            .parse()
            .with_context(|| format!("{shown}: not valid TOML"))?;
        let mut count = 0;
        for (key, item) in document.iter_mut() {
            let Some(armored) = item
                .as_table_like()
                .and_then(|t| t.get("age"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
            else {
                continue;
            };
            match decrypt(&armored, identity) {
                Ok(value) => {
                    let again = encrypt_armored(&value, &recipients)?;
                    if let Some(table) = item.as_table_like_mut() {
                        table.insert("age", toml_edit::value(again));
                    }
                    count += 1;
                }
                Err(why) => problems.push(format!(
                    "{shown}:{}: secret `{}`: {why}",
                    header_line(&text, &key),
                    key.get()
                )),
            }
        }
        if count > 0 {
            done.files += 1;
            done.secrets += count;
            edited.push((path, document.to_string()));
        }
    }
    if !problems.is_empty() {
        bail!(
            "Failed to decrypt {} secret(s); nothing was written:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    for (path, text) in edited {
        write_atomically(&path, text.as_bytes())?;
    }
    Ok(done)
}

/// The line of `[key]` in `text` (1-based), 0 when not found.
fn header_line(text: &str, key: &toml_edit::KeyMut<'_>) -> usize {
    let header = format!("[{}]", key.get());
    let quoted = format!("[\"{}\"]", key.get());
    text.lines()
        .position(|line| {
            let line = line.trim();
            line == header || line == quoted
        })
        .map_or(0, |index| index + 1)
}

fn collect_toml(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(error).with_context(|| format!("Failed to read {}", dir.display()));
        }
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_toml(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    Ok(())
}

/// Writes `path` whole or not at all: a temporary file beside it, synced,
/// renamed over it, the folder synced. A new file is 0644 (it holds only
/// ciphertext); an existing file keeps its mode.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .context("not a file name")?
        .to_string_lossy()
        .to_string();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        if let Ok(existing) = std::fs::metadata(path) {
            file.set_permissions(std::fs::Permissions::from_mode(
                existing.permissions().mode() & 0o7777,
            ))?;
        }
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.with_context(|| format!("Failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Keys {
        server: age::x25519::Identity,
        break_glass: age::x25519::Identity,
    }

    fn repo_with_recipients() -> (tempfile::TempDir, Keys) {
        let repo = tempfile::tempdir().unwrap();
        let keys = Keys {
            server: age::x25519::Identity::generate(),
            break_glass: age::x25519::Identity::generate(),
        };
        std::fs::write(
            repo.path().join("cms.toml"),
            format!(
                "[hierarchy]\nlayers = [\"env/{{{{tag.env}}}}\", \"common\"]\n\n[secrets]\nrecipients = [\"{}\", \"{}\"]\n",
                keys.server.to_public(),
                keys.break_glass.to_public()
            ),
        )
        .unwrap();
        (repo, keys)
    }

    fn secret_of(path: &Path, key: &str) -> String {
        let table: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        table[key]["age"].as_str().unwrap().to_string()
    }

    #[test]
    fn encrypt_keeps_the_files_other_secrets_and_comments_and_every_recipient_decrypts() {
        let (repo, keys) = repo_with_recipients();
        let file = repo.path().join("secrets/env/prod.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            "# production secrets\n[api_token]\nfrom = \"ssm:/prod/api\" # from SSM\n",
        )
        .unwrap();
        let value = b"binary\0value\xff\n".to_vec();
        let scope = parse_scope("env=prod,trusted.account_id=1234*").unwrap();
        encrypt_into(repo.path(), "env/prod", "db_password", &value, Some(&scope)).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# production secrets\n"), "{text}");
        assert!(
            text.contains("from = \"ssm:/prod/api\" # from SSM"),
            "{text}"
        );
        assert!(
            text.contains("-----BEGIN AGE ENCRYPTED FILE-----"),
            "{text}"
        );
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["db_password"]["scope"]["env"].as_str(), Some("prod"));
        assert_eq!(
            table["db_password"]["scope"]["trusted.account_id"].as_str(),
            Some("1234*")
        );
        let armored = secret_of(&file, "db_password");
        assert_eq!(decrypt(&armored, &keys.server).unwrap(), value);
        assert_eq!(decrypt(&armored, &keys.break_glass).unwrap(), value);
        assert!(
            decrypt(&armored, &age::x25519::Identity::generate()).is_err(),
            "a third key decrypted it"
        );
    }

    #[test]
    fn reencrypt_reaches_a_new_recipient_and_writes_nothing_when_one_secret_does_not_decrypt() {
        let (repo, keys) = repo_with_recipients();
        encrypt_into(repo.path(), "common", "a", b"value-a", None).unwrap();
        encrypt_into(repo.path(), "env/prod", "b", b"value-b", None).unwrap();
        // A new recipient joins.
        let newcomer = age::x25519::Identity::generate();
        std::fs::write(
            repo.path().join("cms.toml"),
            format!(
                "[secrets]\nrecipients = [\"{}\", \"{}\"]\n",
                keys.server.to_public(),
                newcomer.to_public()
            ),
        )
        .unwrap();
        // The break-glass key does the re-encryption.
        let done = reencrypt(repo.path(), &keys.break_glass).unwrap();
        assert_eq!(
            done,
            Reencrypted {
                files: 2,
                secrets: 2
            }
        );
        let common = repo.path().join("secrets/common.toml");
        assert_eq!(
            decrypt(&secret_of(&common, "a"), &newcomer).unwrap(),
            b"value-a"
        );
        assert!(decrypt(&secret_of(&common, "a"), &keys.break_glass).is_err());

        // A secret for a key nobody here holds: nothing is written.
        let stranger = age::x25519::Identity::generate();
        let foreign = encrypt_armored(b"x", &[stranger.to_public()]).unwrap();
        let prod = repo.path().join("secrets/env/prod.toml");
        let mut text = std::fs::read_to_string(&prod).unwrap();
        text.push_str(&format!("\n[foreign]\nage = '''\n{foreign}'''\n"));
        std::fs::write(&prod, &text).unwrap();
        let before_common = std::fs::read(&common).unwrap();
        let error = reencrypt(repo.path(), &keys.server)
            .unwrap_err()
            .to_string();
        let line = text.lines().position(|l| l == "[foreign]").unwrap() + 1;
        assert!(
            error.contains(&format!("secrets/env/prod.toml:{line}: secret `foreign`")),
            "{error}"
        );
        assert!(error.contains("nothing was written"), "{error}");
        assert_eq!(std::fs::read(&common).unwrap(), before_common);
        assert_eq!(std::fs::read_to_string(&prod).unwrap(), text);
    }

    #[test]
    fn bad_recipients_keys_and_layers_are_refused_with_what_to_do() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::write(
            repo.path().join("cms.toml"),
            "[hierarchy]\nlayers = [\"common\"]\n",
        )
        .unwrap();
        let error = encrypt_into(repo.path(), "common", "k", b"v", None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no recipients configured"), "{error}");
        std::fs::write(
            repo.path().join("cms.toml"),
            "[secrets]\nrecipients = [\"age1nope\"]\n",
        )
        .unwrap();
        let error = encrypt_into(repo.path(), "common", "k", b"v", None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("recipients[0]"), "{error}");
        assert!(
            error.contains("`age1nope` is not an age X25519 recipient"),
            "{error}"
        );
        for key in ["", "a b", "a.b", "ä"] {
            assert!(check_key(key).is_err(), "{key:?}");
        }
        for layer in [
            "",
            "/etc/x",
            "../x",
            "env/../x",
            "env//prod",
            "x.toml",
            "./x",
        ] {
            assert!(layer_file(repo.path(), layer).is_err(), "{layer:?}");
        }
        assert_eq!(
            layer_file(repo.path(), "env/prod").unwrap(),
            repo.path().join("secrets/env/prod.toml")
        );
        assert!(
            !repo.path().join("secrets").exists(),
            "a refused call wrote"
        );
    }
}
