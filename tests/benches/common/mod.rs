//! Shared by the load drivers under `tests/benches/` (`mod common;` in each): release
//! binaries started as child processes and killed on drop, on panic and by a watchdog;
//! their CPU time from `/proc`; `BENCH_*` knobs; CPU pinning and scheduling; percentiles;
//! and the load of the added-latency benches (llm-proxy, mcp-broker): open loop on a fixed
//! timetable, closed-loop ceiling, CPU charged per call, the agent-orchestrator's tokens.
//!
//! Each bench uses a subset, so unused items are allowed here.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_e2e::binary;
use agentmesh_runtime::ServiceName;
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER};
use agentmesh_testkit::identity;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
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
        Self::spawn_with_args(name, &[], env, cpu)
    }

    /// [`Service::spawn`] with command-line arguments.
    pub fn spawn_with_args(name: &'static str, args: &[&str], env: &[(&str, String)], cpu: usize) -> Self {
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
            .args(args)
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
        if keep_logs() {
            eprintln!("bench: {} log kept at {}", self.name, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `BENCH_KEEP_LOGS=1`: the services' logs stay in the temp directory after the bench
/// (their paths are printed), to read what went wrong after an error.
fn keep_logs() -> bool {
    std::env::var("BENCH_KEEP_LOGS").is_ok_and(|value| value == "1")
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

// ---------------------------------------------------------------------------------------
// Load: the settings, calls and loops of the added-latency benches.

/// Longest one call may take before it counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The `BENCH_*` knobs of an added-latency bench.
pub struct LoadSettings {
    /// `BENCH_RATE`: calls/s per path in the open loop.
    pub rate: u64,
    /// `BENCH_WARMUP_SECONDS` per path.
    pub warmup: Duration,
    /// `BENCH_SECONDS`: measured time per path.
    pub measure: Duration,
    /// `BENCH_ROUNDS`: the slices each path's measured time is cut into.
    pub rounds: usize,
    /// `BENCH_CONCURRENCY`: closed-loop workers of the ceiling.
    pub concurrency: usize,
    /// `BENCH_CEILING_SECONDS` per ceiling measurement.
    pub ceiling: Duration,
    /// `BENCH_MAX_IN_FLIGHT`: a call falling due while that many are in flight is dropped.
    pub max_in_flight: usize,
    /// `BENCH_GRPC_CHANNELS`: HTTP/2 connections to the measured service.
    pub grpc_channels: usize,
    /// `BENCH_TIMEOUT_SECONDS`: the hard overall timeout.
    pub timeout: Duration,
    /// `BENCH_NICE`: the nice value of the service and of this driver, when set.
    pub nice: Option<i32>,
    /// `BENCH_REALTIME=1`: the service and this driver in the real-time class.
    pub realtime: bool,
    /// CPUs of the machine (not of this process, which `BENCH_PIN` narrows).
    pub machine_cpus: usize,
}

impl LoadSettings {
    /// The knobs, with `rate` calls/s and `seconds` measured per path unless set.
    pub fn from_env(rate: u64, seconds: u64) -> Self {
        Self {
            rate: env_number("BENCH_RATE", rate).max(1),
            warmup: Duration::from_secs(env_number("BENCH_WARMUP_SECONDS", 3)),
            measure: Duration::from_secs(env_number("BENCH_SECONDS", seconds).max(1)),
            rounds: env_number("BENCH_ROUNDS", 3).max(1) as usize,
            concurrency: env_number("BENCH_CONCURRENCY", 64).max(1) as usize,
            ceiling: Duration::from_secs(env_number("BENCH_CEILING_SECONDS", 10).max(1)),
            max_in_flight: env_number("BENCH_MAX_IN_FLIGHT", 512).max(1) as usize,
            grpc_channels: env_number("BENCH_GRPC_CHANNELS", 4).max(1) as usize,
            timeout: Duration::from_secs(env_number("BENCH_TIMEOUT_SECONDS", 600).max(10)),
            nice: std::env::var("BENCH_NICE")
                .ok()
                .map(|raw| raw.trim().parse().unwrap_or_else(|_| panic!("BENCH_NICE={raw:?} is not a nice value"))),
            realtime: env_number("BENCH_REALTIME", 0) != 0,
            machine_cpus: std::thread::available_parallelism().map_or(0, usize::from),
        }
    }

    /// Applies `BENCH_NICE` and `BENCH_REALTIME` to process `pid`.
    pub fn schedule(&self, pid: u32) {
        if let Some(nice) = self.nice {
            renice(pid, nice);
        }
        if self.realtime {
            realtime(pid);
        }
    }

    /// The hard timeout, pinning (`BENCH_PIN`, on `cpu`) and scheduling of this driver.
    pub fn prepare_driver(&self, cpu: usize) {
        install_guards(self.timeout);
        if pinned() {
            pin_self(cpu);
        }
        self.schedule(std::process::id());
    }
}

/// `grpc_channels` HTTP/2 connections to a service on loopback `port`.
pub async fn grpc_channels(port: u16, count: usize) -> Arc<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        // Separate endpoints connect separately: one HTTP/2 connection each.
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().tcp_nodelay(true);
        channels.push(endpoint.connect().await.unwrap());
    }
    Arc::new(channels)
}

/// The agent-orchestrator's tokens for calls to one service, minted for one slice (they
/// live 5 minutes; a service verifies each new pair once, then serves it from its cache).
#[derive(Clone)]
pub struct Tokens {
    principal: MetadataValue<Ascii>,
    actor: MetadataValue<Ascii>,
}

impl Tokens {
    /// A user's principal within run `run-bench`, and the orchestrator's actor token for `callee`.
    pub fn mint(callee: ServiceName) -> Self {
        let mut claims =
            identity::principal_claims(ServiceName::AgentOrchestrator, &identity::user("bench", "bench"), 300);
        claims.run = Some("run-bench".to_owned());
        let principal = identity::principal_signed_by(ServiceName::AgentOrchestrator, &claims);
        let actor = identity::actor_token(ServiceName::AgentOrchestrator, callee);
        Self { principal: principal.parse().unwrap(), actor: actor.parse().unwrap() }
    }

    pub fn insert(&self, metadata: &mut MetadataMap) {
        metadata.insert(PRINCIPAL_HEADER, self.principal.clone());
        metadata.insert(ACTOR_HEADER, self.actor.clone());
    }
}

/// What one call measured, from the moment it started.
pub struct Timing {
    /// To the first content delta (streams) or the whole answer (unary).
    pub first: Duration,
    /// To the end of the answer.
    pub total: Duration,
}

impl Timing {
    /// A unary call's timing: the answer is its first and last part.
    pub fn unary(total: Duration) -> Self {
        Self { first: total, total }
    }
}

pub type CallFuture = Pin<Box<dyn Future<Output = Result<Timing, String>> + Send>>;
/// One call of a path; the argument spreads calls over connections.
pub type Call = Arc<dyn Fn(usize) -> CallFuture + Send + Sync>;

/// What the calls of one path measured, in microseconds (sorted once complete).
#[derive(Default)]
pub struct Samples {
    /// Scheduled send → first content delta (unary: the whole answer).
    pub first: Vec<u32>,
    /// Scheduled send → end of the answer.
    pub total: Vec<u32>,
    /// Scheduled send → the call started (the driver's own delay; 0 in closed loop).
    pub lag: Vec<u32>,
    pub errors: usize,
    /// Calls not sent because `BENCH_MAX_IN_FLIGHT` calls were in flight.
    pub dropped: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// CPU time of the measured service.
    pub service_cpu: Duration,
    /// CPU time of this driver (and whatever it serves in-process).
    pub driver_cpu: Duration,
    /// Time the service's threads were runnable but waiting for a CPU.
    pub service_wait: Duration,
}

impl Samples {
    pub fn record(&mut self, result: Result<Timing, String>, lag: Duration) {
        match result {
            Ok(timing) => {
                self.first.push(micros(lag + timing.first));
                self.total.push(micros(lag + timing.total));
                self.lag.push(micros(lag));
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }

    pub fn merge(&mut self, other: Samples) {
        self.first.extend(other.first);
        self.total.extend(other.total);
        self.lag.extend(other.lag);
        self.errors += other.errors;
        self.dropped += other.dropped;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
        self.service_cpu += other.service_cpu;
        self.driver_cpu += other.driver_cpu;
        self.service_wait += other.service_wait;
    }

    pub fn sort(&mut self) {
        self.first.sort_unstable();
        self.total.sort_unstable();
        self.lag.sort_unstable();
    }

    pub fn calls(&self) -> usize {
        self.total.len()
    }

    pub fn rate(&self) -> f64 {
        self.calls() as f64 / self.elapsed.as_secs_f64()
    }
}

/// The driver delay of every call of `paths`, sorted.
pub fn all_lags<'a>(paths: impl IntoIterator<Item = &'a Samples>) -> Vec<u32> {
    let mut all: Vec<u32> = paths.into_iter().flat_map(|s| s.lag.iter().copied()).collect();
    all.sort_unstable();
    all
}

/// `cpu` spread over `calls`, in microseconds.
pub fn per_call_us(cpu: Duration, calls: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / calls.max(1) as f64
}

/// `call` within [`CALL_TIMEOUT`].
pub async fn timed(call: &Call, n: usize) -> Result<Timing, String> {
    tokio::time::timeout(CALL_TIMEOUT, call(n)).await.unwrap_or_else(|_| Err(format!("no answer in {CALL_TIMEOUT:?}")))
}

/// Calls `call` `rate` times a second for `duration` on a fixed timetable, each call in a
/// task of its own, timed from when it was due. The timetable is kept by a blocking thread
/// (`thread::sleep` wakes within tens of microseconds; tokio's timer has 1 ms steps).
pub async fn open_loop(settings: &LoadSettings, duration: Duration, call: &Call) -> Samples {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let count = (settings.rate as f64 * duration.as_secs_f64()).round() as usize;
    let (rate, max_in_flight) = (settings.rate as f64, settings.max_in_flight);
    let started = Instant::now();
    let dropped = {
        let (samples, in_flight, call) = (samples.clone(), in_flight.clone(), call.clone());
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Handle::current();
            let mut dropped = 0;
            for n in 0..count {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if in_flight.load(Ordering::Acquire) >= max_in_flight {
                    dropped += 1;
                    continue;
                }
                in_flight.fetch_add(1, Ordering::AcqRel);
                let (samples, in_flight, call) = (samples.clone(), in_flight.clone(), call.clone());
                runtime.spawn(async move {
                    let lag = due.elapsed();
                    let result = timed(&call, n).await;
                    samples.lock().unwrap().record(result, lag);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                });
            }
            dropped
        })
        .await
        .unwrap()
    };
    // Every call ends within CALL_TIMEOUT.
    while in_flight.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut samples = std::mem::take(&mut *samples.lock().unwrap());
    samples.dropped = dropped;
    samples.elapsed = started.elapsed();
    samples
}

/// `workers` loops calling `call` back to back for `duration`.
pub async fn closed_loop(workers: usize, duration: Duration, call: &Call) -> Samples {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while Instant::now() < deadline {
                    samples.record(timed(&call, worker).await, Duration::ZERO);
                }
                samples
            })
        })
        .collect();
    let mut total = Samples::default();
    for task in tasks {
        total.merge(task.await.expect("a load worker panicked"));
    }
    total.elapsed = started.elapsed();
    total
}

/// Checks each of `paths` with one call and warms it up for `BENCH_WARMUP_SECONDS`, then
/// measures each in `BENCH_ROUNDS` open-loop slices taken in turn, charging `service`'s CPU;
/// returns their samples, sorted, in the order of `paths`. `call_of` is asked for a path's
/// call again for every slice (so calls may carry fresh tokens).
pub async fn measure_paths<P: Copy + std::fmt::Debug>(
    settings: &LoadSettings,
    service: &mut Service,
    paths: &[P],
    call_of: impl Fn(P) -> Call,
) -> Vec<Samples> {
    for &path in paths {
        timed(&call_of(path), 0).await.unwrap_or_else(|error| panic!("{path:?}: {error}"));
    }
    for &path in paths {
        let warm = open_loop(settings, settings.warmup, &call_of(path)).await;
        assert_eq!(warm.errors, 0, "{path:?}: errors during warm-up: {:?}", warm.first_error);
    }
    let mut measured: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    let slice = settings.measure / u32::try_from(settings.rounds).unwrap_or(1);
    for round in 0..settings.rounds {
        for (&path, total) in paths.iter().zip(&mut measured) {
            eprintln!(
                "bench: round {}/{}: {path:?} at {} calls/s for {slice:?}",
                round + 1,
                settings.rounds,
                settings.rate
            );
            let call = call_of(path);
            total.merge(with_cpu(service, open_loop(settings, slice, &call)).await);
            service.check_alive();
        }
    }
    measured.iter_mut().for_each(Samples::sort);
    measured
}

/// The report's first line: CPUs, load before and after, and where processes ran
/// (`pinned`, when `BENCH_PIN` is set).
pub fn machine_summary(machine_cpus: usize, load_before: &str, pinned_placement: impl FnOnce() -> String) -> String {
    format!(
        "{machine_cpus} CPUs; 1-minute load average {load_before} before, {} after.{}\n",
        load_average(),
        if pinned() {
            format!(" {}", pinned_placement())
        } else {
            " Not pinned: every process shares every CPU.".to_owned()
        }
    )
}

/// Runs `load` and charges the CPU `service` and this process used meanwhile, and the
/// service's wait for a CPU, to its samples.
pub async fn with_cpu(service: &Service, load: impl Future<Output = Samples>) -> Samples {
    let before = (service.cpu(), own_cpu(), run_queue_wait(service.pid));
    let mut samples = load.await;
    samples.service_cpu = service.cpu().saturating_sub(before.0);
    samples.driver_cpu = own_cpu().saturating_sub(before.1);
    samples.service_wait = run_queue_wait(service.pid).saturating_sub(before.2);
    samples
}
