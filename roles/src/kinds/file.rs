//! `file`: a file whose content comes from exactly one of a literal
//! `content`, a file under `files/` (`source`), a rendered template
//! (`template`) or rendered base64 (`content_base64`, for binary secrets:
//! `{{secret_base64 "keystore"}}`); the catalog carries the content's sha256, the bytes travel
//! in the catalog's contents.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Ensure, Kind, Mode, Resolver, check_path};

/// A file as a role declares it: its content comes from exactly one of
/// `content`, `source`, `template` or `content_base64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    #[serde(default)]
    pub ensure: Ensure,
    /// Literal content, used as written (never rendered).
    pub content: Option<String>,
    /// Base64 of the content, rendered then decoded: binary content, such
    /// as `{{secret_base64 "keystore"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// A path under `files/`.
    pub source: Option<String>,
    /// A path under `templates/`, rendered with handlebars.
    pub template: Option<String>,
    /// Extra values for the template, available as `vars.*`.
    pub vars: Option<BTreeMap<String, serde_json::Value>>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
}

/// A file as a catalog carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
    pub ensure: Ensure,
    /// sha256 of the content; `None` when only metadata is managed or the
    /// file must be absent.
    pub content_sha256: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
}


impl Kind for File {
    type Spec = FileSpec;
    const PATH_NAMED: bool = true;
    const REFRESHABLE: bool = false;
    /// Literal content is used as written: it may be a template of
    /// another tool.
    const LITERAL_FIELDS: &'static [&'static str] = &["content"];

    fn name(&self) -> &str {
        &self.path
    }

    fn resolve(spec: FileSpec, cx: &mut Resolver<'_>) -> Option<File> {
        check_path(&spec.path, "path", &mut cx.problems);
        let sources: Vec<&str> = [
            spec.content.as_ref().map(|_| "content"),
            spec.source.as_ref().map(|_| "source"),
            spec.template.as_ref().map(|_| "template"),
            spec.content_base64.as_ref().map(|_| "content_base64"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            cx.problems.push((sources[1], format!(
                "a file takes its content from exactly one of content, source, template or content_base64; this one has {}",
                sources.join(" and ")
            )));
            return None;
        }
        if spec.ensure == Ensure::Absent && !sources.is_empty() {
            cx.problems
                .push((sources[0], format!("an absent file has no {}", sources[0])));
            return None;
        }
        if spec.vars.is_some() && spec.template.is_none() {
            cx.problems
                .push(("vars", "vars are only used by a `template`".into()));
            return None;
        }
        let bytes = if let Some(content) = spec.content {
            Some(content.into_bytes())
        } else if let Some(encoded) = &spec.content_base64 {
            let compact: String = encoded.split_whitespace().collect();
            match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
                Ok(bytes) => Some(bytes),
                Err(_) => {
                    // The text may be a secret: the decoder's message would
                    // quote a byte of it.
                    cx.problems.push((
                        "content_base64",
                        "content_base64 is not valid base64: write standard base64, e.g. {{secret_base64 \"keystore\"}}".to_string(),
                    ));
                    return None;
                }
            }
        } else if let Some(source) = &spec.source {
            Some(cx.source_bytes(source, "source")?)
        } else if let Some(template) = &spec.template {
            let context = cx.context();
            let with_vars;
            let context = if spec.vars.is_some() || cx.item().is_some() {
                let mut extended = context.clone();
                extended["vars"] = serde_json::to_value(spec.vars.clone().unwrap_or_default())
                    .expect("vars are JSON");
                with_vars = extended;
                &with_vars
            } else {
                context
            };
            Some(cx.render_template(template, context, "template")?)
        } else {
            None
        };
        let content_sha256 = bytes.map(|b| cx.add_content(b));
        Some(File {
            path: spec.path,
            ensure: spec.ensure,
            content_sha256,
            owner: spec.owner,
            group: spec.group,
            mode: spec.mode,
        })
    }

    fn summary(&self) -> String {
        let mut s = format!(" ensure={:?}", self.ensure).to_lowercase();
        if let Some(mode) = self.mode {
            s.push_str(&format!(" mode={mode}"));
        }
        if let Some(hash) = &self.content_sha256 {
            s.push_str(&format!(" sha256={}", &hash[..12]));
        }
        s
    }
}
