//! Checks of the source tree itself, run with every `cargo test`: no two
//! modules of a crate import each other in a circle, and every module says
//! what it is for in a `//!` paragraph.
//!
//! A module is a top-level file (`src/foo.rs`) or folder (`src/foo/`) of a
//! crate's `src/`; module A depends on module B when A's code outside its
//! tests names `crate::B`. A circle means neither can be read, tested or
//! moved without the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn no_crate_has_modules_that_import_each_other_in_a_circle() {
    let mut circles = Vec::new();
    for crate_dir in workspace_crates() {
        let graph = module_graph(&crate_dir.join("src"));
        for circle in circles_of(&graph) {
            circles.push(format!(
                "{}: {}",
                crate_dir.file_name().unwrap_or_default().to_string_lossy(),
                circle
                    .iter()
                    .map(|module| format!(
                        "{module} -> {}",
                        graph[module]
                            .iter()
                            .filter(|target| circle.contains(*target))
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    assert!(
        circles.is_empty(),
        "modules that import each other in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn every_module_starts_with_a_paragraph_that_says_what_it_is_for() {
    let mut missing = Vec::new();
    for crate_dir in workspace_crates() {
        for file in rust_files(&crate_dir.join("src")) {
            let text = std::fs::read_to_string(&file).expect("a source file reads");
            if !text.trim_start().starts_with("//!") {
                missing.push(file.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a `//!` paragraph at the top:\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_circle_between_two_modules_is_found() {
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
        ("d".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(
        circles_of(&graph),
        vec![BTreeSet::from(["a".into(), "b".into(), "c".into()])]
    );
    let layered = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::new()),
    ]);
    assert!(circles_of(&layered).is_empty());
}

#[test]
fn only_code_outside_tests_and_comments_makes_a_dependency() {
    let modules = BTreeSet::from(["store".to_string(), "clock".to_string()]);
    let text = "//! Uses crate::nothing.\nuse crate::clock::now;\n// crate::store in a comment\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::store::Store; }\n";
    assert_eq!(
        dependencies(text, &modules),
        BTreeSet::from(["clock".to_string()])
    );
    let grouped = "use crate::{clock, store::Store};\n";
    assert_eq!(dependencies(grouped, &modules), modules);
}

/// The folders of the workspace's crates: every folder with a
/// `Cargo.toml` and a `src/`, outside `target/` and hidden folders.
fn workspace_crates() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the integration crate is in the workspace")
        .to_path_buf();
    let mut crates = Vec::new();
    let mut folders = vec![root];
    while let Some(folder) = folders.pop() {
        if folder.join("Cargo.toml").is_file() && folder.join("src").is_dir() {
            crates.push(folder.clone());
        }
        for entry in std::fs::read_dir(&folder).expect("a workspace folder reads") {
            let path = entry.expect("a folder entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir()
                && !name.starts_with('.')
                && !matches!(name, "target" | "node_modules" | "src" | "examples")
            {
                folders.push(path);
            }
        }
    }
    assert!(
        crates.len() >= 6,
        "the workspace's crates are found: {crates:?}"
    );
    crates.sort();
    crates
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("a source folder reads") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Each top-level module of a crate's `src/` and the modules its code uses.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files_of: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src reads") {
        let path = entry.expect("a folder entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if path.is_dir() && name != "bin" {
            files_of.insert(name, rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            files_of.insert(name, vec![path]);
        }
    }
    let modules: BTreeSet<String> = files_of.keys().cloned().collect();
    files_of
        .iter()
        .map(|(module, files)| {
            let mut targets = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(file).expect("a source file reads");
                targets.extend(dependencies(&text, &modules));
            }
            targets.remove(module);
            (module.clone(), targets)
        })
        .collect()
}

/// The modules among `modules` that `text` names as `crate::NAME` (also in
/// `use crate::{a, b::c}`), outside comments and after-`#[cfg(test)]` code.
fn dependencies(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let preceded_by_word = rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if !preceded_by_word {
                if let Some(group) = after.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or("");
                    for item in group.split(',') {
                        let name: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if modules.contains(&name) {
                            found.insert(name);
                        }
                    }
                } else {
                    let name: String = after
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if modules.contains(&name) {
                        found.insert(name);
                    }
                }
            }
            rest = after;
        }
    }
    found
}

/// The groups of two or more modules that reach each other (strongly
/// connected components, Tarjan's algorithm).
fn circles_of(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        circles: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, module: &'a str) {
            let index = self.index.len();
            self.index.insert(module, index);
            self.low.insert(module, index);
            self.stack.push(module);
            self.on_stack.insert(module);
            for target in self.graph.get(module).into_iter().flatten() {
                let target = target.as_str();
                if !self.graph.contains_key(target) {
                    continue;
                }
                if !self.index.contains_key(target) {
                    self.visit(target);
                    let low = self.low[module].min(self.low[target]);
                    self.low.insert(module, low);
                } else if self.on_stack.contains(target) {
                    let low = self.low[module].min(self.index[target]);
                    self.low.insert(module, low);
                }
            }
            if self.low[module] == self.index[module] {
                let mut component = BTreeSet::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.insert(member.to_string());
                    if member == module {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.circles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        circles: Vec::new(),
    };
    for module in graph.keys() {
        if !walk.index.contains_key(module.as_str()) {
            walk.visit(module);
        }
    }
    walk.circles
}
