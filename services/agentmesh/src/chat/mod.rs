//! `agentmesh chat`: an interactive chat with an agent through the gateway's REST API.
//!
//! ```text
//! agentmesh chat [--agent NAME|ID] [--session ID] [--url URL] [--key KEY | AGENTMESH_API_KEY]
//! ```
//!
//! Each line typed is a message; the answer's tokens are printed as they stream, tool calls
//! and their results inline ([`events`]). Ctrl-C cancels the current run (the cancel
//! endpoint) and a second Ctrl-C quits, as does Ctrl-D; a run waiting for approval asks
//! y/n and approves or rejects it. Without `--agent` the chat uses the default agent
//! ([`api::DEFAULT_AGENT`]), created or brought up to date with every enabled tool;
//! without `--session` it starts a new session.
//!
//! Lines are read on a thread of their own (a blocking read cannot be cancelled) and
//! Ctrl-C is caught as a signal; both arrive on one channel as [`Input`]s, so the chat
//! is one loop that waits for either the person or the run. Lines typed while an answer
//! streams are sent after it, in order.

pub mod api;
pub mod events;

use std::collections::VecDeque;
use std::io::{BufRead as _, IsTerminal as _, Write};
use std::process::ExitCode;

use futures::StreamExt as _;
use tokio::sync::mpsc;

use self::api::{Agent, Api, ApiError};
use self::events::{Renderer, RunEvent};

/// The gateway `--url` defaults to: where `agentmesh up` listens.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// `agentmesh chat`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// The agent to talk to, by name or id [default: the `assistant` agent, created with
    /// every enabled tool].
    #[arg(long, value_name = "NAME|ID")]
    pub agent: Option<String>,
    /// Continue this session [default: a new one].
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// The gateway's URL.
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// The API key (`agentmesh up` prints a development key).
    #[arg(long, value_name = "KEY", env = "AGENTMESH_API_KEY", hide_env_values = true)]
    pub key: String,
}

/// What the person did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Typed a line.
    Line(String),
    /// Pressed Ctrl-C.
    Interrupt,
    /// Closed the input (Ctrl-D).
    End,
}

/// Why the chat could not start.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The gateway refused or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The terminal could not be written.
    #[error("cannot write to the terminal: {0}")]
    Io(#[from] std::io::Error),
}

/// How a turn ended.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// Ready for the next message.
    Next,
    /// Ctrl-C cancelled the run: another Ctrl-C at the prompt quits.
    Cancelled,
    /// The person asked to quit.
    Quit,
}

/// Runs `agentmesh chat`: its own small runtime (the chat is a client; it loads no mesh
/// configuration), exit code 1 with one line when it cannot start.
pub fn main(args: ChatArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agentmesh chat: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (inputs, received) = mpsc::unbounded_channel();
        read_lines(inputs.clone());
        tokio::spawn(forward_interrupts(inputs));
        chat(&args, received).await
    });
    // The reading thread may still wait for a line: leave it behind.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agentmesh chat: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Reads stdin's lines on a thread of their own, then [`Input::End`].
fn read_lines(inputs: mpsc::UnboundedSender<Input>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if inputs.send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = inputs.send(Input::End);
    });
}

/// Sends an [`Input::Interrupt`] for every Ctrl-C (SIGINT).
async fn forward_interrupts(inputs: mpsc::UnboundedSender<Input>) {
    while tokio::signal::ctrl_c().await.is_ok() {
        if inputs.send(Input::Interrupt).is_err() {
            return;
        }
    }
}

/// The person's inputs as the chat takes them: lines typed while a run streams wait their
/// turn (so `printf 'a\nb\n' | agentmesh chat` asks both), Ctrl-C and the end of input
/// are seen at once.
struct Inputs {
    /// What the reading thread and the signal task send.
    receiver: mpsc::UnboundedReceiver<Input>,
    /// Lines that came while a run was streaming, oldest first.
    queued: VecDeque<String>,
    /// The input has ended: nothing more will be read.
    closed: bool,
    /// Show every line after its prompt: input that is not a terminal is not echoed by one.
    echo: bool,
}

impl Inputs {
    fn new(receiver: mpsc::UnboundedReceiver<Input>, echo: bool) -> Self {
        Inputs { receiver, queued: VecDeque::new(), closed: false, echo }
    }

    /// The next line (a queued one first, echoed to `out`), Ctrl-C, or the end.
    async fn next(&mut self, out: &mut impl Write) -> std::io::Result<Input> {
        if let Some(line) = self.queued.pop_front() {
            writeln!(out, "{line}")?;
            return Ok(Input::Line(line));
        }
        if self.closed {
            return Ok(Input::End);
        }
        Ok(match self.receiver.recv().await {
            Some(Input::End) | None => {
                self.closed = true;
                Input::End
            }
            Some(Input::Line(line)) => {
                if self.echo {
                    writeln!(out, "{line}")?;
                }
                Input::Line(line)
            }
            Some(Input::Interrupt) => Input::Interrupt,
        })
    }

    /// The next Ctrl-C or end of input while a run goes on, queueing the lines before it.
    /// Cancel-safe: a line is queued as soon as it is received.
    async fn signal(&mut self) -> Input {
        loop {
            match self.receiver.recv().await {
                Some(Input::Line(line)) => self.queued.push_back(line),
                Some(Input::Interrupt) => return Input::Interrupt,
                Some(Input::End) | None => {
                    self.closed = true;
                    return Input::End;
                }
            }
        }
    }
}

/// The chat: picks the agent and session, then one turn per line until the person quits.
pub async fn chat(args: &ChatArgs, inputs: mpsc::UnboundedReceiver<Input>) -> Result<(), ChatError> {
    let api = Api::new(&args.url, &args.key);
    let agent = match &args.agent {
        Some(name_or_id) => api.agent(name_or_id).await?,
        None => api.default_agent().await?,
    };
    let session = match &args.session {
        Some(session) => session.clone(),
        None => api.create_session("agentmesh chat").await?,
    };
    let mut out = std::io::stdout();
    writeln!(out, "{}", greeting(&agent, &session, api.base()))?;
    let mut inputs = Inputs::new(inputs, !std::io::stdin().is_terminal());
    let mut interrupts = 0;
    loop {
        write!(out, "you> ")?;
        out.flush()?;
        match inputs.next(&mut out).await? {
            Input::Line(line) if line.trim().is_empty() => {}
            Input::Line(line) => match turn(&api, &agent, &session, &line, &mut inputs).await? {
                Turn::Next => interrupts = 0,
                Turn::Cancelled => interrupts = 1,
                Turn::Quit => break,
            },
            Input::Interrupt => {
                interrupts += 1;
                if interrupts >= 2 {
                    writeln!(out)?;
                    break;
                }
                writeln!(out, "\n(Ctrl-C again, or Ctrl-D, to quit)")?;
            }
            Input::End => {
                writeln!(out)?;
                break;
            }
        }
    }
    Ok(())
}

/// The lines shown when the chat starts.
fn greeting(agent: &Agent, session: &str, url: &str) -> String {
    let model = agent.model.as_deref().unwrap_or("the default model");
    let tools = if agent.tools.is_empty() { "no tools".to_owned() } else { agent.tools.join(", ") };
    format!(
        "Chatting with agent {} ({model}; {tools}) at {url}\nSession {session} (--session {session} continues it)\n\
         Ctrl-C cancels a reply, a second Ctrl-C quits; so does Ctrl-D.",
        agent.name
    )
}

/// What happened during one turn, besides the run's events.
#[derive(Debug, Default)]
struct TurnState {
    /// The run, once its first event named it.
    run_id: Option<String>,
    /// Ctrl-C asked for the run to be cancelled.
    cancelling: bool,
}

impl TurnState {
    /// How the turn ends once its run has.
    fn outcome(&self) -> Turn {
        if self.cancelling { Turn::Cancelled } else { Turn::Next }
    }

    /// A Ctrl-C (the first cancels the run, as soon as it has an id; the second quits) or
    /// the end of input (the run goes on; the chat ends after it); `Some` ends the turn.
    fn signal(&mut self, signal: Input, api: &Api, renderer: &mut Renderer) -> Option<Turn> {
        if signal != Input::Interrupt {
            return None;
        }
        if self.cancelling {
            println!();
            return Some(Turn::Quit);
        }
        self.cancelling = true;
        match self.run_id.as_deref() {
            Some(run) => cancel(api, run, renderer),
            None => print!("{}", renderer.note("  [cancelling as soon as the run starts]")),
        }
        None
    }
}

/// One message and its run, shown as it streams; Ctrl-C cancels the run, a second quits.
async fn turn(api: &Api, agent: &Agent, session: &str, message: &str, inputs: &mut Inputs) -> Result<Turn, ChatError> {
    let mut out = std::io::stdout();
    let mut renderer = Renderer::new();
    let mut state = TurnState::default();
    let request = api.execute_stream(&agent.id, session, message);
    tokio::pin!(request);
    let mut stream = loop {
        tokio::select! {
            stream = &mut request => match stream {
                Ok(stream) => break stream,
                Err(error) => {
                    write!(out, "{}", renderer.note(&format!("  [error] {error}")))?;
                    return Ok(state.outcome());
                }
            },
            signal = inputs.signal(), if !inputs.closed => {
                if let Some(end) = state.signal(signal, api, &mut renderer) {
                    return Ok(end);
                }
            }
        }
    };
    loop {
        tokio::select! {
            event = stream.next() => {
                let event = match event {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        write!(out, "{}", renderer.note(&format!("  [error] {error}")))?;
                        return Ok(state.outcome());
                    }
                    None => {
                        write!(out, "{}", renderer.note("  [the stream ended before the run did]"))?;
                        return Ok(state.outcome());
                    }
                };
                write!(out, "{}", renderer.render(&event))?;
                out.flush()?;
                match &event {
                    RunEvent::Started { run_id } => {
                        // A Ctrl-C that came before the run had an id cancels it now.
                        if state.cancelling {
                            cancel(api, run_id, &mut renderer);
                        }
                        state.run_id = Some(run_id.clone());
                    }
                    RunEvent::Interrupt { calls, .. } => {
                        let Some(run) = state.run_id.clone() else { continue };
                        for call in calls {
                            writeln!(out, "  - {}", call.summary())?;
                        }
                        match ask_approval(inputs).await? {
                            Ok(approve) => {
                                if let Err(error) = api.decide(&run, approve).await {
                                    write!(out, "{}", renderer.note(&format!("  [error] {error}")))?;
                                }
                            }
                            Err(Input::Interrupt) => {
                                if let Some(end) = state.signal(Input::Interrupt, api, &mut renderer) {
                                    return Ok(end);
                                }
                            }
                            // No one is left to answer: the run is cancelled, the chat ends after it.
                            Err(_) => {
                                state.cancelling = true;
                                cancel(api, &run, &mut renderer);
                            }
                        }
                    }
                    RunEvent::Completed { .. } | RunEvent::StreamFailed(_) => return Ok(state.outcome()),
                    _ => {}
                }
            }
            signal = inputs.signal(), if !inputs.closed => {
                if let Some(end) = state.signal(signal, api, &mut renderer) {
                    return Ok(end);
                }
            }
        }
    }
}

/// Asks whether to run the calls waiting: `Ok(true)` to approve, `Ok(false)` to reject,
/// or the Ctrl-C or end of input that came instead of an answer.
async fn ask_approval(inputs: &mut Inputs) -> Result<Result<bool, Input>, ChatError> {
    let mut out = std::io::stdout();
    loop {
        write!(out, "Run it? [y/n] ")?;
        out.flush()?;
        match inputs.next(&mut out).await? {
            Input::Line(answer) => match parse_yes_no(&answer) {
                Some(approve) => return Ok(Ok(approve)),
                None => writeln!(out, "Please answer y or n.")?,
            },
            other => return Ok(Err(other)),
        }
    }
}

/// `y`/`yes` or `n`/`no`, in any case.
fn parse_yes_no(answer: &str) -> Option<bool> {
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Some(true),
        "n" | "no" => Some(false),
        _ => None,
    }
}

/// Asks the gateway to cancel `run` without waiting: the stream shows the run end, and a
/// second Ctrl-C can still quit meanwhile.
fn cancel(api: &Api, run: &str, renderer: &mut Renderer) {
    print!("{}", renderer.note("  [cancelling; Ctrl-C again quits]"));
    let _ = std::io::stdout().flush();
    let (api, run) = (api.clone(), run.to_owned());
    tokio::spawn(async move {
        if let Err(error) = api.cancel(&run).await {
            eprintln!("  [cancel failed] {error}");
        }
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<ChatArgs, clap::Error> {
        let argv = ["agentmesh", "chat"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Chat(chat) => Ok(chat),
            other => panic!("not chat: {other:?}"),
        }
    }

    #[test]
    fn arguments_default_to_the_local_gateway_and_need_a_key() {
        let chat = parse(&["--key", "sk-x"]).unwrap();
        assert_eq!((chat.url.as_str(), chat.agent, chat.session), (DEFAULT_URL, None, None));
        let chat = parse(&["--key", "k", "--agent", "adder", "--session", "s1", "--url", "http://h:1"]).unwrap();
        assert_eq!(
            (chat.agent.as_deref(), chat.session.as_deref(), chat.url.as_str()),
            (Some("adder"), Some("s1"), "http://h:1")
        );
        // AGENTMESH_API_KEY is the other way to give it; this test's environment has none.
        if std::env::var_os("AGENTMESH_API_KEY").is_none() {
            let missing = parse(&[]).unwrap_err().to_string();
            assert!(missing.contains("--key"), "{missing}");
        }
    }

    #[tokio::test]
    async fn lines_typed_during_a_run_wait_their_turn_and_signals_come_at_once() {
        let (send, receive) = mpsc::unbounded_channel();
        let mut inputs = Inputs::new(receive, false);
        for input in [Input::Line("a".into()), Input::Line("b".into()), Input::Interrupt, Input::End] {
            send.send(input).unwrap();
        }
        assert_eq!(inputs.signal().await, Input::Interrupt);
        assert_eq!(inputs.signal().await, Input::End);
        assert!(inputs.closed);
        let mut echoed = Vec::new();
        let mut next = Vec::new();
        for _ in 0..3 {
            next.push(inputs.next(&mut echoed).await.unwrap());
        }
        assert_eq!(next, [Input::Line("a".into()), Input::Line("b".into()), Input::End]);
        assert_eq!(String::from_utf8(echoed).unwrap(), "a\nb\n", "queued lines are shown as they are sent");
    }

    #[test]
    fn approval_answers_are_yes_or_no() {
        assert_eq!(
            ["y", " YES ", "n", "No", "maybe", ""].map(parse_yes_no),
            [Some(true), Some(true), Some(false), Some(false), None, None]
        );
    }

    #[test]
    fn the_greeting_names_agent_model_tools_and_session() {
        let agent =
            Agent { id: "a".into(), name: "assistant".into(), model: None, tools: vec!["t1".into(), "t2".into()] };
        let shown = greeting(&agent, "s1", DEFAULT_URL);
        assert!(
            shown.starts_with("Chatting with agent assistant (the default model; t1, t2) at http://127.0.0.1:8080\n")
        );
        assert!(shown.contains("--session s1"), "{shown}");
    }
}
