//! The suite's harness: the canonical requests, the answers every provider's fixtures
//! encode, the fake server, and the checks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_llm_proxy::catalog::Catalog;
use agentmesh_llm_proxy::keys::Keys;
use agentmesh_llm_proxy::limits::Limits;
use agentmesh_llm_proxy::provider::{Completion, Delta, Provider, ProviderError, ProviderRequest};
use agentmesh_llm_proxy::proxy::{Proxy, ProxyOptions};
use agentmesh_llm_proxy::usage::UsageRecorder;
use agentmesh_proto::agentmesh::common::v1::{ContentPart, ImagePart, MessageRole, content_part, image_part};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, JsonSchemaFormat, ResponseFormat, ToolCall, ToolChoice, ToolDefinition,
    response_format, tool_choice,
};
use agentmesh_resilience::Preset;
use agentmesh_runtime::ErrorCode;
use agentmesh_runtime::config::Secret;
use futures::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// One provider under test.
pub struct Subject {
    /// The provider's name and its fixture folder under `tests/fixtures/`.
    pub name: &'static str,
    /// The model (inside the provider) every case asks for.
    pub model: &'static str,
    /// The provider, pointed at the fake server's base URL.
    pub provider: fn(base_url: &str) -> Arc<dyn Provider>,
    /// Path of a unary call for [`Self::model`].
    pub unary_path: &'static str,
    /// Path of a streamed call for [`Self::model`].
    pub stream_path: &'static str,
    /// Checks what else the provider must send (auth header with [`KEY`], version
    /// headers, query parameters such as Gemini's `alt=sse`); `streamed` says which call.
    pub check_request: fn(request: &Request, streamed: bool),
    /// Whether the provider streams a tool call's arguments in pieces (Gemini sends each
    /// call whole, in one chunk); when it does, the streamed tool call must show it.
    pub splits_tool_arguments: bool,
}

/// The API key every case uses; fixtures of 401 answers echo part of it back, as OpenAI does.
pub const KEY: &str = "sk-test-conformance-0123456789abcdef";

/// The cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// A short text answer, unary.
    PlainReply,
    /// The same answer, streamed in several text deltas.
    StreamedReply,
    /// One tool call, unary.
    ToolCall,
    /// One tool call streamed, its arguments split across chunks where the provider does.
    StreamedToolCall,
    /// Two tool calls in one streamed answer.
    ParallelToolCalls,
    /// A tool's result sent back, answered with text.
    ToolResult,
    /// An answer constrained by a JSON schema.
    JsonSchema,
    /// A question about an image sent as bytes.
    ImageInput,
    /// 401 with the provider's error body.
    Unauthorized,
    /// 429 with `Retry-After: 7`.
    RateLimited,
    /// 500 with the provider's error body.
    ServerError,
    /// A stream whose second event is not valid JSON.
    MalformedStream,
    /// A stream that ends after some text, before the provider's end event.
    DisconnectMidStream,
    /// The streamed reply, with its headers and first token 300 ms late: it arrives whole,
    /// and through the proxy a 100 ms first-token timeout fires.
    SlowFirstToken,
}

/// The plain reply's text, in every provider's fixtures.
pub const HELLO: &str = "Hello! How can I help you today?";
/// The tool-result reply's text.
pub const TOOL_RESULT_REPLY: &str = "It is 21°C and sunny in Paris.";
/// The JSON-schema reply.
pub const WEATHER_JSON: &str = r#"{"city":"Paris","temperature_c":21}"#;
/// The image reply.
pub const IMAGE_REPLY: &str = "A red square.";
/// A 1×1 red PNG.
pub const RED_PIXEL_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49,
    0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0,
    0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

impl Case {
    /// File stem of the case's fixtures.
    fn stem(self) -> &'static str {
        match self {
            Case::PlainReply => "plain_reply",
            Case::StreamedReply | Case::SlowFirstToken => "streamed_reply",
            Case::ToolCall => "tool_call",
            Case::StreamedToolCall => "streamed_tool_call",
            Case::ParallelToolCalls => "parallel_tool_calls",
            Case::ToolResult => "tool_result",
            Case::JsonSchema => "json_schema",
            Case::ImageInput => "image_input",
            Case::Unauthorized => "unauthorized",
            Case::RateLimited => "rate_limited",
            Case::ServerError => "server_error",
            Case::MalformedStream => "malformed_stream",
            Case::DisconnectMidStream => "disconnect_mid_stream",
        }
    }

    fn streamed(self) -> bool {
        matches!(
            self,
            Case::StreamedReply
                | Case::StreamedToolCall
                | Case::ParallelToolCalls
                | Case::MalformedStream
                | Case::DisconnectMidStream
                | Case::SlowFirstToken
        )
    }

    /// The HTTP status of the fake answer.
    fn status(self) -> u16 {
        match self {
            Case::Unauthorized => 401,
            Case::RateLimited => 429,
            Case::ServerError => 500,
            _ => 200,
        }
    }
}

fn user(text: &str) -> ChatMessage {
    ChatMessage { role: MessageRole::User as i32, content: text.to_owned(), ..Default::default() }
}

fn weather_tool() -> ToolDefinition {
    let parameters = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"]
    });
    ToolDefinition {
        name: "get_weather".to_owned(),
        description: "Current weather in a city".to_owned(),
        parameters: Some(agentmesh_proto::json::object_to_struct(
            parameters.as_object().unwrap_or(&Default::default()),
        )),
    }
}

/// The request a case sends.
pub fn request(case: Case) -> ChatRequest {
    let base = ChatRequest { max_tokens: Some(256), ..Default::default() };
    match case {
        Case::PlainReply
        | Case::StreamedReply
        | Case::SlowFirstToken
        | Case::Unauthorized
        | Case::RateLimited
        | Case::ServerError
        | Case::MalformedStream
        | Case::DisconnectMidStream => ChatRequest {
            messages: vec![
                ChatMessage {
                    role: MessageRole::System as i32,
                    content: "You are terse.".to_owned(),
                    ..Default::default()
                },
                user("Say hello."),
            ],
            temperature: Some(0.2),
            ..base
        },
        Case::ToolCall | Case::StreamedToolCall => ChatRequest {
            messages: vec![user("What is the weather in Paris?")],
            tools: vec![weather_tool()],
            tool_choice: Some(ToolChoice { choice: Some(tool_choice::Choice::Mode(tool_choice::Mode::Auto as i32)) }),
            ..base
        },
        Case::ParallelToolCalls => ChatRequest {
            messages: vec![user("What is the weather in Paris and in Tokyo?")],
            tools: vec![weather_tool()],
            parallel_tool_calls: Some(true),
            ..base
        },
        Case::ToolResult => ChatRequest {
            messages: vec![
                user("What is the weather in Paris?"),
                ChatMessage {
                    role: MessageRole::Assistant as i32,
                    tool_calls: vec![ToolCall {
                        id: "call_1".to_owned(),
                        name: "get_weather".to_owned(),
                        arguments_json: r#"{"city":"Paris"}"#.to_owned(),
                    }],
                    ..Default::default()
                },
                ChatMessage {
                    role: MessageRole::Tool as i32,
                    content: "21°C and sunny".to_owned(),
                    tool_call_id: Some("call_1".to_owned()),
                    name: Some("get_weather".to_owned()),
                    ..Default::default()
                },
            ],
            tools: vec![weather_tool()],
            ..base
        },
        Case::JsonSchema => {
            let schema = json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "temperature_c": {"type": "number"}},
                "required": ["city", "temperature_c"],
                "additionalProperties": false
            });
            ChatRequest {
                messages: vec![user("The weather in Paris, as JSON.")],
                response_format: Some(ResponseFormat {
                    r#type: response_format::Type::JsonSchema as i32,
                    json_schema: Some(JsonSchemaFormat {
                        name: "weather".to_owned(),
                        description: String::new(),
                        schema: Some(agentmesh_proto::json::object_to_struct(
                            schema.as_object().unwrap_or(&Default::default()),
                        )),
                        strict: true,
                    }),
                }),
                ..base
            }
        }
        Case::ImageInput => ChatRequest {
            messages: vec![ChatMessage {
                role: MessageRole::User as i32,
                parts: vec![
                    ContentPart { part: Some(content_part::Part::Text("What is in this image?".to_owned())) },
                    ContentPart {
                        part: Some(content_part::Part::Image(ImagePart {
                            source: Some(image_part::Source::Data(RED_PIXEL_PNG.to_vec())),
                            mime_type: "image/png".to_owned(),
                            detail: String::new(),
                        })),
                    },
                ],
                ..Default::default()
            }],
            ..base
        },
    }
}

fn fixture_dir(subject: &Subject) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(subject.name)
}

/// The fake answer: `<stem>.response.sse` for streams, `<stem>.response.json` otherwise.
fn response(subject: &Subject, case: Case) -> ResponseTemplate {
    let dir = fixture_dir(subject);
    let mut template = ResponseTemplate::new(case.status());
    if case.streamed() {
        let file = dir.join(format!("{}.response.sse", case.stem()));
        let body = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        template = template.insert_header("content-type", "text/event-stream").set_body_bytes(body);
    } else {
        let file = dir.join(format!("{}.response.json", case.stem()));
        let body = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        template = template.insert_header("content-type", "application/json").set_body_bytes(body);
    }
    if case == Case::RateLimited {
        template = template.insert_header("retry-after", "7");
    }
    if case == Case::SlowFirstToken {
        template = template.set_delay(Duration::from_millis(300));
    }
    template
}

/// Whether `expected` is contained in `actual`: objects by key (extra keys allowed),
/// arrays element by element with equal length, everything else equal.
pub fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            expected.iter().all(|(key, value)| actual.get(key).is_some_and(|a| contains(a, value)))
        }
        (Value::Array(actual), Value::Array(expected)) => {
            actual.len() == expected.len() && actual.iter().zip(expected).all(|(a, e)| contains(a, e))
        }
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        _ => actual == expected,
    }
}

/// Runs one case against `subject`.
pub async fn run(subject: &Subject, case: Case) {
    let server = MockServer::start().await;
    let path_of = if case.streamed() { subject.stream_path } else { subject.unary_path };
    Mock::given(method("POST")).and(path(path_of)).respond_with(response(subject, case)).mount(&server).await;
    let provider = (subject.provider)(&server.uri());
    let request = request(case);
    let key = Secret::new(KEY);
    let call = ProviderRequest { model: subject.model, request: &request, max_tokens: 256, key: Some(&key) };

    let outcome = if case.streamed() {
        collect(provider.stream(call).await).await
    } else {
        provider.chat(call).await.map(Outcome::from)
    };

    let received = server.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 1, "{case:?}: exactly one request reaches the provider");
    check_request(subject, case, &received[0]);
    check_outcome(subject, case, outcome);
    if case == Case::SlowFirstToken {
        first_token_times_out(provider, subject.model, request).await;
    }
}

/// Through the proxy, the same slow answer exceeds a 100 ms first-token timeout: the
/// caller gets `timeout_error` instead of waiting.
async fn first_token_times_out(provider: Arc<dyn Provider>, model: &str, request: ChatRequest) {
    let name = provider.name().to_owned();
    let full_name = format!("{name}/{model}");
    let mut preset = Preset::llm();
    preset.retry.max_attempts = 1;
    let options = ProxyOptions {
        default_max_tokens: 256,
        first_token_timeout: Duration::from_millis(100),
        stream_timeout: Duration::from_secs(5),
        preset,
    };
    let proxy = Arc::new(Proxy::new(
        Catalog::of(vec![(provider, vec![model.to_owned()])], &full_name, Vec::new()),
        Keys::fixed([(name, Secret::new(KEY))].into_iter().collect()),
        Limits::new(None, 0, 0),
        UsageRecorder::new(None, Default::default()),
        options,
    ));
    let error = proxy.stream(ChatRequest { model: full_name.clone(), ..request }).await.err();
    assert_eq!(error.map(|e| e.code), Some(ErrorCode::Timeout), "{full_name}: the first-token timeout fires");
}

/// Checks the request against `<stem>.request.json` and the subject's own rules.
fn check_request(subject: &Subject, case: Case, request: &Request) {
    let streamed = case.streamed();
    (subject.check_request)(request, streamed);
    let body: Value =
        serde_json::from_slice(&request.body).unwrap_or_else(|e| panic!("{case:?}: body is not JSON: {e}"));
    let file = fixture_dir(subject).join(format!("{}.request.json", request_stem(case)));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let expected: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(
        contains(&body, &expected),
        "{case:?}: the body sent does not contain {}\nsent: {}",
        file.display(),
        serde_json::to_string_pretty(&body).unwrap_or_default()
    );
    let text = String::from_utf8_lossy(&request.body);
    assert!(!text.contains(KEY), "{case:?}: the key must not be in the body");
}

/// Cases sharing a request share its fixture; streamed and unary bodies differ only in
/// the stream flag, which the streamed fixture adds.
fn request_stem(case: Case) -> &'static str {
    match case {
        Case::Unauthorized | Case::RateLimited | Case::ServerError => "plain_reply",
        Case::MalformedStream | Case::DisconnectMidStream | Case::SlowFirstToken => "streamed_reply",
        other => other.stem(),
    }
}

/// What a call returned, streamed or not, in one shape.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The completion id.
    pub id: String,
    /// The whole text.
    pub text: String,
    /// Text deltas received (1 for unary calls).
    pub text_deltas: usize,
    /// Whole tool calls (assembled from fragments when streamed).
    pub tool_calls: Vec<ToolCall>,
    /// Argument fragments received per call index (0 for unary calls).
    pub argument_fragments: Vec<usize>,
    /// Finish reason.
    pub finish: Option<FinishReason>,
    /// The provider's raw finish reason.
    pub raw_finish: String,
    /// (prompt, completion, total) tokens.
    pub usage: Option<(i64, i64, i64)>,
    /// The error that ended a stream, after what came before it.
    pub error: Option<ProviderError>,
}

impl From<Completion> for Outcome {
    fn from(completion: Completion) -> Self {
        Outcome {
            id: completion.id,
            text: completion.message.content.clone(),
            text_deltas: 1,
            tool_calls: completion.message.tool_calls.clone(),
            argument_fragments: Vec::new(),
            finish: Some(completion.finish.reason),
            raw_finish: completion.finish.raw,
            usage: completion.usage.map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)),
            error: None,
        }
    }
}

async fn collect(
    stream: Result<agentmesh_llm_proxy::provider::DeltaStream, ProviderError>,
) -> Result<Outcome, ProviderError> {
    let mut stream = stream?;
    let mut outcome = Outcome::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(Delta::Id(id)) => outcome.id = id,
            Ok(Delta::Text(text)) => {
                outcome.text.push_str(&text);
                outcome.text_deltas += 1;
            }
            Ok(Delta::ToolCall(delta)) => {
                let index = delta.index as usize;
                if outcome.tool_calls.len() <= index {
                    outcome.tool_calls.resize(index + 1, ToolCall::default());
                    outcome.argument_fragments.resize(index + 1, 0);
                }
                let call = &mut outcome.tool_calls[index];
                if let Some(id) = delta.id {
                    call.id = id;
                }
                if let Some(name) = delta.name {
                    call.name = name;
                }
                if !delta.arguments_fragment.is_empty() {
                    call.arguments_json.push_str(&delta.arguments_fragment);
                    outcome.argument_fragments[index] += 1;
                }
            }
            Ok(Delta::Usage(usage)) => {
                outcome.usage = Some((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))
            }
            Ok(Delta::Finish(finish)) => {
                outcome.finish = Some(finish.reason);
                outcome.raw_finish = finish.raw;
                assert!(stream.next().await.is_none(), "nothing follows the finish");
                break;
            }
            Err(error) => {
                outcome.error = Some(error);
                break;
            }
        }
    }
    if outcome.finish.is_none() && outcome.error.is_none() {
        outcome.error = Some(ProviderError::Truncated);
    }
    Ok(outcome)
}

fn arguments(call: &ToolCall) -> Value {
    serde_json::from_str(&call.arguments_json).unwrap_or_else(|e| panic!("arguments of {call:?} are not JSON: {e}"))
}

fn check_usage(case: Case, outcome: &Outcome) {
    let (prompt, completion, total) = outcome.usage.unwrap_or_else(|| panic!("{case:?}: usage is reported"));
    assert!(prompt > 0 && completion > 0, "{case:?}: usage counts both sides: {:?}", outcome.usage);
    assert_eq!(total, prompt + completion, "{case:?}: total is the sum");
}

fn check_outcome(subject: &Subject, case: Case, outcome: Result<Outcome, ProviderError>) {
    let name = subject.name;
    match case {
        Case::PlainReply | Case::StreamedReply | Case::SlowFirstToken => {
            let outcome = outcome.unwrap_or_else(|e| panic!("{name} {case:?}: {e}"));
            assert_eq!(outcome.text, HELLO, "{name} {case:?}");
            assert!(!outcome.id.is_empty(), "{name} {case:?}: an id");
            assert_eq!(outcome.finish, Some(FinishReason::Stop), "{name} {case:?}");
            assert!(!outcome.raw_finish.is_empty(), "{name} {case:?}: the raw finish reason");
            if case != Case::PlainReply {
                assert!(outcome.text_deltas >= 2, "{name} {case:?}: the text arrives in pieces");
            }
            check_usage(case, &outcome);
        }
        Case::ToolCall | Case::StreamedToolCall => {
            let outcome = outcome.unwrap_or_else(|e| panic!("{name} {case:?}: {e}"));
            assert_eq!(outcome.finish, Some(FinishReason::ToolCalls), "{name} {case:?}");
            assert_eq!(outcome.tool_calls.len(), 1, "{name} {case:?}: {:?}", outcome.tool_calls);
            let call = &outcome.tool_calls[0];
            assert!(!call.id.is_empty(), "{name} {case:?}: every call has an id");
            assert_eq!(call.name, "get_weather");
            assert_eq!(arguments(call), json!({"city": "Paris"}), "{name} {case:?}");
            if case == Case::StreamedToolCall && subject.splits_tool_arguments {
                assert!(outcome.argument_fragments[0] >= 2, "{name}: arguments arrive split across chunks");
            }
            check_usage(case, &outcome);
        }
        Case::ParallelToolCalls => {
            let outcome = outcome.unwrap_or_else(|e| panic!("{name} {case:?}: {e}"));
            assert_eq!(outcome.finish, Some(FinishReason::ToolCalls), "{name} {case:?}");
            let cities: Vec<Value> = outcome.tool_calls.iter().map(|c| arguments(c)["city"].clone()).collect();
            assert_eq!(cities, [json!("Paris"), json!("Tokyo")], "{name} {case:?}");
            assert!(outcome.tool_calls.iter().all(|c| c.name == "get_weather" && !c.id.is_empty()));
            assert_ne!(outcome.tool_calls[0].id, outcome.tool_calls[1].id, "{name}: ids are unique within the answer");
            check_usage(case, &outcome);
        }
        Case::ToolResult | Case::JsonSchema | Case::ImageInput => {
            let outcome = outcome.unwrap_or_else(|e| panic!("{name} {case:?}: {e}"));
            let expected = match case {
                Case::ToolResult => TOOL_RESULT_REPLY,
                Case::JsonSchema => WEATHER_JSON,
                _ => IMAGE_REPLY,
            };
            if case == Case::JsonSchema {
                let parsed: Value =
                    serde_json::from_str(&outcome.text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
                assert_eq!(parsed, serde_json::from_str::<Value>(expected).unwrap_or_default(), "{name} {case:?}");
            } else {
                assert_eq!(outcome.text, expected, "{name} {case:?}");
            }
            assert_eq!(outcome.finish, Some(FinishReason::Stop), "{name} {case:?}");
            check_usage(case, &outcome);
        }
        Case::Unauthorized | Case::RateLimited | Case::ServerError => {
            let error = outcome.err().unwrap_or_else(|| panic!("{name} {case:?}: an error"));
            let ProviderError::Status { status, retry_after, message } = &error else {
                panic!("{name} {case:?}: a status error, got {error:?}");
            };
            assert_eq!(*status, case.status(), "{name} {case:?}");
            assert!(!message.is_empty(), "{name} {case:?}: the provider's message");
            assert!(!message.contains(&KEY[8..]), "{name} {case:?}: no part of the key in {message:?}");
            let expected_retry = (case == Case::RateLimited).then(|| Duration::from_secs(7));
            assert_eq!(*retry_after, expected_retry, "{name} {case:?}");
        }
        Case::MalformedStream => {
            let outcome = outcome.unwrap_or_else(|e| panic!("{name} {case:?}: the stream starts: {e}"));
            assert!(
                matches!(outcome.error, Some(ProviderError::Malformed(_))),
                "{name} {case:?}: a malformed event ends the stream with Malformed, got {:?}",
                outcome.error
            );
        }
        Case::DisconnectMidStream => {
            let outcome = outcome.unwrap_or_else(|e| panic!("{name} {case:?}: the stream starts: {e}"));
            assert!(!outcome.text.is_empty(), "{name} {case:?}: text came before the break");
            assert!(
                matches!(outcome.error, Some(ProviderError::Truncated | ProviderError::Transport(_))),
                "{name} {case:?}: a cut stream ends with an error, got {:?}",
                outcome.error
            );
        }
    }
}
