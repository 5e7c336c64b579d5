//! Loopback ports for servers that tests start as separate processes, which must be told
//! their port before they bind it.
//!
//! Binding port 0 and letting go hands out a port that is free only until someone takes
//! it: the kernel gives the same ephemeral ports to other tests' port-0 binds and to every
//! outgoing connection, and tests run in parallel processes. So ports are drawn from
//! [`RANGE`], below Linux's ephemeral range (32768–60999), which the kernel never hands
//! out by itself; a port is reserved across processes by an exclusive lock on a file
//! named after it (in `agentmesh-test-ports` under the temp dir), held until the test
//! process ends, when the OS drops it; and it must also be bindable right now (something
//! outside the tests may use it). The lock files stay, empty, to be locked again.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

/// Where ports are drawn from.
pub const RANGE: Range<u16> = 20_000..32_000;
/// Draws before giving up (the range is large and a test holds a handful).
const DRAWS: u32 = 1_000;

/// The lock files of this process's ports, held until it exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Why no port could be reserved.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The directory of the lock files could not be made.
    #[error("making {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Every draw found its port reserved or in use.
    #[error("no free port in {RANGE:?} after {DRAWS} draws")]
    Exhausted,
}

/// A loopback port that no other test process holds and nothing listens on, reserved for
/// this process until it exits.
///
/// # Errors
/// When the lock directory cannot be made, or no port is free.
pub fn reserve() -> Result<u16, PortError> {
    let directory = std::env::temp_dir().join("agentmesh-test-ports");
    std::fs::create_dir_all(&directory).map_err(|source| PortError::Directory { path: directory.clone(), source })?;
    for _ in 0..DRAWS {
        let port = rand::random_range(RANGE);
        let Ok(file) =
            OpenOptions::new().create(true).truncate(false).write(true).open(directory.join(port.to_string()))
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap_or_else(PoisonError::into_inner).push(file);
        return Ok(port);
    }
    Err(PortError::Exhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_differ_lie_in_the_range_and_are_locked() {
        let ports: Vec<u16> = (0..20).map(|_| reserve().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|port| RANGE.contains(port)), "{ports:?}");
        let file = std::env::temp_dir().join("agentmesh-test-ports").join(ports[0].to_string());
        let again = OpenOptions::new().write(true).open(file).unwrap();
        assert!(again.try_lock().is_err(), "another handle could lock a reserved port's file");
    }
}
