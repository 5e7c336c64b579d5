//! Shared by the load drivers under `tests/benches/` (`mod common;` in each): release
//! binaries started as child processes and killed on drop, on panic and by a watchdog;
//! their CPU time from `/proc`; `BENCH_*` knobs; CPU pinning; percentiles.
//!
//! Each bench uses a subset, so unused items are allowed here.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentmesh_e2e::binary;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a started binary may take to serve.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `BENCH_*` knob: a whole number, `default` when unset.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(raw) => raw.trim().parse().unwrap_or_else(|_| panic!("{name}={raw:?} is not a whole number")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------
// Processes: started here, killed on drop, on panic and by the watchdog.

/// Pid and log file of every process started and not yet dropped.
static STARTED: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

/// Kills every started process; with `remove_logs`, also deletes their log files (the
/// watchdog exits without running destructors).
pub fn kill_started(remove_logs: bool) {
    let started: Vec<(u32, PathBuf)> = STARTED.lock().map(|started| started.clone()).unwrap_or_default();
    for (pid, log) in started {
        let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        if remove_logs {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// Kills every started process on panic (before unwinding) and after `timeout` (then exits).
pub fn install_guards(timeout: Duration) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_started(false);
        default_hook(info);
    }));
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!("bench: hard timeout of {timeout:?} reached; killing every started process");
        kill_started(true);
        std::process::exit(124);
    });
}

/// A release binary running in the background, its stderr in a log file.
pub struct Service {
    name: &'static str,
    child: tokio::process::Child,
    /// The binary's process id.
    pub pid: u32,
    log: PathBuf,
}

impl Service {
    /// Starts `name`; with `BENCH_PIN=1`, on `cpu` only (through `taskset`, which execs the
    /// binary, so the pid is the binary's).
    pub fn spawn(name: &'static str, env: &[(&str, String)], cpu: usize) -> Self {
        let path = binary(name).unwrap_or_else(|error| {
            panic!("{error}\n(for the benches: `cargo build --release --bins` first)");
        });
        let log = std::env::temp_dir().join(format!("agentmesh-bench-{}-{name}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("a log file in the temp directory");
        let mut command = if pinned() {
            let mut taskset = tokio::process::Command::new("taskset");
            taskset.arg("-c").arg(cpu.to_string()).arg(path);
            taskset
        } else {
            tokio::process::Command::new(path)
        };
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(service_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = command.spawn().expect("the binary starts");
        let pid = child.id().expect("a pid");
        STARTED.lock().unwrap().push((pid, log.clone()));
        Self { name, child, pid, log }
    }

    pub fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{} exited with {status}; stderr:\n{log}", self.name);
        }
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Open file descriptors (sockets, mostly).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map(Iterator::count).unwrap_or(0)
    }

    pub fn cpu(&self) -> Duration {
        cpu_time(&format!("/proc/{}/stat", self.pid))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Ok(mut pids) = STARTED.lock() {
            pids.retain(|(pid, _)| *pid != self.pid);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// User + system CPU time of a process, from a `/proc/<pid>/stat` path.
pub fn cpu_time(stat_path: &str) -> Duration {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 (indices 11 and 12 after the name).
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / clock_ticks() as f64)
}

pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

pub async fn wait_grpc_serving(service: &mut Service, port: u16) {
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        service.check_alive();
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
            if matches!(status, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{} did not report SERVING on port {port}", service.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_http_ok(service: &mut Service, url: &str) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        service.check_alive();
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{} did not answer 200 at {url}", service.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `BENCH_SERVICE_ENV`: `NAME=value` pairs separated by spaces, set last on every binary
/// started (for A/B experiments such as `OBSERVABILITY_TRACING_ENABLED=false`).
pub fn service_env() -> Vec<(String, String)> {
    let extra = std::env::var("BENCH_SERVICE_ENV").unwrap_or_default();
    extra
        .split_whitespace()
        .map(|pair| {
            let (name, value) =
                pair.split_once('=').unwrap_or_else(|| panic!("BENCH_SERVICE_ENV: {pair:?} is not NAME=value"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// `BENCH_PIN=1`: the measured service runs on a core of its own (CPU 1), everything else,
/// this load driver included, on CPU 0. The service is then a tier with its own capacity,
/// as in a deployment, and the paths compared get the same capacity for the rest.
pub fn pinned() -> bool {
    env_number("BENCH_PIN", 0) != 0
}

/// Moves every thread of this process to `cpu` (threads started later inherit it).
pub fn pin_self(cpu: usize) {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-c", "-p", &cpu.to_string(), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux) runs");
    assert!(status.success(), "taskset could not pin the driver to CPU {cpu}");
}

/// CPU time of this process (the load driver and whatever it serves in-process).
pub fn own_cpu() -> Duration {
    cpu_time("/proc/self/stat")
}

/// How long the threads of process `pid` have been runnable but
/// waiting for a CPU, summed over its live threads (`/proc/<pid>/task/*/schedstat`, second
/// field). On a shared machine this is the part of the latency other processes caused.
pub fn run_queue_wait(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let nanos: u64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(nanos)
}

/// Sets the nice value of every thread of process `pid`; threads
/// started later inherit it from the thread that starts them. Negative values need root.
pub fn renice(pid: u32, nice: i32) {
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process' threads")
        .flatten()
        .map(|task| task.file_name().to_string_lossy().into_owned())
        .collect();
    let status = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&tids)
        .stdout(Stdio::null())
        .status()
        .expect("renice (util-linux) runs");
    assert!(status.success(), "renice -n {nice} failed for process {pid}");
}

/// Moves every thread of process `pid` to the real-time class
/// (`SCHED_FIFO` priority 1): it then runs as soon as it is runnable, ahead of every normal
/// process, as on cores of its own; threads started later inherit it. Needs root. The
/// kernel keeps 5 % of each second for normal processes.
pub fn realtime(pid: u32) {
    let status = std::process::Command::new("chrt")
        .args(["--all-tasks", "--fifo", "--pid", "1", &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("chrt (util-linux) runs");
    assert!(status.success(), "chrt could not make process {pid} real-time");
}

/// The 1-minute load average (the machine is shared; a busy neighbour shows here).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The `q` quantile (0–1, nearest rank) of `sorted` microseconds, in milliseconds; NaN when
/// empty.
pub fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

/// A duration in whole microseconds, saturated to `u32` (71 minutes).
pub fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}
