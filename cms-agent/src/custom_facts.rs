//! Custom facts from `/etc/cms/facts.d/`, reported as `fact.custom.*`:
//! `.json` files holding an object, `.toml` files, and executables that
//! print a JSON object, each run with a time limit.
//!
//! Files are read in name order; a name two files give takes the later
//! file's value, and the run says so. A file that cannot be read, does not
//! parse or times out is skipped with a warning naming it (and the line,
//! where the parser gives one): the other facts still count, and a broken
//! fact file never stops a converge. A file another user can write (not
//! owned by the agent's user, or writable by group or others) is refused,
//! as sudo refuses such a sudoers file: the agent runs as root, and a fact
//! file can steer what the node is given.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};

/// Where custom facts live, relative to the root.
pub const FACTS_DIRECTORY: &str = "etc/cms/facts.d";

/// How long one executable may run.
pub const EXECUTABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most an executable may print.
const MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// The custom facts, and what went wrong reading them.
#[derive(Debug, Default)]
pub struct CustomFacts {
    pub facts: Map<String, Value>,
    pub warnings: Vec<String>,
}

/// Reads `<root>/etc/cms/facts.d`; an absent folder gives no facts.
pub fn read(root: &Path, timeout: Duration) -> CustomFacts {
    let mut found = CustomFacts::default();
    let folder = root.join(FACTS_DIRECTORY);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return found,
        Err(error) => {
            found.warnings.push(format!(
                "custom facts: cannot read {}: {error}",
                folder.display()
            ));
            return found;
        }
    };
    if let Err(problem) = writable_only_by_owner(&folder) {
        found.warnings.push(format!(
            "custom facts: {} ignored: {problem}",
            folder.display()
        ));
        return found;
    }
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    let mut given_by: BTreeMap<String, String> = BTreeMap::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        if !metadata.is_file() {
            continue;
        }
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let executable = metadata.permissions().mode() & 0o111 != 0;
        if extension != "json" && extension != "toml" && !executable {
            continue;
        }
        if let Err(problem) = writable_only_by_owner(&path) {
            found.warnings.push(format!(
                "custom facts: {} ignored: {problem}",
                path.display()
            ));
            continue;
        }
        let parsed = match extension {
            "json" => std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_json(&text)),
            "toml" => std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_toml(&text)),
            _ => run(&path, timeout).and_then(|text| parse_json(&text)),
        };
        match parsed {
            Ok(facts) => {
                for (key, value) in facts {
                    if let Some(earlier) = given_by.insert(key.clone(), name.clone()) {
                        found.warnings.push(format!(
                            "custom facts: `{key}` is given by {earlier} and {name}; the value of {name} is used"
                        ));
                    }
                    found.facts.insert(key, value);
                }
            }
            Err(problem) => found.warnings.push(format!(
                "custom facts: {} skipped: {problem}",
                path.display()
            )),
        }
    }
    found
}

/// A file or folder the agent trusts: owned by the agent's user (root),
/// and writable by nobody else.
fn writable_only_by_owner(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let me = nix::unistd::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(format!(
            "it is owned by uid {}, not by the agent's user (uid {me})",
            metadata.uid()
        ));
    }
    if metadata.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "group or others may write it (mode {:o}); chmod go-w it",
            metadata.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

fn parse_json(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "it must hold a JSON object of facts, not {}",
            type_name(&other)
        )),
        Err(error) => Err(format!(
            "line {}, column {}: {error}",
            error.line(),
            error.column()
        )),
    }
}

fn parse_toml(text: &str) -> Result<Map<String, Value>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|error| {
        let place = error
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: ")
            })
            .unwrap_or_default();
        format!("{place}{}", error.message())
    })?;
    match serde_json::to_value(table) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("it must hold a table of facts".into()),
        Err(error) => Err(error.to_string()),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Runs an executable fact with no arguments and no input; its stdout when
/// it exits 0 within `timeout`.
fn run(path: &Path, timeout: Duration) -> Result<String, String> {
    let spawn = || {
        Command::new(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // A file just written (by a package, a configuration run) can still be
    // open for writing in a process another thread forked in that instant:
    // exec then fails with "text file busy" until that child execs or
    // exits, a matter of milliseconds. Try again a few times.
    let mut tries = 0;
    let mut child = loop {
        match spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            other => break other.map_err(|e| format!("cannot run it: {e}"))?,
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.take(MAX_OUTPUT_BYTES).read_to_string(&mut out);
        out
    });
    let error_reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.take(MAX_OUTPUT_BYTES).read_to_string(&mut err);
        err
    });
    // Blocks until the fact exits or the time is up: no polling sleep.
    let status = match cms_modules::host::wait_for_exit(&mut child, Some(timeout)) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "it did not finish within {timeout:?} and was killed"
            ));
        }
        Err(error) => return Err(format!("cannot wait for it: {error}")),
    };
    let out = reader.join().unwrap_or_default();
    let err = error_reader.join().unwrap_or_default();
    if !status.success() {
        let said = err.trim().lines().last().unwrap_or("").to_string();
        return Err(format!(
            "it exited with {status}{}",
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let facts = root.path().join(FACTS_DIRECTORY);
        std::fs::create_dir_all(&facts).expect("mkdir");
        for dir in [root.path().join("etc/cms"), facts] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        root
    }

    fn write(root: &Path, name: &str, text: &str, mode: u32) {
        let path = root.join(FACTS_DIRECTORY).join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn json_toml_and_executable_facts_are_merged_in_name_order() {
        let root = folder();
        write(
            root.path(),
            "10-site.json",
            r#"{"datacenter": "eu-1", "rack": 4}"#,
            0o644,
        );
        write(
            root.path(),
            "20-team.toml",
            "team = \"payments\"\n[owner]\nemail = \"ops@example.com\"\n",
            0o644,
        );
        write(
            root.path(),
            "30-probe",
            "#!/bin/sh\necho '{\"rack\": 7, \"gpu\": false}'\n",
            0o755,
        );
        write(root.path(), "notes.txt", "not a fact file", 0o644);
        let found = read(root.path(), EXECUTABLE_TIMEOUT);
        // Warnings first: a file that could not be read says why there.
        assert_eq!(found.warnings.len(), 1, "{:?}", found.warnings);
        assert_eq!(found.facts["datacenter"], "eu-1");
        assert_eq!(found.facts["team"], "payments");
        assert_eq!(found.facts["owner"]["email"], "ops@example.com");
        assert_eq!(found.facts["gpu"], false);
        assert_eq!(found.facts["rack"], 7, "the later file wins");
        assert!(
            found.warnings[0].contains("`rack` is given by 10-site.json and 30-probe"),
            "{:?}",
            found.warnings
        );
        assert!(!found.facts.contains_key("notes"));
    }

    #[test]
    fn a_broken_file_is_skipped_with_its_line_and_the_others_still_count() {
        let root = folder();
        write(
            root.path(),
            "a.json",
            "{\n  \"zone\": \"a\",\n  oops\n}",
            0o644,
        );
        write(root.path(), "b.toml", "size = \n", 0o644);
        write(root.path(), "c.json", "[1, 2]", 0o644);
        write(root.path(), "d.json", r#"{"kept": true}"#, 0o644);
        let found = read(root.path(), EXECUTABLE_TIMEOUT);
        assert_eq!(found.facts.len(), 1, "{:?}", found.facts);
        assert_eq!(found.facts["kept"], true);
        let warnings = found.warnings.join("\n");
        assert!(
            warnings.contains("a.json skipped: line 3, column 3"),
            "{warnings}"
        );
        assert!(warnings.contains("b.toml skipped: line 1"), "{warnings}");
        assert!(
            warnings.contains("c.json skipped: it must hold a JSON object of facts, not an array"),
            "{warnings}"
        );
    }

    #[test]
    fn an_executable_that_fails_or_hangs_is_skipped_and_named() {
        let root = folder();
        write(
            root.path(),
            "fails",
            "#!/bin/sh\necho 'no database' >&2\nexit 3\n",
            0o755,
        );
        write(root.path(), "hangs", "#!/bin/sh\nexec sleep 30\n", 0o755);
        let found = read(root.path(), Duration::from_millis(300));
        let warnings = found.warnings.join("\n");
        assert!(found.facts.is_empty());
        assert!(
            warnings.contains("fails skipped: it exited with exit status: 3: no database"),
            "{warnings}"
        );
        assert!(
            warnings.contains("hangs skipped: it did not finish within 300ms and was killed"),
            "{warnings}"
        );
    }

    #[test]
    fn a_fact_file_others_may_write_is_refused() {
        let root = folder();
        write(
            root.path(),
            "open.json",
            r#"{"role_override": "db"}"#,
            0o666,
        );
        let found = read(root.path(), EXECUTABLE_TIMEOUT);
        assert!(found.facts.is_empty(), "{:?}", found.facts);
        assert!(
            found.warnings[0]
                .contains("open.json ignored: group or others may write it (mode 666)"),
            "{:?}",
            found.warnings
        );
    }

    #[test]
    fn no_folder_gives_no_facts_and_no_warning() {
        let root = tempfile::tempdir().expect("tempdir");
        let found = read(root.path(), EXECUTABLE_TIMEOUT);
        assert!(found.facts.is_empty() && found.warnings.is_empty());
    }
}
