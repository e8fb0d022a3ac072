//! `repository`: a package source (apt or yum) and its signing key, a file
//! under `files/` the catalog carries by sha256.

use serde::{Deserialize, Serialize};

use super::{Ensure, Kind, Resolver, check_name};

/// The package manager family a repository is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepositoryFormat {
    #[default]
    Apt,
    Yum,
}

/// A package source as a role declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default)]
    pub format: RepositoryFormat,
    /// The base URL (`deb` URI, or yum `baseurl`).
    pub uri: String,
    /// apt: the suite (`bookworm`, `stable`, or `./` for a flat repository).
    pub suite: Option<String>,
    /// apt: the components (default `["main"]`; none for a flat repository).
    pub components: Option<Vec<String>>,
    /// The signing key: a path under `files/` (ASCII-armored or binary).
    pub key: Option<String>,
    /// Accept the repository unsigned (apt `[trusted=yes]`, yum
    /// `gpgcheck=0`). Only for an internal repository on a network you
    /// control; give a `key` instead wherever you can.
    #[serde(default)]
    pub trusted: bool,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// A package source as a catalog carries it. (Named apart from the roles
/// `Repository` the compiler reads.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRepository {
    pub name: String,
    pub ensure: Ensure,
    pub format: RepositoryFormat,
    pub uri: String,
    pub suite: Option<String>,
    pub components: Vec<String>,
    pub key_sha256: Option<String>,
    pub trusted: bool,
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}


impl Kind for PackageRepository {
    type Spec = RepositorySpec;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: RepositorySpec, cx: &mut Resolver<'_>) -> Option<PackageRepository> {
        check_name(&spec.name, &mut cx.problems);
        if !(spec.uri.starts_with("http://")
            || spec.uri.starts_with("https://")
            || spec.uri.starts_with("file:/"))
        {
            cx.problems.push((
                "uri",
                format!(
                    "uri `{}` must start with http://, https:// or file:/",
                    spec.uri
                ),
            ));
        }
        let key_sha256 = match &spec.key {
            Some(key) => {
                let bytes = cx.source_bytes(key, "key")?;
                Some(cx.add_content(bytes))
            }
            None => None,
        };
        let flat = spec.suite.as_deref().is_some_and(|s| s.ends_with('/'));
        let components = spec.components.unwrap_or_else(|| {
            if flat {
                Vec::new()
            } else {
                vec!["main".to_string()]
            }
        });
        if spec.format == RepositoryFormat::Apt && spec.suite.is_none() {
            cx.problems.push(("suite", "an apt repository needs a `suite`, e.g. \"bookworm\" or \"./\" for a flat repository".into()));
        }
        Some(PackageRepository {
            name: spec.name,
            ensure: spec.ensure,
            format: spec.format,
            uri: spec.uri,
            suite: spec.suite,
            components,
            key_sha256,
            trusted: spec.trusted,
            enabled: spec.enabled,
        })
    }

    fn summary(&self) -> String {
        String::new()
    }
}
