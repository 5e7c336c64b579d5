//! The process groups of a broker's live stdio children, on disk, so that what a broker
//! killed with `SIGKILL` left behind is killed when a broker starts again.
//!
//! A parent-death signal (see [`super::launcher`]) ends a stdio server when the broker
//! dies, but not the processes that server started (`npx` → `node`), which stay in its
//! process group. So each broker keeps one file in the state directory (`MCP_STATE_DIR`)
//! naming itself (process id and start time) and, per live child, the child's process
//! group id and start time, rewritten atomically (a temporary file renamed over it) as
//! children start and end, and removed when the broker stops.
//!
//! At start-up, [`GroupLedger::open`] reads every file whose broker no longer runs (no
//! process with its id and start time: brokers sharing the directory, in this process or
//! another, are left alone), `SIGKILL`s each recorded group whose leader still runs with
//! the recorded start time, or whose leader is gone but which still has members, and
//! removes the file. A group whose leader id now belongs to a process started at another
//! time is someone else's and is left alone. Start times are field 22 of `/proc/<pid>/stat`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::process::{Pid, Signal};

/// The extension of a broker's ledger file.
const EXTENSION: &str = "groups";
/// Ledgers opened by this process so far, so that brokers sharing a process (tests, one
/// binary running several services) have files of their own.
static OPENED: AtomicU64 = AtomicU64::new(0);

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("MCP state directory {}: {source}", path.display())]
pub struct LedgerError {
    path: PathBuf,
    source: io::Error,
}

/// One broker's record of its children's process groups (see the module docs).
#[derive(Debug)]
pub struct GroupLedger {
    path: PathBuf,
    /// This broker: its process id and start time.
    owner: (u32, u64),
    /// Each live child's process group id and its leader's start time.
    groups: Mutex<BTreeMap<u32, u64>>,
}

impl GroupLedger {
    /// Creates `directory` if needed, kills what brokers that no longer run left recorded
    /// there, then starts this broker's own (empty) file.
    pub fn open(directory: &Path) -> Result<Arc<GroupLedger>, LedgerError> {
        let failed = |source| LedgerError { path: directory.to_owned(), source };
        std::fs::create_dir_all(directory).map_err(failed)?;
        let killed = reap(directory).map_err(failed)?;
        if killed > 0 {
            tracing::warn!(killed, directory = %directory.display(), "killed stdio MCP server process groups left by a broker that died");
        }
        let pid = std::process::id();
        let owner = (pid, start_time(pid).unwrap_or_default());
        let instance = OPENED.fetch_add(1, Ordering::Relaxed);
        let path = directory.join(format!("{pid}-{instance}.{EXTENSION}"));
        let ledger = GroupLedger { path, owner, groups: Mutex::default() };
        ledger.write(&BTreeMap::new()).map_err(failed)?;
        Ok(Arc::new(ledger))
    }

    /// The file this broker records its children in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the process group led by the child `pid`, just started.
    pub(crate) fn record(&self, pid: u32) {
        let Some(started) = start_time(pid) else { return };
        self.change(|groups| groups.insert(pid, started).is_none());
    }

    /// Forgets the process group led by `pid`, ended.
    pub(crate) fn forget(&self, pid: u32) {
        self.change(|groups| groups.remove(&pid).is_some());
    }

    /// Applies `change` and rewrites the file when it changed something.
    fn change(&self, change: impl FnOnce(&mut BTreeMap<u32, u64>) -> bool) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if change(&mut groups)
            && let Err(error) = self.write(&groups)
        {
            tracing::warn!(path = %self.path.display(), %error, "could not record the stdio MCP servers' process groups");
        }
    }

    /// Writes the file atomically: a temporary file renamed over it.
    fn write(&self, groups: &BTreeMap<u32, u64>) -> io::Result<()> {
        let mut text = format!("owner {} {}\n", self.owner.0, self.owner.1);
        for (group, started) in groups {
            let _ = writeln!(text, "group {group} {started}");
        }
        let temporary = self.path.with_extension("tmp");
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &self.path)
    }
}

impl Drop for GroupLedger {
    fn drop(&mut self) {
        // Every child has ended by now: each holds the ledger until it is reaped.
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the stdio process group ledger");
        }
    }
}

/// Kills the groups recorded by brokers of `directory` that no longer run and removes
/// their files; returns how many groups were killed.
fn reap(directory: &Path) -> io::Result<usize> {
    let mut killed = 0;
    for entry in std::fs::read_dir(directory)? {
        let path = entry?.path();
        if path.extension().is_none_or(|extension| extension != EXTENSION) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let ledger = parse(&text);
        if ledger.owner.is_some_and(|(pid, started)| start_time(pid) == Some(started)) {
            // Its broker still runs (perhaps this very process): its children are its own.
            continue;
        }
        for (group, started) in ledger.groups {
            if kill_if_left(group, started) {
                killed += 1;
            }
        }
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            return Err(error);
        }
    }
    Ok(killed)
}

/// `SIGKILL`s `group` if it is still the one recorded: its leader runs with the recorded
/// start time, or its leader is gone and the group still has members.
fn kill_if_left(group: u32, started: u64) -> bool {
    let Some(id) = i32::try_from(group).ok().and_then(Pid::from_raw) else { return false };
    let ours = match start_time(group) {
        Some(now) => now == started,
        // While a group has members its id is not given to a new process, so members of a
        // group whose leader is gone are what that leader left.
        None => rustix::process::test_kill_process_group(id).is_ok(),
    };
    ours && rustix::process::kill_process_group(id, Signal::KILL).is_ok()
}

/// What one ledger file says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Recorded {
    owner: Option<(u32, u64)>,
    groups: Vec<(u32, u64)>,
}

/// Reads a ledger file, skipping lines it does not understand.
fn parse(text: &str) -> Recorded {
    let mut recorded = Recorded::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(kind), Some(Ok(id)), Some(Ok(started))) =
            (fields.next(), fields.next().map(str::parse), fields.next().map(str::parse))
        else {
            continue;
        };
        match kind {
            "owner" => recorded.owner = Some((id, started)),
            "group" => recorded.groups.push((id, started)),
            _ => {}
        }
    }
    recorded
}

/// When process `pid` started (clock ticks after boot), if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces and parentheses) start at field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_file_is_read_line_by_line() {
        let text = "owner 10 500\ngroup 11 501\nnonsense\ngroup 12 x\ngroup 13 503\n";
        assert_eq!(parse(text), Recorded { owner: Some((10, 500)), groups: vec![(11, 501), (13, 503)] });
    }

    #[test]
    fn this_process_has_a_start_time_and_a_missing_one_has_none() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
