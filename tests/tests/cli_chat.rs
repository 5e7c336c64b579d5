//! The `agentmesh` command line as a person uses it.
//!
//! `agentmesh chat` runs in a detached tmux session (a real terminal: line input, Ctrl-C
//! as a signal) against the real `agentmesh up` with the MCP reference server's `get-sum`
//! registered: keys go in with `send-keys`, the screen comes back with `capture-pane`. A
//! message makes the scripted model call the tool; the call, its result and the streamed
//! answer appear inline. Ctrl-C cancels a streaming answer, a second Ctrl-C quits; a tool
//! that needs approval asks y/n. And `agentmesh up` without a key prints a development key,
//! a curl line that streams an answer and a chat command that answers, both run as printed.
//!
//! tmux and the reference server (`tests/mcp/install.sh`) are needed; without them each
//! test skips with one line, unless `AGENTMESH_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use agentmesh_e2e::mcp::{HttpPeer, everything, register_everything};
use agentmesh_e2e::{ALICE, Mesh, NO_RATE_LIMITS, binary, free_port};
use agentmesh_testkit::{REQUIRE_SERVICES_ENV, services_required};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

/// How long a screen may take to show what a test waits for.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

const GET_SUM: &str = "/tool everything_get-sum {\"a\": 2, \"b\": 3}";

/// A tmux server of one test (its own socket) running one command in a 200×50 window,
/// killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// `command` in a new detached session; the pane stays after the command exits, so
    /// its last screen can be read.
    fn start(command: &[&str]) -> Tmux {
        let tmux = Tmux { socket: agentmesh_testkit::unique_name("agentmesh-chat") };
        let mut args = vec!["new-session", "-d", "-s", "chat", "-x", "200", "-y", "50", "--"];
        args.extend_from_slice(command);
        tmux.run(&args);
        tmux.run(&["set-option", "-w", "-t", "chat", "remain-on-exit", "on"]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().unwrap();
        assert!(output.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `text` and presses Enter.
    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "chat", "-l", text]);
        self.run(&["send-keys", "-t", "chat", "Enter"]);
    }

    /// Presses Ctrl-C.
    fn ctrl_c(&self) {
        self.run(&["send-keys", "-t", "chat", "C-c"]);
    }

    /// The whole pane, its history included.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-t", "chat", "-S", "-"])
    }

    /// Whether the command has exited.
    fn exited(&self) -> bool {
        self.run(&["list-panes", "-t", "chat", "-F", "#{pane_dead}"]).trim() == "1"
    }

    /// The screen once `ready` holds for it.
    async fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + SCREEN_TIMEOUT;
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; the screen:\n{screen}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").status();
    }
}

/// Whether tmux can be run; otherwise a one-line skip (a failure when services are required).
fn tmux_installed() -> bool {
    if std::process::Command::new("tmux").arg("-V").output().is_ok_and(|output| output.status.success()) {
        return true;
    }
    let reason = "tmux is not installed (apt-get install tmux)";
    assert!(!services_required(), "{reason} and {REQUIRE_SERVICES_ENV}=1");
    eprintln!("skipped: {reason}");
    false
}

/// The mesh with the reference server's `get-sum` registered for Alice, and the server.
async fn start() -> Option<(Mesh, HttpPeer)> {
    if !tmux_installed() {
        return None;
    }
    let entry = everything()?;
    let mcp = HttpPeer::everything(&entry).await;
    // Slow enough words that an answer is seen growing, and can be cancelled midway.
    let mesh = Mesh::up(&[("LLM_SCRIPTED_DELAY", "0.1".to_owned())]).await.unwrap();
    register_everything(&mesh, ALICE, mcp.port(), "get-sum").await;
    Some((mesh, mcp))
}

/// `agentmesh chat` against `mesh` as Alice, with `extra` arguments, in tmux.
fn chat(mesh: &Mesh, extra: &[&str]) -> Tmux {
    let program = binary("agentmesh").unwrap();
    let program = program.to_str().unwrap();
    let mut command = vec![program, "chat", "--url", mesh.base(), "--key", ALICE];
    command.extend_from_slice(extra);
    Tmux::start(&command)
}

/// The number of prompts on `screen`.
fn prompts(screen: &str) -> usize {
    screen.lines().filter(|line| line.starts_with("you> ")).count()
}

#[tokio::test]
async fn a_message_streams_an_answer_with_the_tool_call_inline_and_ctrl_c_cancels_then_quits() {
    let Some((mesh, _server)) = start().await else { return };
    let tmux = chat(&mesh, &[]);
    let greeting = tmux.wait_for("the prompt", |screen| prompts(screen) == 1).await;
    // The default agent, with every tool the reference server has.
    assert!(greeting.contains("Chatting with agent assistant (the default model; everything_"), "{greeting}");
    assert!(greeting.contains("everything_get-sum"), "{greeting}");

    // A message that makes the scripted model call the tool: the call, the real server's
    // result, then the answer, word by word.
    tmux.type_line(GET_SUM);
    let answer = "agent> Tool everything_get-sum returned: The sum of 2 and 3 is 5.";
    let partial =
        tmux.wait_for("the answer to start", |screen| screen.contains("agent> Tool") && !screen.contains(answer)).await;
    assert!(partial.contains("  [tool call] everything_get-sum {\"a\": 2, \"b\": 3}\n"), "{partial}");
    assert!(partial.contains("  [tool result] everything_get-sum: The sum of 2 and 3 is 5.\n"), "{partial}");
    let screen = tmux.wait_for("the whole answer and the next prompt", |screen| prompts(screen) == 2).await;
    let call = screen.find("[tool call]").unwrap();
    let result = screen.find("[tool result]").unwrap();
    let reply = screen.find(answer).unwrap_or_else(|| panic!("no answer:\n{screen}"));
    assert!(call < result && result < reply, "call, result, answer in that order:\n{screen}");

    // A long answer, cancelled midway with Ctrl-C: the run ends cancelled, the rest never
    // comes, and the chat waits for the next message.
    let words: Vec<String> = (1..=40).map(|n| format!("w{n}")).collect();
    tmux.type_line(&words.join(" "));
    tmux.wait_for("the echo to start", |screen| screen.contains("agent> You said: w1 ")).await;
    tmux.ctrl_c();
    let cancelled = tmux.wait_for("the cancel", |screen| prompts(screen) == 3).await;
    assert!(cancelled.contains("[cancelling; Ctrl-C again quits]"), "{cancelled}");
    assert!(cancelled.contains("[run cancelled"), "{cancelled}");
    let echo = cancelled.lines().find(|line| line.starts_with("agent> You said:")).unwrap();
    assert!(!echo.contains("w40"), "the answer stopped:\n{cancelled}");
    assert!(!tmux.exited(), "one Ctrl-C does not quit");

    // The second Ctrl-C quits.
    tmux.ctrl_c();
    let deadline = tokio::time::Instant::now() + SCREEN_TIMEOUT;
    while !tmux.exited() {
        assert!(tokio::time::Instant::now() < deadline, "the chat did not quit:\n{}", tmux.screen());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_tool_call_needing_approval_asks_and_runs_when_approved() {
    let Some((mesh, _server)) = start().await else { return };
    let careful =
        json!({"name": "careful", "tools": ["everything_get-sum"], "approval": {"tools": ["everything_get-sum"]}});
    let (status, body) = mesh.json(ALICE, Method::POST, "/api/v1/agents", Some(careful)).await;
    assert_eq!(status, 201, "{body}");
    let tmux = chat(&mesh, &["--agent", "careful"]);
    tmux.wait_for("the prompt", |screen| prompts(screen) == 1).await;

    tmux.type_line(GET_SUM);
    let asking = tmux.wait_for("the question", |screen| screen.contains("Run it? [y/n] ")).await;
    assert!(asking.contains("  [tool call] everything_get-sum {\"a\": 2, \"b\": 3} (needs approval)\n"), "{asking}");
    assert!(asking.contains("  [approval needed]"), "{asking}");
    tmux.type_line("maybe");
    tmux.wait_for("a second question", |screen| screen.contains("Please answer y or n.")).await;
    tmux.type_line("y");
    let screen = tmux.wait_for("the answer", |screen| prompts(screen) == 2).await;
    assert!(screen.contains("agent> Tool everything_get-sum returned: The sum of 2 and 3 is 5."), "{screen}");
}

#[tokio::test]
async fn up_without_a_key_prints_a_development_key_and_a_curl_line_that_streams_an_answer() {
    let port = free_port().unwrap();
    let mut env: Vec<(&str, String)> = NO_RATE_LIMITS.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    env.push(("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()));
    let mut up = Command::new(binary("agentmesh").unwrap())
        .args(["up", "--http", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let last = line == "Ctrl-C stops it.";
            banner.push(line);
            if last {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("the banner");
    let banner = banner.join("\n");
    let field = |name: &str| {
        let line =
            banner.lines().find(|line| line.trim_start().starts_with(name)).unwrap_or_else(|| panic!("{banner}"));
        line.trim_start()[name.len()..].trim().to_owned()
    };
    let gateway = format!("http://127.0.0.1:{port}");
    assert_eq!(field("Gateway"), gateway);
    assert_eq!(field("Docs"), format!("{gateway}/docs"));
    assert!(field("Model").starts_with("scripted/echo: a built-in test model"), "{banner}");
    let key = field("API key");
    assert!(key.starts_with("sk-"), "{banner}");
    assert!(banner.contains(&format!("agentmesh chat --url {gateway} --key {key}")), "{banner}");

    // The key works, and the curl line streams an answer when run exactly as printed.
    let sessions =
        reqwest::Client::new().get(format!("{gateway}/api/v1/sessions")).bearer_auth(&key).send().await.unwrap();
    assert!(sessions.status().is_success(), "{}", sessions.status());
    let curl = banner.lines().map(str::trim).find(|line| line.starts_with("curl ")).unwrap();
    let output =
        Command::new("sh").arg("-c").arg(format!("{curl} --silent --show-error --fail")).output().await.unwrap();
    let stream = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{curl}: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stream.contains("event: token") && stream.contains("You said: Hello!"), "{stream}");
    assert!(stream.contains("event: run_completed"), "{stream}");

    // So does the chat command it prints, fed two lines on stdin.
    let chat = banner.lines().map(str::trim).find(|line| line.starts_with("agentmesh chat ")).unwrap();
    let bin = binary("agentmesh").unwrap().parent().unwrap().to_owned();
    let path =
        std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())));
    let mut chat = Command::new("sh")
        .arg("-c")
        .arg(chat)
        .env("PATH", path.unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"hi\nbye\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), chat.wait_with_output()).await.unwrap().unwrap();
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{transcript}{}", String::from_utf8_lossy(&output.stderr));
    assert!(transcript.contains("you> hi\nagent> You said: hi\nyou> bye\nagent> You said: bye\n"), "{transcript}");
}
