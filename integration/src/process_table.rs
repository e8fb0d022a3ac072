//! A snapshot of the host's processes read from /proc: enough to find an
//! instance's PID 1 among the descendants of its `systemd-nspawn`, and to
//! find processes a crashed run left behind.

use std::collections::BTreeMap;
use std::path::Path;

/// One process as /proc showed it when the snapshot was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcessEntry {
    pub pid: u32,
    pub parent_pid: u32,
    /// The short name from /proc/PID/stat (at most 15 bytes).
    pub name: String,
    /// The state letter from /proc/PID/stat; `Z` is a zombie, already dead.
    pub state: char,
    pub command_line: Vec<String>,
}

impl ProcessEntry {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

pub(crate) struct ProcessTable {
    processes: BTreeMap<u32, ProcessEntry>,
}

impl ProcessTable {
    /// Reads every process in /proc. Processes that exit while being read
    /// are left out.
    pub fn snapshot() -> ProcessTable {
        let mut processes = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ProcessTable { processes };
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(process) = read_process(pid) {
                processes.insert(pid, process);
            }
        }
        ProcessTable { processes }
    }

    pub fn processes(&self) -> impl Iterator<Item = &ProcessEntry> {
        self.processes.values()
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessEntry> {
        self.processes.get(&pid)
    }

    /// The closest descendant of `ancestor` whose short name is `name`
    /// (breadth first, so a child wins over a grandchild).
    pub fn find_descendant_named(&self, ancestor: u32, name: &str) -> Option<&ProcessEntry> {
        let mut generation = vec![ancestor];
        while !generation.is_empty() {
            let children: Vec<&ProcessEntry> = self
                .processes
                .values()
                .filter(|process| generation.contains(&process.parent_pid))
                .collect();
            if let Some(found) = children.iter().find(|process| process.name == name) {
                return Some(found);
            }
            generation = children.iter().map(|process| process.pid).collect();
        }
        None
    }
}

/// Whether a process with this id exists and is not a zombie.
pub(crate) fn is_process_alive(pid: u32) -> bool {
    read_process(pid).is_some_and(|process| !process.is_zombie())
}

fn read_process(pid: u32) -> Option<ProcessEntry> {
    let directory = Path::new("/proc").join(pid.to_string());
    let stat = std::fs::read_to_string(directory.join("stat")).ok()?;
    let (name, state, parent_pid) = parse_stat(&stat)?;
    let command_line = std::fs::read(directory.join("cmdline"))
        .map(|bytes| {
            bytes
                .split(|byte| *byte == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Some(ProcessEntry {
        pid,
        parent_pid,
        name,
        state,
        command_line,
    })
}

/// Parses `PID (NAME) STATE PPID ...`. The name may itself contain spaces
/// and parentheses, so it ends at the last `)`.
fn parse_stat(stat: &str) -> Option<(String, char, u32)> {
    let name_start = stat.find('(')? + 1;
    let name_end = stat.rfind(')')?;
    let name = stat.get(name_start..name_end)?.to_string();
    let mut rest = stat.get(name_end + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let parent_pid = rest.next()?.parse().ok()?;
    Some((name, state, parent_pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_with_spaces_and_parentheses_parse() {
        assert_eq!(
            parse_stat("4242 (my (odd) name) S 17 4242 4242 0 -1"),
            Some(("my (odd) name".to_string(), 'S', 17))
        );
    }

    #[test]
    fn the_current_process_is_found_as_a_descendant_of_its_parent() {
        let table = ProcessTable::snapshot();
        let me = table
            .get(std::process::id())
            .expect("the test process is in /proc");
        let found = table
            .find_descendant_named(me.parent_pid, &me.name)
            .expect("found among the parent's descendants");
        assert_eq!(found.name, me.name);
        assert!(is_process_alive(me.pid));
    }
}
