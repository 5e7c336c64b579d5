//! The scripted provider (`scripted/…`): deterministic answers with no network and no key,
//! so tests, benchmarks and a first `agentmesh up` get a working agent loop — text, tool
//! calls and token streams — before any real provider is configured.
//!
//! What it answers, looking at the last message:
//! - a user message with lines `/tool NAME {json}`: one tool call per line, in order, with
//!   ids `call_<turn>_<index>` (unique within a conversation, the same on every run);
//! - a tool result: `Tool NAME returned: CONTENT` (or `Tool NAME failed: CONTENT`);
//! - any other user text: `You said: TEXT` — as `{"reply":"You said: TEXT"}` when a JSON
//!   answer is asked for.
//!
//! Tokens are words: the answer streams one word per delta, each after the configured
//! delay, and usage counts words (prompt: every message's words plus one per message).
//! An answer longer than `max_tokens` words is cut and finishes with `length`.

use std::time::Duration;

use agentmesh_proto::agentmesh::common::v1::{MessageRole, Usage, content_part};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, ToolCall, ToolCallDelta, response_format,
};
use futures::StreamExt;

use super::{Completion, Delta, DeltaStream, Finish, Provider, ProviderError, ProviderRequest};

/// The scripted provider.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// Pause before each streamed delta.
    delay: Duration,
}

/// The models it lists (it answers to any model name the same way).
pub const MODELS: &[&str] = &["echo"];

impl Scripted {
    /// A scripted provider pausing `delay` before each streamed delta.
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }
}

/// A scripted answer before it is sent.
struct Script {
    id: String,
    words: Vec<String>,
    tool_calls: Vec<ToolCall>,
    finish: Finish,
    usage: Usage,
}

#[async_trait::async_trait]
impl Provider for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn key_secret(&self) -> Option<&str> {
        None
    }

    async fn chat(&self, request: ProviderRequest<'_>) -> Result<Completion, ProviderError> {
        let script = script(request.request, request.max_tokens);
        Ok(Completion {
            id: script.id,
            message: ChatMessage {
                role: MessageRole::Assistant as i32,
                content: script.words.concat(),
                tool_calls: script.tool_calls,
                ..Default::default()
            },
            finish: script.finish,
            usage: Some(script.usage),
        })
    }

    async fn stream(&self, request: ProviderRequest<'_>) -> Result<DeltaStream, ProviderError> {
        let script = script(request.request, request.max_tokens);
        let mut deltas = vec![Delta::Id(script.id)];
        deltas.extend(script.words.into_iter().map(Delta::Text));
        for (index, call) in script.tool_calls.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let (first, second) = split_in_two(&call.arguments_json);
            deltas.push(Delta::ToolCall(ToolCallDelta {
                index,
                id: Some(call.id),
                name: Some(call.name),
                arguments_fragment: first.to_owned(),
            }));
            deltas.push(Delta::ToolCall(ToolCallDelta {
                index,
                id: None,
                name: None,
                arguments_fragment: second.to_owned(),
            }));
        }
        deltas.push(Delta::Usage(script.usage));
        deltas.push(Delta::Finish(script.finish));
        let delay = self.delay;
        Ok(futures::stream::iter(deltas)
            .then(move |delta| async move {
                if !delay.is_zero() && matches!(delta, Delta::Text(_) | Delta::ToolCall(_)) {
                    tokio::time::sleep(delay).await;
                }
                Ok(delta)
            })
            .boxed())
    }
}

/// The answer to `request`, cut to `max_tokens` words.
fn script(request: &ChatRequest, max_tokens: u32) -> Script {
    let turn = request.messages.len();
    let prompt_tokens: usize = request.messages.iter().map(|m| words(&text_of(m)).len() + 1).sum();
    let last = request.messages.last();
    let tool_calls: Vec<ToolCall> = match last {
        Some(message) if message.role == MessageRole::User as i32 || message.role == 0 => text_of(message)
            .lines()
            .filter_map(|line| line.trim().strip_prefix("/tool "))
            .filter_map(|rest| {
                let (name, arguments) = rest.trim().split_once(char::is_whitespace).unwrap_or((rest.trim(), "{}"));
                (!name.is_empty()).then(|| (name.to_owned(), arguments.trim().to_owned()))
            })
            .enumerate()
            .map(|(index, (name, arguments_json))| ToolCall {
                id: format!("call_{turn}_{index}"),
                name,
                arguments_json,
            })
            .collect(),
        _ => Vec::new(),
    };
    let text = match last {
        _ if !tool_calls.is_empty() => String::new(),
        Some(message) if message.role == MessageRole::Tool as i32 => {
            let name = message.name.as_deref().unwrap_or("tool");
            let verb = if message.is_error { "failed" } else { "returned" };
            format!("Tool {name} {verb}: {}", text_of(message))
        }
        Some(message) => format!("You said: {}", text_of(message)),
        None => "Hello from the scripted provider.".to_owned(),
    };
    let wants_json = request.response_format.as_ref().is_some_and(|format| {
        matches!(
            response_format::Type::try_from(format.r#type),
            Ok(response_format::Type::JsonObject | response_format::Type::JsonSchema)
        )
    });
    let text = if wants_json && !text.is_empty() { serde_json::json!({ "reply": text }).to_string() } else { text };
    let mut words = words(&text);
    let limit = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    let finish = if words.len() > limit {
        words.truncate(limit);
        Finish::new(FinishReason::Length, "length")
    } else if tool_calls.is_empty() {
        Finish::new(FinishReason::Stop, "stop")
    } else {
        Finish::new(FinishReason::ToolCalls, "tool_calls")
    };
    let completion_tokens = words.len() + tool_calls.len();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    Script {
        id: format!("scripted-{}", uuid::Uuid::new_v4().simple()),
        words,
        tool_calls,
        finish,
        usage: Usage {
            prompt_tokens: count(prompt_tokens),
            completion_tokens: count(completion_tokens),
            total_tokens: count(prompt_tokens + completion_tokens),
            ..Default::default()
        },
    }
}

/// A message's text: its content, then its text parts.
fn text_of(message: &ChatMessage) -> String {
    let mut text = message.content.clone();
    for part in &message.parts {
        if let Some(content_part::Part::Text(more)) = &part.part {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(more);
        }
    }
    text
}

/// `text` as words, each but the last keeping the space after it, so that they concatenate
/// back to `text` (up to runs of whitespace).
fn words(text: &str) -> Vec<String> {
    let pieces: Vec<&str> = text.split_whitespace().collect();
    let last = pieces.len().saturating_sub(1);
    pieces.iter().enumerate().map(|(i, word)| if i < last { format!("{word} ") } else { (*word).to_owned() }).collect()
}

/// `text` in two pieces at a character boundary near its middle.
fn split_in_two(text: &str) -> (&str, &str) {
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle -= 1;
    }
    text.split_at(middle)
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::agentmesh::llm::v1::{JsonSchemaFormat, ResponseFormat};

    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage { role: MessageRole::User as i32, content: text.to_owned(), ..Default::default() }
    }

    fn call(request: &ChatRequest, max_tokens: u32) -> ProviderRequest<'_> {
        ProviderRequest { model: "echo", request, max_tokens, key: None }
    }

    #[tokio::test]
    async fn it_echoes_the_user_and_counts_words_as_tokens() {
        let request = ChatRequest { messages: vec![user("hello there")], ..Default::default() };
        let completion = Scripted::new(Duration::ZERO).chat(call(&request, 100)).await.unwrap();
        assert_eq!(completion.message.content, "You said: hello there");
        assert_eq!(completion.finish.reason, FinishReason::Stop);
        let usage = completion.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (3, 4, 7));
    }

    #[tokio::test]
    async fn tool_lines_become_tool_calls_and_results_are_reported_back() {
        let mut request = ChatRequest {
            messages: vec![user("/tool get_weather {\"city\":\"Paris\"}\n/tool get_time {}")],
            ..Default::default()
        };
        let completion = Scripted::new(Duration::ZERO).chat(call(&request, 100)).await.unwrap();
        assert_eq!(completion.finish.reason, FinishReason::ToolCalls);
        let calls = &completion.message.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("call_1_0", "get_weather"));
        assert_eq!(calls[0].arguments_json, r#"{"city":"Paris"}"#);
        assert_eq!((calls[1].id.as_str(), calls[1].arguments_json.as_str()), ("call_1_1", "{}"));

        request.messages.push(completion.message);
        request.messages.push(ChatMessage {
            role: MessageRole::Tool as i32,
            content: "21C".to_owned(),
            name: Some("get_weather".to_owned()),
            tool_call_id: Some("call_1_0".to_owned()),
            is_error: true,
            ..Default::default()
        });
        let completion = Scripted::new(Duration::ZERO).chat(call(&request, 100)).await.unwrap();
        assert_eq!(completion.message.content, "Tool get_weather failed: 21C");
    }

    #[tokio::test]
    async fn streams_word_by_word_with_tool_arguments_in_two_fragments() {
        let request = ChatRequest { messages: vec![user("/tool lookup {\"q\":\"rust\"}")], ..Default::default() };
        let deltas: Vec<_> =
            Scripted::new(Duration::from_millis(1)).stream(call(&request, 100)).await.unwrap().collect().await;
        let fragments: Vec<String> = deltas
            .iter()
            .filter_map(|d| match d {
                Ok(Delta::ToolCall(delta)) => Some(delta.arguments_fragment.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(fragments.len(), 2);
        assert_eq!(fragments.concat(), r#"{"q":"rust"}"#);
        assert!(matches!(deltas.last(), Some(Ok(Delta::Finish(f))) if f.reason == FinishReason::ToolCalls));

        let request = ChatRequest { messages: vec![user("one two three")], ..Default::default() };
        let deltas: Vec<_> = Scripted::new(Duration::ZERO).stream(call(&request, 3)).await.unwrap().collect().await;
        let text: Vec<String> = deltas
            .iter()
            .filter_map(|d| match d {
                Ok(Delta::Text(text)) => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(text, ["You ", "said: ", "one "], "cut at max_tokens words");
        assert!(matches!(deltas.last(), Some(Ok(Delta::Finish(f))) if f.reason == FinishReason::Length));
    }

    #[tokio::test]
    async fn json_answers_when_asked_for() {
        let request = ChatRequest {
            messages: vec![user("hi")],
            response_format: Some(ResponseFormat {
                r#type: response_format::Type::JsonSchema as i32,
                json_schema: Some(JsonSchemaFormat { name: "reply".to_owned(), ..Default::default() }),
            }),
            ..Default::default()
        };
        let completion = Scripted::new(Duration::ZERO).chat(call(&request, 100)).await.unwrap();
        let json: serde_json::Value = serde_json::from_str(&completion.message.content).unwrap();
        assert_eq!(json["reply"], "You said: hi");
    }
}
