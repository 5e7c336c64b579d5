//! A run's server-sent events as `agentmesh chat` shows them: [`RunEvent::parse`] reads one
//! event (its name is the `kind` of the contract's `RunEvent`, its data the whole event in
//! JSON), [`Renderer`] turns events into terminal text: the answer's tokens as they come,
//! tool calls and their results on lines of their own.

use serde_json::Value;

/// Longest tool result shown inline, in characters; the rest is elided.
const MAX_RESULT_CHARS: usize = 240;

/// What the chat reacts to in a run's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// The run started (`run_started`).
    Started {
        /// The run's id, for cancel, approve and reject.
        run_id: String,
    },
    /// A fragment of the answer (`token`).
    Token(String),
    /// The agent asked for a tool (`tool_call`).
    ToolCall(ToolCall),
    /// A tool call finished (`tool_result`).
    ToolResult {
        /// The tool.
        name: String,
        /// What it returned.
        content: String,
        /// Whether it reported an error.
        is_error: bool,
    },
    /// The run waits for a person to approve or reject tool calls (`interrupt`).
    Interrupt {
        /// The calls waiting.
        calls: Vec<ToolCall>,
        /// Why, for people.
        reason: String,
    },
    /// A step runs again: its tokens so far are void (`step_restarted`).
    StepRestarted {
        /// Why.
        reason: String,
    },
    /// An error inside the run (`error`); the run may go on.
    Error(String),
    /// The run ended (`run_completed`): `completed`, `failed` or `cancelled`.
    Completed {
        /// The final status.
        status: String,
        /// Why it did not complete, when it did not.
        error: Option<String>,
    },
    /// The stream itself failed (`stream_error`, in the seed's error format); it ends.
    StreamFailed(String),
    /// Anything the chat does not show (`message`, `usage`, kinds added later).
    Other,
}

/// A tool call as the chat shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The tool.
    pub name: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
    /// Whether it waits for approval.
    pub requires_approval: bool,
}

impl RunEvent {
    /// The event named `name` whose data is `data` (JSON text); data that is not JSON is
    /// [`RunEvent::Other`], so one odd event never ends a chat.
    pub fn parse(name: &str, data: &str) -> RunEvent {
        let Ok(data) = serde_json::from_str::<Value>(data) else { return RunEvent::Other };
        let body = &data[name];
        match name {
            "run_started" => RunEvent::Started { run_id: text(&data["run_id"]) },
            "token" => RunEvent::Token(text(&body["text"])),
            "tool_call" => RunEvent::ToolCall(ToolCall::from_json(body)),
            "tool_result" => RunEvent::ToolResult {
                name: text(&body["name"]),
                content: text(&body["content"]),
                is_error: body["is_error"].as_bool().unwrap_or(false),
            },
            "interrupt" => RunEvent::Interrupt {
                calls: body["tool_calls"]
                    .as_array()
                    .map(|calls| calls.iter().map(ToolCall::from_json).collect())
                    .unwrap_or_default(),
                reason: text(&body["reason"]),
            },
            "step_restarted" => RunEvent::StepRestarted { reason: text(&body["reason"]) },
            "error" => RunEvent::Error(text(&body["message"])),
            "run_completed" => RunEvent::Completed {
                status: text(&body["status"]),
                error: body["error"]["message"].as_str().map(str::to_owned),
            },
            "stream_error" => RunEvent::StreamFailed(crate::chat::api::describe_error_body(&data)),
            _ => RunEvent::Other,
        }
    }
}

impl ToolCall {
    fn from_json(call: &Value) -> ToolCall {
        ToolCall {
            name: text(&call["name"]),
            arguments: text(&call["arguments_json"]),
            requires_approval: call["requires_approval"].as_bool().unwrap_or(false),
        }
    }

    /// `name {arguments}`, on one line.
    pub fn summary(&self) -> String {
        let arguments = one_line(&self.arguments);
        if arguments.is_empty() { self.name.clone() } else { format!("{} {arguments}", self.name) }
    }
}

/// Turns a run's events into text for the terminal, remembering whether the answer's
/// text is being written, so tool lines start on a line of their own.
#[derive(Debug, Default)]
pub struct Renderer {
    /// Tokens have been written since the last line of our own.
    in_answer: bool,
    /// The last character written ends a line (or nothing was written yet).
    at_line_start: bool,
}

impl Renderer {
    /// A renderer for one run, starting on a fresh line.
    pub fn new() -> Self {
        Renderer { in_answer: false, at_line_start: true }
    }

    /// The text showing `event` (possibly empty).
    pub fn render(&mut self, event: &RunEvent) -> String {
        let mut out = String::new();
        match event {
            RunEvent::Token(text) if !text.is_empty() => {
                if !self.in_answer {
                    self.new_line(&mut out);
                    out.push_str("agent> ");
                    self.in_answer = true;
                }
                out.push_str(text);
            }
            RunEvent::ToolCall(call) => {
                let approval = if call.requires_approval { " (needs approval)" } else { "" };
                self.line(&mut out, &format!("  [tool call] {}{approval}", call.summary()));
            }
            RunEvent::ToolResult { name, content, is_error } => {
                let label = if *is_error { "tool error" } else { "tool result" };
                self.line(&mut out, &format!("  [{label}] {name}: {}", elide(&one_line(content), MAX_RESULT_CHARS)));
            }
            RunEvent::Interrupt { reason, .. } => {
                self.line(&mut out, format!("  [approval needed] {}", one_line(reason)).trim_end());
            }
            RunEvent::StepRestarted { reason } => {
                self.line(&mut out, &format!("  [the answer restarts: {}]", one_line(reason)));
            }
            RunEvent::Error(message) => self.line(&mut out, &format!("  [error] {}", one_line(message))),
            RunEvent::Completed { status, error } => match (status.as_str(), error) {
                ("completed", _) => self.new_line(&mut out),
                (status, Some(error)) => self.line(&mut out, &format!("  [run {status}: {}]", one_line(error))),
                (status, None) => self.line(&mut out, &format!("  [run {status}]")),
            },
            RunEvent::StreamFailed(message) => self.line(&mut out, &format!("  [stream failed] {message}")),
            RunEvent::Token(_) | RunEvent::Started { .. } | RunEvent::Other => {}
        }
        if let Some(last) = out.chars().last() {
            self.at_line_start = last == '\n';
        }
        out
    }

    /// A note of the chat's own (e.g. a cancel) on a line of its own.
    pub fn note(&mut self, note: &str) -> String {
        let mut out = String::new();
        self.line(&mut out, note);
        self.at_line_start = true;
        out
    }

    fn line(&mut self, out: &mut String, line: &str) {
        self.new_line(out);
        out.push_str(line);
        out.push('\n');
        self.in_answer = false;
    }

    fn new_line(&self, out: &mut String) {
        if !self.at_line_start && !out.ends_with('\n') {
            out.push('\n');
        }
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// `text` with its line breaks and runs of blanks as single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn elide(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, body: Value) -> RunEvent {
        let data = serde_json::json!({"run_id": "r1", "sequence": 1, name: body});
        RunEvent::parse(name, &data.to_string())
    }

    #[test]
    fn events_parse_from_the_contracts_json() {
        assert_eq!(event("run_started", serde_json::json!({})), RunEvent::Started { run_id: "r1".into() });
        assert_eq!(event("token", serde_json::json!({"text": "Hi ", "step": 1})), RunEvent::Token("Hi ".into()));
        let call = serde_json::json!({"id": "c", "name": "get-sum", "arguments_json": "{\"a\": 2}", "requires_approval": true});
        let expected = ToolCall { name: "get-sum".into(), arguments: "{\"a\": 2}".into(), requires_approval: true };
        assert_eq!(event("tool_call", call.clone()), RunEvent::ToolCall(expected.clone()));
        assert_eq!(
            event("interrupt", serde_json::json!({"tool_calls": [call], "reason": "policy"})),
            RunEvent::Interrupt { calls: vec![expected], reason: "policy".into() }
        );
        assert_eq!(
            event(
                "run_completed",
                serde_json::json!({"status": "failed", "error": {"code": "timeout_error", "message": "too slow"}})
            ),
            RunEvent::Completed { status: "failed".into(), error: Some("too slow".into()) }
        );
        assert_eq!(event("usage", serde_json::json!({"total_tokens": 3})), RunEvent::Other);
        assert_eq!(RunEvent::parse("token", "not json"), RunEvent::Other);
        let failed = serde_json::json!({"error": true, "code": "not_found", "message": "run r1 not found"});
        assert_eq!(
            RunEvent::parse("stream_error", &failed.to_string()),
            RunEvent::StreamFailed("run r1 not found (not_found)".into())
        );
    }

    #[test]
    fn tokens_stream_inline_and_tool_lines_stand_on_their_own() {
        let mut renderer = Renderer::new();
        let call =
            ToolCall { name: "get-sum".into(), arguments: "{\"a\": 2,\n \"b\": 3}".into(), requires_approval: false };
        let events = [
            RunEvent::Started { run_id: "r".into() },
            RunEvent::ToolCall(call),
            RunEvent::ToolResult { name: "get-sum".into(), content: "The sum\nis 5.".into(), is_error: false },
            RunEvent::Token("Tool ".into()),
            RunEvent::Token("returned 5.".into()),
            RunEvent::Completed { status: "completed".into(), error: None },
        ];
        let shown: String = events.iter().map(|e| renderer.render(e)).collect();
        assert_eq!(
            shown,
            "  [tool call] get-sum {\"a\": 2, \"b\": 3}\n  [tool result] get-sum: The sum is 5.\nagent> Tool returned 5.\n"
        );
    }

    #[test]
    fn interruptions_and_endings_start_a_new_line_after_the_answer() {
        let mut renderer = Renderer::new();
        let mut shown = renderer.render(&RunEvent::Token("Counting".into()));
        shown += &renderer.note("[cancelling the run]");
        shown += &renderer.render(&RunEvent::Completed { status: "cancelled".into(), error: Some("by you".into()) });
        shown += &renderer.render(&RunEvent::ToolResult { name: "t".into(), content: "x".repeat(300), is_error: true });
        assert!(
            shown.starts_with("agent> Counting\n[cancelling the run]\n  [run cancelled: by you]\n  [tool error] t: "),
            "{shown}"
        );
        assert!(shown.ends_with("x…\n"), "{shown}");
        let approval = renderer.render(&RunEvent::Interrupt { calls: Vec::new(), reason: "needs a human".into() });
        assert_eq!(approval, "  [approval needed] needs a human\n");
    }
}
