//! Anthropic's Messages API (`POST /v1/messages`), so agents can use Claude models through
//! the same contract as every other provider.
//!
//! The contract is OpenAI-shaped; Anthropic differs in ways this module absorbs:
//! - System messages become the top-level `system` text (several are joined with blank lines).
//! - Tool results are `tool_result` blocks inside a user message, and Anthropic wants user and
//!   assistant turns to alternate, so consecutive messages of one role (several tool results,
//!   or tool results followed by user text) are merged into one message. Images a tool
//!   returned (an MCP screenshot, say) travel inside the `tool_result` block.
//! - `response_format` has no stable native equivalent. A JSON schema is asked for the common
//!   way: a tool named after the schema, with the schema as its `input_schema`, which the model
//!   is forced to call (`tool_choice` `{"type":"tool"}`; `{"type":"any"}` when the caller's own
//!   tools are offered too). The input of that call is returned as the answer's text with
//!   [`FinishReason::Stop`], and in streams its input fragments arrive as text deltas. A JSON
//!   object without a schema is asked for with a system instruction.
//! - Usage: Anthropic's `input_tokens` excludes prompt-cache reads and writes; the contract's
//!   `prompt_tokens` includes them, with the cached and cache-creation parts also reported apart.

use std::collections::{HashMap, VecDeque};

use agentmesh_proto::agentmesh::common::v1::{ImagePart, MessageRole, Usage, image_part};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, ToolCall, ToolCallDelta, ToolDefinition, response_format, tool_choice,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use eventsource_stream::Event;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::{HttpClient, redact};
use super::parts::{ModelPart, model_parts};
use super::{Completion, Delta, DeltaStream, Finish, Provider, ProviderError, ProviderRequest};

/// The API version every request pins (`anthropic-version`).
const API_VERSION: &str = "2023-06-01";
/// The secret holding the API key.
const KEY_SECRET: &str = "anthropic-api-key";
/// The answer tool's name when the JSON schema has none.
const DEFAULT_ANSWER_TOOL: &str = "json_answer";
/// The answer tool's description when the JSON schema has none.
const DEFAULT_ANSWER_DESCRIPTION: &str = "Give your answer: the input of this call is the answer.";
/// The system instruction asking for a JSON object (`response_format` `json_object`).
const JSON_OBJECT_INSTRUCTION: &str =
    "Answer with a single JSON object only: no text, explanation or code fence before or after it.";

/// The Anthropic provider.
#[derive(Debug, Clone)]
pub struct Anthropic {
    /// `https://api.anthropic.com` or a compatible server, without a trailing slash.
    base_url: String,
    /// Pooled connections, reading Anthropic's error bodies.
    http: HttpClient,
}

impl Anthropic {
    /// A provider calling the Messages API under `base_url` (`https://api.anthropic.com`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self { base_url, http: HttpClient::new(error_message) }
    }

    /// The HTTP request for `body`, with the key and version headers.
    fn post(&self, key: &str, body: &MessagesRequest<'_>) -> reqwest::RequestBuilder {
        self.http
            .client()
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", key)
            .header("anthropic-version", API_VERSION)
            .json(body)
    }
}

/// The key of `request`, or the error saying none is configured.
fn key<'a>(request: &ProviderRequest<'a>) -> Result<&'a str, ProviderError> {
    request
        .key
        .filter(|key| !key.is_empty())
        .map(|key| key.expose())
        .ok_or_else(|| ProviderError::MissingKey { secret: KEY_SECRET.to_owned() })
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn key_secret(&self) -> Option<&str> {
        Some(KEY_SECRET)
    }

    async fn chat(&self, request: ProviderRequest<'_>) -> Result<Completion, ProviderError> {
        let key = key(&request)?;
        let body = MessagesRequest::new(request, false)?;
        let response: MessagesResponse = self.http.json(self.post(key, &body), Some(key)).await?;
        Ok(response.into_completion(body.answer_tool.as_deref()))
    }

    async fn stream(&self, request: ProviderRequest<'_>) -> Result<DeltaStream, ProviderError> {
        let key = key(&request)?;
        let body = MessagesRequest::new(request, true)?;
        let events = self.http.events(self.post(key, &body), Some(key)).await?;
        Ok(deltas(events, body.answer_tool, key.to_owned()))
    }
}

/// Finds the message in an error body: `{"type":"error","error":{"type":…,"message":…}}`.
fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let message = error.get("message")?.as_str()?;
    Some(match error.get("type").and_then(Value::as_str) {
        Some(kind) => format!("{kind}: {message}"),
        None => message.to_owned(),
    })
}

/// The HTTP status Anthropic documents for an error type, for errors sent inside a stream.
fn error_status(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "conflict_error" => 409,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// The contract's finish reason for Anthropic's `stop_reason`.
fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::Refusal,
        // end_turn, stop_sequence, pause_turn (a server tool paused a long turn) and reasons
        // newer than this module.
        _ => FinishReason::Stop,
    }
}

/// The finish of an answer; a `tool_use` stop without calls for the caller (only the
/// JSON-schema answer tool was called) is a plain stop.
fn finish(stop_reason: String, called_tools: bool) -> Finish {
    let reason = match finish_reason(&stop_reason) {
        FinishReason::ToolCalls if !called_tools => FinishReason::Stop,
        reason => reason,
    };
    Finish::new(reason, stop_reason)
}

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// The body of `POST /v1/messages`.
#[derive(Debug, Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<i32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    /// The JSON-schema answer tool's name, to recognise its call in the answer (not sent).
    #[serde(skip)]
    answer_tool: Option<String>,
}

/// One message: a role and its content blocks.
#[derive(Debug, Serialize)]
struct Message {
    role: &'static str,
    content: Vec<Block>,
}

/// A content block of a request message.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        /// Text and images; absent when the tool returned nothing.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        content: Vec<Block>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

/// Where an image comes from.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

/// A tool the model may call.
#[derive(Debug, Serialize)]
struct Tool {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    input_schema: Value,
}

/// How the model may use the tools.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireToolChoice {
    Auto {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    Any {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    Tool {
        name: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    None,
}

impl<'a> MessagesRequest<'a> {
    /// Translates a contract request.
    fn new(call: ProviderRequest<'a>, stream: bool) -> Result<Self, ProviderError> {
        let request = call.request;
        let (mut system, messages) = messages(&request.messages)?;
        let format = request.response_format.as_ref();
        let format_type = format.map_or(response_format::Type::Unspecified, |format| format.r#type());
        if format_type == response_format::Type::JsonObject {
            system.push(JSON_OBJECT_INSTRUCTION.to_owned());
        }
        let mut tools: Vec<Tool> = request.tools.iter().map(tool).collect();
        let answer_tool = match (format_type, format.and_then(|format| format.json_schema.as_ref())) {
            (response_format::Type::JsonSchema, Some(schema)) => {
                let name = if schema.name.is_empty() { DEFAULT_ANSWER_TOOL } else { &schema.name };
                if tools.iter().any(|tool| tool.name == name) {
                    return Err(ProviderError::Unsupported(format!(
                        "the JSON schema's name {name:?} is also a tool's name; Anthropic receives the schema as a tool"
                    )));
                }
                let description =
                    if schema.description.is_empty() { DEFAULT_ANSWER_DESCRIPTION } else { &schema.description };
                tools.push(Tool {
                    name: name.to_owned(),
                    description: description.to_owned(),
                    input_schema: object_schema(schema.schema.as_ref()),
                });
                Some(name.to_owned())
            }
            (response_format::Type::JsonSchema, None) => {
                return Err(ProviderError::Unsupported("response_format json_schema needs its json_schema".to_owned()));
            }
            _ => None,
        };
        let tool_choice = wire_tool_choice(request, answer_tool.as_deref());
        Ok(Self {
            model: call.model,
            max_tokens: call.max_tokens,
            messages,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.provider_options.as_ref().and_then(|options| options.anthropic_top_k),
            stop_sequences: &request.stop,
            tools,
            tool_choice,
            stream,
            answer_tool,
        })
    }
}

/// A contract tool as an Anthropic tool.
fn tool(definition: &ToolDefinition) -> Tool {
    Tool {
        name: definition.name.clone(),
        description: definition.description.clone(),
        input_schema: object_schema(definition.parameters.as_ref()),
    }
}

/// A JSON schema, or the schema of an object without properties when there is none
/// (Anthropic requires `input_schema`).
fn object_schema(schema: Option<&prost_types::Struct>) -> Value {
    match schema {
        Some(schema) => Value::Object(agentmesh_proto::json::struct_to_object(schema)),
        None => serde_json::json!({"type": "object", "properties": {}}),
    }
}

/// The tool choice: the caller's (with `disable_parallel_tool_use` for
/// `parallel_tool_calls = false`), or the forced call of the JSON-schema answer tool.
fn wire_tool_choice(request: &ChatRequest, answer_tool: Option<&str>) -> Option<WireToolChoice> {
    let disable_parallel_tool_use = request.parallel_tool_calls == Some(false);
    let choice = request.tool_choice.as_ref().and_then(|choice| choice.choice.as_ref());
    let mode = |mode: i32| tool_choice::Mode::try_from(mode).unwrap_or(tool_choice::Mode::Unspecified);
    if let Some(answer_tool) = answer_tool {
        let forced_answer = WireToolChoice::Tool { name: answer_tool.to_owned(), disable_parallel_tool_use: true };
        return Some(match choice {
            _ if request.tools.is_empty() => forced_answer,
            Some(tool_choice::Choice::Tool(name)) => {
                WireToolChoice::Tool { name: name.clone(), disable_parallel_tool_use }
            }
            Some(tool_choice::Choice::Mode(value)) if mode(*value) == tool_choice::Mode::None => forced_answer,
            // The model calls the caller's tools or answers through the answer tool.
            _ => WireToolChoice::Any { disable_parallel_tool_use },
        });
    }
    if request.tools.is_empty() {
        return None;
    }
    match choice {
        Some(tool_choice::Choice::Tool(name)) => {
            Some(WireToolChoice::Tool { name: name.clone(), disable_parallel_tool_use })
        }
        Some(tool_choice::Choice::Mode(value)) => match mode(*value) {
            tool_choice::Mode::None => Some(WireToolChoice::None),
            tool_choice::Mode::Required => Some(WireToolChoice::Any { disable_parallel_tool_use }),
            tool_choice::Mode::Auto => Some(WireToolChoice::Auto { disable_parallel_tool_use }),
            tool_choice::Mode::Unspecified => {
                disable_parallel_tool_use.then_some(WireToolChoice::Auto { disable_parallel_tool_use })
            }
        },
        None => disable_parallel_tool_use.then_some(WireToolChoice::Auto { disable_parallel_tool_use }),
    }
}

/// The system texts and the alternating user/assistant messages of a conversation.
fn messages(conversation: &[ChatMessage]) -> Result<(Vec<String>, Vec<Message>), ProviderError> {
    let mut system = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    for message in conversation {
        let role = MessageRole::try_from(message.role).unwrap_or(MessageRole::Unspecified);
        let (role, content) = match role {
            MessageRole::System => {
                let text = system_text(message)?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            MessageRole::Assistant => ("assistant", assistant_blocks(message)?),
            MessageRole::Tool => ("user", vec![tool_result(message)?]),
            MessageRole::User | MessageRole::Unspecified => ("user", content_blocks(message)?),
        };
        match messages.last_mut() {
            Some(last) if last.role == role => merge(&mut last.content, content),
            _ if content.is_empty() => {}
            _ => messages.push(Message { role, content }),
        }
    }
    Ok((system, messages))
}

/// Appends `later` blocks to a message's; tool results go before any other block, as
/// Anthropic requires.
fn merge(content: &mut Vec<Block>, later: Vec<Block>) {
    for block in later {
        if matches!(block, Block::ToolResult { .. }) {
            let at = content.iter().take_while(|block| matches!(block, Block::ToolResult { .. })).count();
            content.insert(at, block);
        } else {
            content.push(block);
        }
    }
}

/// A system message's text (text parts appended on new lines).
fn system_text(message: &ChatMessage) -> Result<String, ProviderError> {
    let mut text = message.content.clone();
    for part in model_parts(&message.parts)? {
        match part {
            ModelPart::Text(part) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&part);
            }
            ModelPart::Image(_) | ModelPart::Audio(_) => {
                return Err(ProviderError::Unsupported(
                    "Anthropic accepts no images or audio in system messages".to_owned(),
                ));
            }
        }
    }
    Ok(text)
}

/// The text and image blocks of a message's `content` and `parts`; empty texts are left out
/// (Anthropic rejects them).
fn content_blocks(message: &ChatMessage) -> Result<Vec<Block>, ProviderError> {
    let mut blocks = Vec::new();
    if !message.content.is_empty() {
        blocks.push(Block::Text { text: message.content.clone() });
    }
    for part in model_parts(&message.parts)? {
        match part {
            ModelPart::Text(text) if !text.is_empty() => blocks.push(Block::Text { text: text.into_owned() }),
            ModelPart::Text(_) => {}
            ModelPart::Image(image) => blocks.push(Block::Image { source: image_source(&image)? }),
            ModelPart::Audio(_) => return Err(ProviderError::Unsupported("Anthropic accepts no audio".to_owned())),
        }
    }
    Ok(blocks)
}

/// An assistant message: its text, then its tool calls as `tool_use` blocks.
fn assistant_blocks(message: &ChatMessage) -> Result<Vec<Block>, ProviderError> {
    if model_parts(&message.parts)?.iter().any(|part| !matches!(part, ModelPart::Text(_))) {
        return Err(ProviderError::Unsupported("Anthropic accepts no images in assistant messages".to_owned()));
    }
    let mut blocks = content_blocks(message)?;
    for call in &message.tool_calls {
        blocks.push(tool_use(call)?);
    }
    Ok(blocks)
}

/// A tool call the model made earlier, as a `tool_use` block.
fn tool_use(call: &ToolCall) -> Result<Block, ProviderError> {
    let input = if call.arguments_json.trim().is_empty() {
        Value::Object(serde_json::Map::new())
    } else {
        match serde_json::from_str::<Value>(&call.arguments_json) {
            Ok(input @ Value::Object(_)) => input,
            _ => {
                return Err(ProviderError::Unsupported(format!(
                    "the arguments of tool call {:?} are not a JSON object; Anthropic needs one",
                    call.id
                )));
            }
        }
    };
    Ok(Block::ToolUse { id: call.id.clone(), name: call.name.clone(), input })
}

/// A tool message as a `tool_result` block, with the tool's text and images.
fn tool_result(message: &ChatMessage) -> Result<Block, ProviderError> {
    let tool_use_id = message.tool_call_id.clone().filter(|id| !id.is_empty()).ok_or_else(|| {
        ProviderError::Unsupported("a tool message needs the tool_call_id of the call it answers".to_owned())
    })?;
    Ok(Block::ToolResult { tool_use_id, content: content_blocks(message)?, is_error: message.is_error })
}

/// An image's source: base64 data (from bytes or a `data:` URL) or a URL Anthropic fetches.
fn image_source(image: &ImagePart) -> Result<ImageSource, ProviderError> {
    match &image.source {
        Some(image_part::Source::Data(bytes)) => {
            if image.mime_type.is_empty() {
                return Err(ProviderError::Unsupported("an image given as bytes needs its mime_type".to_owned()));
            }
            Ok(ImageSource::Base64 { media_type: image.mime_type.clone(), data: BASE64.encode(bytes) })
        }
        Some(image_part::Source::Url(url)) => match url.strip_prefix("data:") {
            Some(data_url) => {
                let (media_type, data) = data_url.split_once(";base64,").ok_or_else(|| {
                    ProviderError::Unsupported("Anthropic accepts data: URLs of images only base64-encoded".to_owned())
                })?;
                Ok(ImageSource::Base64 { media_type: media_type.to_owned(), data: data.to_owned() })
            }
            None => Ok(ImageSource::Url { url: url.clone() }),
        },
        None => Err(ProviderError::Unsupported("an image part needs a url or data".to_owned())),
    }
}

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

/// A whole answer.
#[derive(Debug, Deserialize)]
struct MessagesResponse {
    id: String,
    #[serde(default)]
    content: Vec<ResponseBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

/// A content block of an answer (also the start of a streamed block).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// Thinking, redacted thinking, server tools' blocks: not part of the contract's answer.
    #[serde(other)]
    Other,
}

/// Anthropic's token counts; the cache fields may be absent or null.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireUsage {
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
    cache_creation_input_tokens: Option<i64>,
}

impl WireUsage {
    /// Takes the counts a later report carries (`message_delta` repeats cumulative counts or
    /// only sends `output_tokens`).
    fn update(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_read_input_tokens = later.cache_read_input_tokens.or(self.cache_read_input_tokens);
        self.cache_creation_input_tokens = later.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
    }

    /// The contract's usage: prompt tokens include cache reads and writes.
    fn to_usage(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        let prompt = self.input_tokens.unwrap_or(0) + cached + created;
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_prompt_tokens: cached,
            cache_creation_tokens: created,
            ..Default::default()
        }
    }
}

impl MessagesResponse {
    /// The contract's completion; the answer tool's input becomes the text.
    fn into_completion(self, answer_tool: Option<&str>) -> Completion {
        let mut message = ChatMessage { role: MessageRole::Assistant as i32, ..Default::default() };
        for block in self.content {
            match block {
                ResponseBlock::Text { text } => message.content.push_str(&text),
                ResponseBlock::ToolUse { name, input, .. } if Some(name.as_str()) == answer_tool => {
                    message.content.push_str(&input.to_string());
                }
                ResponseBlock::ToolUse { id, name, input } => {
                    message.tool_calls.push(ToolCall { id, name, arguments_json: input.to_string() });
                }
                ResponseBlock::Other => {}
            }
        }
        let called_tools = !message.tool_calls.is_empty();
        Completion {
            id: self.id,
            message,
            finish: finish(self.stop_reason.unwrap_or_default(), called_tools),
            usage: Some(self.usage.to_usage()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------

/// One server-sent event's data.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: ResponseBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDelta,
        #[serde(default)]
        usage: WireUsage,
    },
    MessageStop,
    Error {
        error: StreamError,
    },
    /// `ping` and events newer than this module.
    #[serde(other)]
    Other,
}

/// The message as `message_start` announces it.
#[derive(Debug, Deserialize)]
struct StartedMessage {
    id: String,
    #[serde(default)]
    usage: WireUsage,
}

/// A piece of a content block.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// Thinking, signatures, citations.
    #[serde(other)]
    Other,
}

/// The end-of-message fields of `message_delta`.
#[derive(Debug, Deserialize)]
struct MessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// An error Anthropic sends inside a stream (`overloaded_error` mid-answer).
#[derive(Debug, Deserialize)]
struct StreamError {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

/// What a streamed content block is, by Anthropic's block index.
#[derive(Debug, Clone, Copy)]
enum OpenBlock {
    Text,
    /// A tool call: its index among this answer's calls, and whether arguments were sent.
    ToolCall {
        index: u32,
        sent_arguments: bool,
    },
    /// The JSON-schema answer tool: its input is the answer's text.
    Answer {
        sent_text: bool,
    },
}

/// The translation of one stream, event by event.
struct StreamTranslation {
    /// The JSON-schema answer tool's name, if the request asked for one.
    answer_tool: Option<String>,
    /// The open content blocks by Anthropic's index.
    blocks: HashMap<usize, OpenBlock>,
    /// Tool calls started so far.
    tool_calls: u32,
    /// Usage from `message_start`, updated by `message_delta`; `None` until reported.
    usage: Option<WireUsage>,
    /// The stop reason from `message_delta`.
    stop_reason: Option<String>,
    /// The key, redacted from in-stream error messages.
    key: String,
}

impl StreamTranslation {
    /// Translates one event into `out`; returns whether the answer is complete.
    fn on_event(
        &mut self,
        event: &Event,
        out: &mut VecDeque<Result<Delta, ProviderError>>,
    ) -> Result<bool, ProviderError> {
        let event: StreamEvent = serde_json::from_str(&event.data)
            .map_err(|error| ProviderError::Malformed(format!("event {:?}: {error}", event.event)))?;
        match event {
            StreamEvent::MessageStart { message } => {
                out.push_back(Ok(Delta::Id(message.id)));
                self.add_usage(message.usage);
            }
            StreamEvent::ContentBlockStart { index, content_block } => match content_block {
                ResponseBlock::Text { text } => {
                    self.blocks.insert(index, OpenBlock::Text);
                    if !text.is_empty() {
                        out.push_back(Ok(Delta::Text(text)));
                    }
                }
                ResponseBlock::ToolUse { name, .. } if Some(name.as_str()) == self.answer_tool.as_deref() => {
                    self.blocks.insert(index, OpenBlock::Answer { sent_text: false });
                }
                ResponseBlock::ToolUse { id, name, .. } => {
                    let call = self.tool_calls;
                    self.tool_calls += 1;
                    self.blocks.insert(index, OpenBlock::ToolCall { index: call, sent_arguments: false });
                    out.push_back(Ok(Delta::ToolCall(ToolCallDelta {
                        index: call,
                        id: Some(id),
                        name: Some(name),
                        arguments_fragment: String::new(),
                    })));
                }
                ResponseBlock::Other => {}
            },
            StreamEvent::ContentBlockDelta { index, delta } => {
                let block = self.blocks.get_mut(&index);
                match (delta, block) {
                    (BlockDelta::TextDelta { text }, Some(OpenBlock::Text)) if !text.is_empty() => {
                        out.push_back(Ok(Delta::Text(text)));
                    }
                    (
                        BlockDelta::InputJsonDelta { partial_json },
                        Some(OpenBlock::ToolCall { index, sent_arguments }),
                    ) if !partial_json.is_empty() => {
                        *sent_arguments = true;
                        out.push_back(Ok(Delta::ToolCall(argument_fragment(*index, partial_json))));
                    }
                    (BlockDelta::InputJsonDelta { partial_json }, Some(OpenBlock::Answer { sent_text }))
                        if !partial_json.is_empty() =>
                    {
                        *sent_text = true;
                        out.push_back(Ok(Delta::Text(partial_json)));
                    }
                    _ => {}
                }
            }
            StreamEvent::ContentBlockStop { index } => match self.blocks.remove(&index) {
                // A call without input still has arguments: `{}`.
                Some(OpenBlock::ToolCall { index, sent_arguments: false }) => {
                    out.push_back(Ok(Delta::ToolCall(argument_fragment(index, "{}".to_owned()))));
                }
                Some(OpenBlock::Answer { sent_text: false }) => out.push_back(Ok(Delta::Text("{}".to_owned()))),
                _ => {}
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
                self.add_usage(usage);
            }
            StreamEvent::MessageStop => {
                if let Some(usage) = self.usage.take() {
                    out.push_back(Ok(Delta::Usage(usage.to_usage())));
                }
                let stop_reason = self.stop_reason.take().unwrap_or_default();
                out.push_back(Ok(Delta::Finish(finish(stop_reason, self.tool_calls > 0))));
                return Ok(true);
            }
            StreamEvent::Error { error } => {
                return Err(ProviderError::Status {
                    status: error_status(&error.kind),
                    retry_after: None,
                    message: redact(&format!("{}: {}", error.kind, error.message), Some(&self.key)),
                });
            }
            StreamEvent::Other => {}
        }
        Ok(false)
    }

    /// Takes a usage report into the usage so far.
    fn add_usage(&mut self, usage: WireUsage) {
        self.usage.get_or_insert_default().update(usage);
    }
}

/// A fragment of a tool call's arguments.
fn argument_fragment(index: u32, fragment: String) -> ToolCallDelta {
    ToolCallDelta { index, id: None, name: None, arguments_fragment: fragment }
}

/// The deltas of a stream of Anthropic events: ends after the finish, with the first error,
/// or with [`ProviderError::Truncated`] when the events stop before `message_stop`.
fn deltas(
    events: impl Stream<Item = Result<Event, ProviderError>> + Send + 'static,
    answer_tool: Option<String>,
    key: String,
) -> DeltaStream {
    let translation =
        StreamTranslation { answer_tool, blocks: HashMap::new(), tool_calls: 0, usage: None, stop_reason: None, key };
    let state = (Box::pin(events), translation, VecDeque::new(), false);
    futures::stream::unfold(state, |(mut events, mut translation, mut pending, mut done)| async move {
        loop {
            if let Some(item) = pending.pop_front() {
                return Some((item, (events, translation, pending, done)));
            }
            if done {
                return None;
            }
            let item = match events.next().await {
                None => Err(ProviderError::Truncated),
                Some(Err(error)) => Err(error),
                Some(Ok(event)) => translation.on_event(&event, &mut pending),
            };
            match item {
                Ok(finished) => done = finished,
                Err(error) => {
                    pending.push_back(Err(error));
                    done = true;
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests;
