//! Secrets on the server (issue 16): the server's age identity
//! (`identity`), armored age encryption (`crypt`), the commands that edit
//! a repository's `secrets/` files (`repo_files`), and, here, the values a
//! revision is compiled with.
//!
//! When a commit is validated, [`ServerSecrets::resolve`] decrypts every
//! `age` secret of the repository with the server's identity and fetches
//! every AWS reference (`cms_roles::aws_references`) not known yet; a
//! secret that does not decrypt, or a reference never fetched that cannot
//! be, refuses the commit with its file and line. The values live only in
//! memory, in the [`RevisionSecrets`] of the revision: never in the store,
//! a log or a file. AWS values are fetched again when older than the
//! refresh period ([`ServerSecrets::refresh`], run by a server task); a
//! failed fetch keeps the last value and logs the reference. Each change
//! of an AWS value bumps a generation that is part of the catalog cache's
//! key, so the agents' next pull gets a catalog with the new value.

pub mod crypt;
pub mod identity;
pub mod repo_files;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cms_roles::{Diagnostic, Diagnostics, Position, Repository, SecretSource, SecretValues};

use crate::aws::{CredentialsSource, SecretsClient, SecretsEndpoints};
use crate::clock::SharedClock;

/// How the server reaches AWS secrets (`serve`'s flags).
#[derive(Debug, Clone)]
pub struct SecretsConfig {
    pub endpoints: SecretsEndpoints,
    /// AWS values older than this are fetched again.
    pub refresh: Duration,
    /// The `AWS_*` variables of the server's environment (credentials).
    pub environment: BTreeMap<String, String>,
}

impl Default for SecretsConfig {
    fn default() -> SecretsConfig {
        SecretsConfig {
            endpoints: SecretsEndpoints::default(),
            refresh: DEFAULT_REFRESH,
            environment: BTreeMap::new(),
        }
    }
}

/// Ends the diagnostic of an AWS reference that could not be fetched yet:
/// a refusal for that reason may pass on a later sync of the same commit.
pub const NOT_YET_FETCHED: &str = "never fetched, so the commit cannot be served yet";

/// Whether a refusal may pass on a later sync of the same commit: one of
/// its problems is an AWS value that could not be fetched (AWS down, a
/// secret not created yet), which another sync tries again.
pub fn may_pass_later(diagnostics: &Diagnostics) -> bool {
    diagnostics.0.iter().any(|diagnostic| {
        diagnostic
            .message
            .ends_with(&format!("({NOT_YET_FETCHED})"))
    })
}

/// How often AWS values are fetched again by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// The server's means to read secrets: its identity and its AWS client,
/// and the AWS values fetched so far.
pub struct ServerSecrets {
    identity: Option<age::x25519::Identity>,
    aws: SecretsClient,
    refresh: Duration,
    clock: SharedClock,
    state: Mutex<AwsValues>,
}

impl std::fmt::Debug for ServerSecrets {
    /// Leaves the identity and the values out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ServerSecrets")
            .field(
                "identity",
                &self.identity.as_ref().map(|i| i.to_public().to_string()),
            )
            .field("aws_values", &state.values.len())
            .field("generation", &state.generation)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct AwsValues {
    /// Reference → value and when it was fetched (unix ms).
    values: BTreeMap<String, (Vec<u8>, u64)>,
    /// Bumped whenever a value changes.
    generation: u64,
}

impl ServerSecrets {
    /// The server's: its identity from `data_dir` (made on first start).
    pub fn open(
        data_dir: &Path,
        config: &SecretsConfig,
        clock: SharedClock,
    ) -> anyhow::Result<Arc<ServerSecrets>> {
        let identity = identity::load_or_create(data_dir)?;
        Ok(Arc::new(ServerSecrets::with_identity(
            Some(identity),
            config,
            clock,
        )))
    }

    /// With a given identity (or none: every `age` secret is refused).
    pub fn with_identity(
        identity: Option<age::x25519::Identity>,
        config: &SecretsConfig,
        clock: SharedClock,
    ) -> ServerSecrets {
        let credentials = CredentialsSource::from_environment(&config.environment, None);
        ServerSecrets {
            identity,
            aws: SecretsClient::new(config.endpoints.clone(), credentials, clock.clone()),
            refresh: config.refresh,
            clock,
            state: Mutex::new(AwsValues::default()),
        }
    }

    /// No identity and no AWS settings: for sources built without the
    /// server's secrets (a repository with secrets is then refused).
    pub fn none() -> Arc<ServerSecrets> {
        Arc::new(ServerSecrets::with_identity(
            None,
            &SecretsConfig::default(),
            crate::clock::system(),
        ))
    }

    /// The public key (`age1…`) of the server's identity.
    pub fn recipient(&self) -> Option<String> {
        self.identity.as_ref().map(|i| i.to_public().to_string())
    }

    /// How often AWS values are fetched again.
    pub fn refresh_period(&self) -> Duration {
        self.refresh
    }

    /// The secret values of `repository`: every `age` secret decrypted,
    /// every AWS reference fetched (or known and fresh). Blocks (AWS
    /// calls). The diagnostics name each secret that cannot be read.
    pub fn resolve(
        self: &Arc<ServerSecrets>,
        repository: &Repository,
    ) -> Result<Arc<RevisionSecrets>, Diagnostics> {
        let mut problems = Vec::new();
        let mut age = BTreeMap::new();
        let mut from_entries: BTreeMap<String, (String, Position)> = BTreeMap::new();
        for (layer, entries) in &repository.secrets {
            for (key, entry) in entries {
                match &entry.source {
                    SecretSource::Age(armored) => {
                        let Some(identity) = &self.identity else {
                            problems.push(Diagnostic::new(
                                &entry.file,
                                entry.position,
                                format!("secret `{key}`: the server has no identity to decrypt it"),
                            ));
                            continue;
                        };
                        match crypt::decrypt(armored, identity) {
                            Ok(value) => {
                                age.insert((layer.clone(), key.clone()), value);
                            }
                            Err(why) => problems.push(Diagnostic::new(
                                &entry.file,
                                entry.position,
                                format!("secret `{key}`: {why}"),
                            )),
                        }
                    }
                    SecretSource::Aws(reference) => {
                        from_entries
                            .entry(reference.clone())
                            .or_insert((entry.file.clone(), entry.position));
                    }
                }
            }
        }
        let references = cms_roles::aws_references(repository);
        for (reference, why) in self.fetch(&references, false) {
            let (file, position) = from_entries
                .get(&reference)
                .cloned()
                .unwrap_or(("(server)".to_string(), Position::UNKNOWN));
            problems.push(Diagnostic::new(
                &file,
                position,
                format!("AWS secret {why} ({NOT_YET_FETCHED})"),
            ));
        }
        if !problems.is_empty() {
            return Err(Diagnostics(problems));
        }
        Ok(Arc::new(RevisionSecrets {
            server: Some(self.clone()),
            age,
            references,
            built: Mutex::new(None),
        }))
    }

    /// Fetches the references that are unknown or (with `all`, or when
    /// older than the refresh period) stale. A failure keeps the last
    /// value and is logged with the reference; the failures of references
    /// with no value at all are returned. Blocks.
    pub fn fetch(&self, references: &BTreeSet<String>, all: bool) -> Vec<(String, String)> {
        let now = self.clock.now_unix_ms();
        let due: Vec<String> = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            references
                .iter()
                .filter(|reference| match state.values.get(*reference) {
                    None => true,
                    Some((_, fetched)) => {
                        all || now.saturating_sub(*fetched) >= self.refresh.as_millis() as u64
                    }
                })
                .cloned()
                .collect()
        };
        let mut never_fetched = Vec::new();
        for reference in due {
            let fetched = self.aws.fetch(&reference);
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match fetched {
                Ok(value) => {
                    let changed = state
                        .values
                        .get(&reference)
                        .is_none_or(|(old, _)| *old != value);
                    if changed {
                        state.generation += 1;
                        tracing::info!(reference = %reference, "fetched a new value of an AWS secret");
                    }
                    state.values.insert(reference, (value, now));
                }
                Err(why) => {
                    if state.values.contains_key(&reference) {
                        tracing::warn!(reference = %reference, "Failed to fetch an AWS secret again; the last value stays: {why}");
                    } else {
                        tracing::warn!(reference = %reference, "Failed to fetch an AWS secret: {why}");
                        never_fetched.push((reference, why));
                    }
                }
            }
        }
        never_fetched
    }

    /// Fetches again the references that are older than the refresh
    /// period: what the server's refresh task calls. Blocks.
    pub fn refresh(&self, references: &BTreeSet<String>) {
        let _ = self.fetch(references, false);
    }

    /// The sha256 (hex) of the value last fetched for `reference`: lets a
    /// test or a check tell which value is held without showing it.
    pub fn aws_value_digest(&self, reference: &str) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .values
            .get(reference)
            .map(|(value, _)| cms_roles::sha256_hex(value))
    }

    /// The generation of the AWS values: bumped on every change.
    pub fn generation(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }
}

/// The secret values one revision is compiled with: its `age` secrets,
/// decrypted once when the commit was validated, and the server's current
/// values of its AWS references. Only in memory.
pub struct RevisionSecrets {
    server: Option<Arc<ServerSecrets>>,
    age: BTreeMap<(String, String), Vec<u8>>,
    references: BTreeSet<String>,
    /// The last `SecretValues` built, with the AWS generation it saw.
    built: Mutex<Option<(u64, Arc<SecretValues>)>>,
}

impl std::fmt::Debug for RevisionSecrets {
    /// Counts, never values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevisionSecrets")
            .field("age_secrets", &self.age.len())
            .field("aws_references", &self.references)
            .finish_non_exhaustive()
    }
}

impl RevisionSecrets {
    /// A revision without secrets.
    pub fn empty() -> Arc<RevisionSecrets> {
        Arc::new(RevisionSecrets {
            server: None,
            age: BTreeMap::new(),
            references: BTreeSet::new(),
            built: Mutex::new(None),
        })
    }

    /// The AWS references the revision can render.
    pub fn references(&self) -> &BTreeSet<String> {
        &self.references
    }

    /// The values to compile with, and the generation of its AWS values
    /// (part of the catalog cache's key; 0 without AWS references).
    pub fn values(&self) -> (Arc<SecretValues>, u64) {
        // The generation and the values are read under one lock, so a
        // catalog is never cached under a generation its values are not of.
        let state = match (&self.server, self.references.is_empty()) {
            (Some(server), false) => Some(server.state.lock().unwrap_or_else(|e| e.into_inner())),
            _ => None,
        };
        let generation = state.as_ref().map_or(0, |state| state.generation);
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, values)) = built.as_ref()
            && *seen == generation
        {
            return (values.clone(), generation);
        }
        let mut values = SecretValues::new();
        for ((layer, key), value) in &self.age {
            values.insert_age(layer, key, value.clone());
        }
        if let Some(state) = &state {
            for reference in &self.references {
                if let Some((value, _)) = state.values.get(reference) {
                    values.insert_aws(reference, value.clone());
                }
            }
        }
        let values = Arc::new(values);
        *built = Some((generation, values.clone()));
        (values, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository(secrets: &str) -> Repository {
        let mut files = cms_roles::RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert("roles/base.toml", "[[package]]\nname = \"curl\"\n");
        files.insert("secrets/common.toml", secrets);
        let (repository, _) = Repository::load(files);
        repository
    }

    fn server(identity: &age::x25519::Identity) -> Arc<ServerSecrets> {
        Arc::new(ServerSecrets::with_identity(
            Some(identity.clone()),
            &SecretsConfig::default(),
            crate::clock::system(),
        ))
    }

    #[test]
    fn a_secret_for_another_key_or_a_damaged_one_is_named_by_file_and_line() {
        let identity = age::x25519::Identity::generate();
        let good = crypt::encrypt_armored(b"v1", &[identity.to_public()]).unwrap();
        let other = crypt::encrypt_armored(b"v2", &[age::x25519::Identity::generate().to_public()])
            .unwrap();
        // Four characters of the body's first line changed: three whole
        // bytes of the age header (its version line). One character picked
        // at random could be a bit that base64 does not use, and the
        // secret would still read.
        let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
        let body = &mut lines[1];
        let group = if &body[8..12] == "AAAA" {
            "BBBB"
        } else {
            "AAAA"
        };
        body.replace_range(8..12, group);
        let damaged = lines.join("\n") + "\n";
        let text = format!(
            "[good]\nage = '''\n{good}'''\n\n[other]\nage = '''\n{other}'''\n\n[damaged]\nage = '''\n{damaged}'''\n"
        );
        let line_of = |key: &str| text.lines().position(|l| l == format!("[{key}]")).unwrap() + 1;
        let problems = server(&identity)
            .resolve(&repository(&text))
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains(&format!(
                "secrets/common.toml:{}:2: secret `other`: not encrypted to this server's key",
                line_of("other")
            )),
            "{problems}"
        );
        assert!(
            problems.contains(&format!(
                "secrets/common.toml:{}:2: secret `damaged`",
                line_of("damaged")
            )),
            "{problems}"
        );
        assert!(!problems.contains("`good`"), "{problems}");
        let resolved = server(&identity)
            .resolve(&repository(&format!("[good]\nage = '''\n{good}'''\n")))
            .unwrap();
        assert_eq!(
            resolved.age[&("common".to_string(), "good".to_string())],
            b"v1"
        );
        // Printing the revision's secrets shows no value.
        assert!(!format!("{resolved:?}").contains("v1"));
    }

    #[test]
    fn without_an_identity_an_age_secret_is_refused() {
        let identity = age::x25519::Identity::generate();
        let good = crypt::encrypt_armored(b"v1", &[identity.to_public()]).unwrap();
        let problems = ServerSecrets::none()
            .resolve(&repository(&format!("[good]\nage = '''\n{good}'''\n")))
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains("the server has no identity"),
            "{problems}"
        );
    }
}
