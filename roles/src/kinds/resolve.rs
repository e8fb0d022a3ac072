//! What a kind may use while it resolves a declaration into a catalog
//! resource: the repository's files and templates, the node's template
//! context, the catalog's contents, and a list of problems found.
//!
//! The compiler makes one [`Resolver`] per resource and turns the problems
//! into diagnostics at the position of the field each one names, so a kind
//! says *which field* is wrong and never deals with files and lines.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::content::Content;
use crate::digest::sha256_hex;
use crate::source::{Entry, RepoFiles, join_inside};
use crate::template::{PreparedContext, Templates};

/// Problems found in one resource: the field at fault and what is wrong.
pub type Problems = Vec<(&'static str, String)>;

/// The repository and node a resource is resolved against.
pub struct Resolver<'a> {
    files: &'a RepoFiles,
    templates: &'a Templates,
    context: &'a Value,
    item: Option<&'a Value>,
    contents: &'a mut BTreeMap<String, Content>,
    /// The compile's context converted once for templates.
    prepared: Option<&'a PreparedContext<'a>>,
    /// Problems found so far; any problem means the resource is not in the
    /// catalog.
    pub problems: Problems,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(
        files: &'a RepoFiles,
        templates: &'a Templates,
        context: &'a Value,
        item: Option<&'a Value>,
        contents: &'a mut BTreeMap<String, Content>,
        prepared: Option<&'a PreparedContext<'a>>,
    ) -> Resolver<'a> {
        Resolver {
            files,
            templates,
            context,
            item,
            contents,
            prepared,
            problems: Problems::new(),
        }
    }

    /// The template context of the node (`tag`, `fact`, `node`, `data`, and
    /// `item` in a `for_each`).
    pub fn context(&self) -> &'a Value {
        self.context
    }

    /// The element of the `for_each` list being declared, if any.
    pub fn item(&self) -> Option<&'a Value> {
        self.item
    }

    /// Adds bytes to the catalog's contents and returns their sha256, which
    /// is how a resource refers to them.
    pub fn add_content(&mut self, bytes: Vec<u8>) -> String {
        let hash = sha256_hex(&bytes);
        self.contents.entry(hash.clone()).or_insert(Content(bytes));
        hash
    }

    /// The bytes of `files/<path>`, refusing paths that leave `files/`.
    pub fn source_bytes(&mut self, user_path: &str, field: &'static str) -> Option<Vec<u8>> {
        let path = match join_inside("files", user_path) {
            Ok(path) => path,
            Err(error) => {
                self.problems.push((field, error.to_string()));
                return None;
            }
        };
        match self.files.get(&path) {
            Some(Entry::File(bytes)) => Some(bytes.clone()),
            Some(Entry::EscapingSymlink(target)) => {
                self.problems.push((field, format!("`{path}` is a symbolic link to `{target}`, outside the repository; it is never followed")));
                None
            }
            None => {
                self.problems
                    .push((field, format!("`{path}` does not exist")));
                None
            }
        }
    }

    /// Renders `templates/<path>` with `context`.
    pub fn render_template(
        &mut self,
        user_path: &str,
        context: &Value,
        field: &'static str,
    ) -> Option<Vec<u8>> {
        let name = match join_inside("templates", user_path) {
            Ok(name) => name,
            Err(error) => {
                self.problems.push((field, error.to_string()));
                return None;
            }
        };
        if let Some(Entry::EscapingSymlink(target)) = self.files.get(&name) {
            self.problems.push((field, format!("`{name}` is a symbolic link to `{target}`, outside the repository; it is never followed")));
            return None;
        }
        if !self.templates.contains(&name) {
            self.problems
                .push((field, format!("`{name}` does not exist")));
            return None;
        }
        match self
            .templates
            .render_prepared(&name, context, self.prepared)
        {
            Ok(text) => Some(text.into_bytes()),
            Err(diagnostic) => {
                // The template's own file and line say where; the resource
                // that used it is named for context.
                self.problems.push((field, format!("{diagnostic}")));
                None
            }
        }
    }
}
