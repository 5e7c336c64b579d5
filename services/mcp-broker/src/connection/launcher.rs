//! How stdio children are started so that none outlives a broker killed with `SIGKILL`.
//!
//! `unsafe` being forbidden, the broker cannot call `prctl(PR_SET_PDEATHSIG)` between fork
//! and exec itself, so a [`Launcher`] starts each server through util-linux's
//! `setpriv --pdeathsig KILL -- <command> <args>` when `setpriv` is on `PATH` at start-up:
//! setpriv sets the signal and execs the server, which keeps setpriv's process id (so the
//! group id and every check by PID stay valid). Linux sends that signal when the *thread*
//! that forked the child ends, not the process, so every spawn happens on one dedicated
//! thread that lives as long as the process (a tokio blocking-pool thread, which exits
//! when idle, would kill its children with it). Without setpriv, children are spawned
//! directly, as [`Launcher::direct`] always does.
//!
//! A launcher may also record each child's process group in a [`GroupLedger`], for the
//! processes the server started itself, which the parent-death signal does not reach.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, mpsc};

use tokio::process::{Child, Command};

use super::ledger::GroupLedger;
use super::spec::StdioSpec;

/// Work for the spawning thread.
type Job = Box<dyn FnOnce() + Send>;

/// How stdio children are started and recorded.
#[derive(Debug, Clone, Default)]
pub struct Launcher {
    /// `setpriv`, when children get a parent-death signal.
    setpriv: Option<PathBuf>,
    ledger: Option<Arc<GroupLedger>>,
}

impl Launcher {
    /// Spawns children directly, recording them nowhere.
    pub fn direct() -> Launcher {
        Launcher::default()
    }

    /// Spawns children through `setpriv --pdeathsig KILL` when `setpriv` is on `PATH` (said
    /// once at info when it is not), recording their groups in `ledger`.
    pub fn detect(ledger: Option<Arc<GroupLedger>>) -> Launcher {
        let setpriv = find_program(OsStr::new("setpriv"), std::env::var_os("PATH").as_deref());
        if setpriv.is_none() {
            tracing::info!(
                "setpriv (util-linux) is not on PATH: stdio MCP servers get no parent-death signal, so those of a broker killed with SIGKILL end only when a broker starts again"
            );
        }
        Launcher { setpriv, ledger }
    }

    /// Whether children get a parent-death signal.
    pub fn kills_with_parent(&self) -> bool {
        self.setpriv.is_some()
    }

    /// Where children's process groups are recorded, if anywhere.
    pub(crate) fn ledger(&self) -> Option<&Arc<GroupLedger>> {
        self.ledger.as_ref()
    }

    /// The command that runs `spec`'s program with `spec`'s arguments, through setpriv when
    /// there is one; the caller adds the environment and pipes.
    pub(crate) fn command(&self, spec: &StdioSpec) -> io::Result<Command> {
        let Some(setpriv) = &self.setpriv else {
            let mut command = Command::new(&spec.command);
            command.args(&spec.args);
            return Ok(command);
        };
        // Spawned directly, a missing program fails the spawn; through setpriv it would
        // only make setpriv exit, so it is looked for first, as the child will.
        let path = spec
            .env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| OsString::from(value))
            .or_else(|| std::env::var_os("PATH"));
        let program = match &spec.working_directory {
            Some(directory) if spec.command.contains('/') => directory.join(&spec.command),
            _ => PathBuf::from(&spec.command),
        };
        if find_program(program.as_os_str(), path.as_deref()).is_none() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such program"));
        }
        let mut command = Command::new(setpriv);
        command.args(["--pdeathsig", "KILL", "--"]).arg(&spec.command).args(&spec.args);
        Ok(command)
    }

    /// Spawns `command`: on the spawning thread when children get a parent-death signal.
    pub(crate) async fn spawn(&self, mut command: Command) -> io::Result<Child> {
        let Some(jobs) = self.setpriv.as_ref().and_then(|_| spawning_thread()) else {
            return command.spawn();
        };
        let runtime = tokio::runtime::Handle::current();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The child's pipes and reaping belong to the caller's runtime.
            let _runtime = runtime.enter();
            // A caller that went away drops the child, which kills it.
            let _ = sender.send(command.spawn());
        });
        jobs.send(job).map_err(|_| io::Error::other("the stdio spawning thread has stopped"))?;
        receiver.await.map_err(|_| io::Error::other("the stdio spawning thread dropped a spawn"))?
    }
}

/// The thread every child with a parent-death signal is forked from, started on first use
/// and never ended; `None` if it could not be started (children are then spawned in place).
fn spawning_thread() -> Option<&'static mpsc::Sender<Job>> {
    static JOBS: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    JOBS.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("mcp-stdio-spawner".into()).spawn(move || {
            for job in queue {
                job();
            }
        });
        match started {
            Ok(_) => Some(jobs),
            Err(error) => {
                tracing::warn!(%error, "could not start the stdio spawning thread; spawning in place");
                None
            }
        }
    })
    .as_ref()
}

/// `program` if it is a path (it contains `/`) to an executable file, else the first
/// executable file of that name in the directories of `path`.
fn find_program(program: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    let program = Path::new(program);
    if program.components().count() > 1 || program.is_absolute() {
        return is_executable(program).then(|| program.to_owned());
    }
    std::env::split_paths(path?).map(|directory| directory.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_or_by_their_own_path() {
        let path = OsString::from("/nonexistent:/bin:/usr/bin");
        let sh = find_program(OsStr::new("sh"), Some(&path)).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute());
        assert_eq!(find_program(sh.as_os_str(), None), Some(sh.clone()));
        assert_eq!(find_program(OsStr::new("agentmesh-no-such-program"), Some(&path)), None);
        assert_eq!(find_program(OsStr::new("sh"), None), None);
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(find_program(manifest.as_os_str(), None), None, "not executable");
    }
}
