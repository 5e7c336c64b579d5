//! Google's Gemini API (the Generative Language API, `v1beta`), so that agents can use
//! Gemini models through the same contract as every other provider.
//!
//! Unary calls go to `models/{model}:generateContent`, streams to
//! `models/{model}:streamGenerateContent?alt=sse`, whose every `data:` is a whole
//! `GenerateContentResponse` chunk. The stream has no end event: it is complete when a
//! chunk carries the candidate's `finishReason`, and cut off otherwise. The key travels
//! in the `x-goog-api-key` header, never in the URL, so it cannot reach a log line.
//!
//! What does not map one to one:
//! - System messages, wherever they are, become the one `systemInstruction`.
//! - Gemini sends no tool-call ids: calls get made-up ones, and a tool result names its
//!   function (from `ChatMessage.name`, else from the assistant call with its id). Ids are
//!   never sent back, Gemini pairs calls and results by order.
//! - Gemini streams every function call whole, in one chunk: a streamed call is one
//!   [`Delta::ToolCall`] carrying all of its arguments.
//! - Gemini 3 rejects replayed function calls without the thought signature it attached
//!   to them, which the contract does not carry: the first replayed call of a turn (the
//!   one Gemini signs) carries Google's documented "skip validation" signature instead.
//! - Tool parameters and response schemas go as full JSON Schema (`parametersJsonSchema`,
//!   `responseJsonSchema`) rather than Gemini's older OpenAPI subset, so schemas with
//!   `additionalProperties` and friends are accepted as they are.
//! - `parallel_tool_calls` has no Gemini switch and is not sent; `strict` is implied
//!   (Gemini always holds the answer to the schema).

use std::collections::HashMap;
use std::time::Duration;

use agentmesh_proto::agentmesh::common::v1::{MessageRole, Usage};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, ImagePart, ToolCall, ToolCallDelta, content_part, image_part,
    response_format, tool_choice,
};
use agentmesh_proto::json::struct_to_object;
use agentmesh_runtime::config::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::{ErrorHints, HttpClient, redact};
use super::{Completion, Delta, DeltaStream, Finish, Provider, ProviderError, ProviderRequest, made_up_tool_call_id};

/// The secret holding the API key.
const KEY_SECRET: &str = "google-api-key";

/// The thought signature Google documents for function calls replayed without their own
/// (history from another model, or from a contract that cannot carry it).
const SKIP_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// Image types Gemini reads, by file extension, for image URLs sent without a media type.
const IMAGE_TYPES: &[(&str, &str)] = &[
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("webp", "image/webp"),
    ("heic", "image/heic"),
    ("heif", "image/heif"),
];

/// The Gemini API.
#[derive(Debug, Clone)]
pub struct Gemini {
    /// Where the API lives, without a trailing `/` (`https://generativelanguage.googleapis.com`).
    base_url: String,
    /// The pooled client, reading Google's error bodies.
    http: HttpClient,
}

impl Gemini {
    /// The Gemini API at `base_url` (`https://generativelanguage.googleapis.com`, or a fake
    /// server in tests).
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self { base_url, http: HttpClient::new(error_message).with_error_hints(error_hints) }
    }

    /// The request for `method` (`generateContent`, `streamGenerateContent?alt=sse`) of the
    /// requested model, with its body and key, and the key to redact.
    fn post<'a>(
        &self,
        request: &ProviderRequest<'a>,
        method: &str,
    ) -> Result<(reqwest::RequestBuilder, &'a str), ProviderError> {
        let key = request
            .key
            .map(|key| key.expose())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| ProviderError::MissingKey { secret: KEY_SECRET.to_owned() })?;
        let model = request.model;
        if model.is_empty() || !model.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(ProviderError::Unsupported(format!("{model:?} is not a Gemini model name")));
        }
        let body = request_body(request.request, request.max_tokens)?;
        let url = format!("{}/v1beta/models/{model}:{method}", self.base_url);
        Ok((self.http.client().post(url).header("x-goog-api-key", key).json(&body), key))
    }
}

#[async_trait::async_trait]
impl Provider for Gemini {
    fn name(&self) -> &str {
        "gemini"
    }

    fn key_secret(&self) -> Option<&str> {
        Some(KEY_SECRET)
    }

    async fn chat(&self, request: ProviderRequest<'_>) -> Result<Completion, ProviderError> {
        let (http_request, key) = self.post(&request, "generateContent")?;
        let response: GenerateContentResponse = self.http.json(http_request, Some(key)).await?;
        completion(response)
    }

    async fn stream(&self, request: ProviderRequest<'_>) -> Result<DeltaStream, ProviderError> {
        let (http_request, key) = self.post(&request, "streamGenerateContent?alt=sse")?;
        let events = Box::pin(self.http.events(http_request, Some(key)).await?);
        let state = StreamState { secret: Secret::new(key), ..StreamState::default() };
        let deltas = futures::stream::unfold(Some((events, state)), |running| async move {
            let (mut events, mut state) = running?;
            loop {
                let deltas = match events.next().await {
                    None => Err(ProviderError::Truncated),
                    Some(Err(error)) => Err(error),
                    Some(Ok(event)) if !(event.event.is_empty() || event.event == "message") => continue,
                    Some(Ok(event)) if event.data.trim().is_empty() => continue,
                    Some(Ok(event)) => state.on_data(&event.data),
                };
                return match deltas {
                    Ok(deltas) if deltas.is_empty() => continue,
                    Ok(deltas) => {
                        let finished = matches!(deltas.last(), Some(Delta::Finish(_)));
                        Some((deltas.into_iter().map(Ok).collect::<Vec<_>>(), (!finished).then_some((events, state))))
                    }
                    Err(error) => Some((vec![Err(error)], None)),
                };
            }
        });
        Ok(Box::pin(deltas.flat_map(futures::stream::iter)))
    }
}

// ---- Request ------------------------------------------------------------------------

/// The `generateContent` body for `request`.
fn request_body(request: &ChatRequest, max_tokens: u32) -> Result<Value, ProviderError> {
    let conversation = Conversation::of(&request.messages)?;
    let mut body = Map::new();
    if !conversation.system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": conversation.system}));
    }
    body.insert("contents".into(), Value::Array(conversation.contents()));
    body.insert("generationConfig".into(), generation_config(request, max_tokens)?);
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut declaration = json!({"name": tool.name, "description": tool.description});
                if let Some(parameters) = &tool.parameters {
                    declaration["parametersJsonSchema"] = Value::Object(struct_to_object(parameters));
                }
                declaration
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    if let Some(config) = function_calling_config(request)? {
        body.insert("toolConfig".into(), json!({"functionCallingConfig": config}));
    }
    if let Some(options) = &request.provider_options
        && !options.gemini_safety_settings.is_empty()
    {
        let settings: Vec<Value> = options
            .gemini_safety_settings
            .iter()
            .map(|setting| json!({"category": setting.category, "threshold": setting.threshold}))
            .collect();
        body.insert("safetySettings".into(), Value::Array(settings));
    }
    Ok(Value::Object(body))
}

/// `generationConfig`: sampling, the token limit (always sent), stop sequences and the
/// answer's shape.
fn generation_config(request: &ChatRequest, max_tokens: u32) -> Result<Value, ProviderError> {
    let mut config = Map::new();
    config.insert("maxOutputTokens".into(), max_tokens.into());
    if let Some(temperature) = request.temperature {
        config.insert("temperature".into(), temperature.into());
    }
    if let Some(top_p) = request.top_p {
        config.insert("topP".into(), top_p.into());
    }
    if !request.stop.is_empty() {
        config.insert("stopSequences".into(), request.stop.clone().into());
    }
    if let Some(format) = &request.response_format {
        match response_format::Type::try_from(format.r#type) {
            Ok(response_format::Type::Unspecified | response_format::Type::Text) => {}
            Ok(response_format::Type::JsonObject) => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Ok(response_format::Type::JsonSchema) => {
                let schema =
                    format.json_schema.as_ref().and_then(|format| format.schema.as_ref()).ok_or_else(|| {
                        ProviderError::Unsupported("a json_schema response format needs its schema".to_owned())
                    })?;
                config.insert("responseMimeType".into(), "application/json".into());
                config.insert("responseJsonSchema".into(), Value::Object(struct_to_object(schema)));
            }
            Err(_) => {
                return Err(ProviderError::Unsupported(format!("unknown response format type {}", format.r#type)));
            }
        }
    }
    Ok(Value::Object(config))
}

/// `functionCallingConfig` for the request's tool choice, when it makes one.
fn function_calling_config(request: &ChatRequest) -> Result<Option<Value>, ProviderError> {
    let Some(choice) = request.tool_choice.as_ref().and_then(|choice| choice.choice.as_ref()) else {
        return Ok(None);
    };
    let config = match choice {
        tool_choice::Choice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        tool_choice::Choice::Mode(mode) => match tool_choice::Mode::try_from(*mode) {
            Ok(tool_choice::Mode::Unspecified) => return Ok(None),
            Ok(tool_choice::Mode::Auto) => json!({"mode": "AUTO"}),
            Ok(tool_choice::Mode::None) => json!({"mode": "NONE"}),
            Ok(tool_choice::Mode::Required) => json!({"mode": "ANY"}),
            Err(_) => return Err(ProviderError::Unsupported(format!("unknown tool choice mode {mode}"))),
        },
    };
    Ok(Some(config))
}

/// The conversation as Gemini takes it: the system instruction apart, and the turns.
#[derive(Debug, Default)]
struct Conversation {
    /// Parts of `systemInstruction`, from every system message.
    system: Vec<Value>,
    /// The turns, oldest first.
    turns: Vec<Turn>,
}

/// One `Content` of `contents`.
#[derive(Debug)]
struct Turn {
    /// `user` or `model`.
    role: &'static str,
    /// Its parts, never empty once pushed.
    parts: Vec<Value>,
    /// Whether it holds tool results, so that the next tool result joins it: Gemini wants
    /// the answers to one turn's function calls together.
    tool_results: bool,
}

impl Conversation {
    /// Translates `messages`; what Gemini cannot take is [`ProviderError::Unsupported`].
    fn of(messages: &[ChatMessage]) -> Result<Self, ProviderError> {
        let mut conversation = Conversation::default();
        // The function name of every tool call so far, for tool results naming only the call.
        let mut call_names: HashMap<&str, &str> = HashMap::new();
        for message in messages {
            let role = MessageRole::try_from(message.role)
                .map_err(|_| ProviderError::Unsupported(format!("unknown message role {}", message.role)))?;
            match role {
                MessageRole::System => conversation.system.extend(text_parts(message, "system")?),
                MessageRole::Unspecified | MessageRole::User => {
                    let parts = user_parts(message)?;
                    conversation.push(Turn { role: "user", parts, tool_results: false });
                }
                MessageRole::Assistant => {
                    let mut parts = text_parts(message, "assistant")?;
                    for (position, call) in message.tool_calls.iter().enumerate() {
                        call_names.insert(&call.id, &call.name);
                        parts.push(function_call_part(call, position == 0)?);
                    }
                    conversation.push(Turn { role: "model", parts, tool_results: false });
                }
                MessageRole::Tool => {
                    let parts = tool_result_parts(message, &call_names)?;
                    conversation.push(Turn { role: "user", parts, tool_results: true });
                }
            }
        }
        Ok(conversation)
    }

    /// Adds a turn; tool results join the tool results before them, and empty turns are
    /// dropped (Gemini refuses a content without parts).
    fn push(&mut self, turn: Turn) {
        if turn.parts.is_empty() {
            return;
        }
        match self.turns.last_mut() {
            Some(last) if turn.tool_results && last.tool_results => last.parts.extend(turn.parts),
            _ => self.turns.push(turn),
        }
    }

    /// The turns as `contents`.
    fn contents(self) -> Vec<Value> {
        self.turns.into_iter().map(|turn| json!({"role": turn.role, "parts": turn.parts})).collect()
    }
}

/// The text of a message that may hold no images (`who` names it in the error).
fn text_parts(message: &ChatMessage, who: &str) -> Result<Vec<Value>, ProviderError> {
    let mut parts = text_part(&message.content).into_iter().collect::<Vec<_>>();
    for part in &message.parts {
        match &part.part {
            Some(content_part::Part::Text(text)) => parts.extend(text_part(text)),
            Some(content_part::Part::Image(_)) => {
                return Err(ProviderError::Unsupported(format!(
                    "Gemini takes images on user and tool messages, not on {who} messages"
                )));
            }
            None => {}
        }
    }
    Ok(parts)
}

/// A text part, unless the text is empty (Gemini refuses empty text parts).
fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"text": text}))
}

/// A user message's text and images, in order.
fn user_parts(message: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut parts: Vec<Value> = text_part(&message.content).into_iter().collect();
    for part in &message.parts {
        match &part.part {
            Some(content_part::Part::Text(text)) => parts.extend(text_part(text)),
            Some(content_part::Part::Image(image)) => parts.push(image_part(image)?),
            None => {}
        }
    }
    Ok(parts)
}

/// An image: bytes and `data:` URLs inline, other URLs by reference.
fn image_part(image: &ImagePart) -> Result<Value, ProviderError> {
    match &image.source {
        Some(image_part::Source::Data(bytes)) => {
            if image.mime_type.is_empty() {
                return Err(ProviderError::Unsupported("an image given as bytes needs its mime_type".to_owned()));
            }
            Ok(json!({"inlineData": {"mimeType": image.mime_type, "data": BASE64.encode(bytes)}}))
        }
        Some(image_part::Source::Url(url)) => match url.strip_prefix("data:") {
            Some(data_url) => {
                let (media_type, data) = data_url
                    .split_once(";base64,")
                    .ok_or_else(|| ProviderError::Unsupported("Gemini takes base64 data: URLs only".to_owned()))?;
                let mime_type = if image.mime_type.is_empty() { media_type } else { &image.mime_type };
                Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}))
            }
            None => {
                let mime_type = if image.mime_type.is_empty() {
                    mime_type_of_url(url).ok_or_else(|| {
                        ProviderError::Unsupported(format!(
                            "the image {url} needs a mime_type: Gemini requires one and its name does not tell"
                        ))
                    })?
                } else {
                    &image.mime_type
                };
                Ok(json!({"fileData": {"mimeType": mime_type, "fileUri": url}}))
            }
        },
        None => Err(ProviderError::Unsupported("an image part without an image".to_owned())),
    }
}

/// The media type an image URL's file extension tells, among those Gemini reads.
fn mime_type_of_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    let (_, extension) = name.rsplit_once('.')?;
    IMAGE_TYPES.iter().find(|(known, _)| known.eq_ignore_ascii_case(extension)).map(|(_, mime_type)| *mime_type)
}

/// A replayed function call; the first of a turn carries the signature that lets Gemini 3
/// accept it (Gemini signs only the first of parallel calls).
fn function_call_part(call: &ToolCall, first: bool) -> Result<Value, ProviderError> {
    let args = if call.arguments_json.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_json::from_str::<Value>(&call.arguments_json) {
            Ok(args @ Value::Object(_)) => args,
            _ => {
                return Err(ProviderError::Unsupported(format!(
                    "the arguments of tool call {} are not a JSON object, which Gemini requires",
                    call.id
                )));
            }
        }
    };
    let mut part = json!({"functionCall": {"name": call.name, "args": args}});
    if first {
        part["thoughtSignature"] = SKIP_THOUGHT_SIGNATURE.into();
    }
    Ok(part)
}

/// A tool result: its `functionResponse` (Gemini wants an object: `{"content": text}`, or
/// `{"error": text}` for a failure), then its images.
fn tool_result_parts(message: &ChatMessage, call_names: &HashMap<&str, &str>) -> Result<Vec<Value>, ProviderError> {
    let name = message
        .name
        .as_deref()
        .filter(|name| !name.is_empty())
        .or_else(|| message.tool_call_id.as_deref().and_then(|id| call_names.get(id).copied()))
        .ok_or_else(|| {
            ProviderError::Unsupported(
                "Gemini needs the tool's name with its result: set name, or answer a call made earlier".to_owned(),
            )
        })?;
    let mut texts: Vec<&str> = Vec::new();
    let mut images = Vec::new();
    if !message.content.is_empty() {
        texts.push(&message.content);
    }
    for part in &message.parts {
        match &part.part {
            Some(content_part::Part::Text(text)) if !text.is_empty() => texts.push(text),
            Some(content_part::Part::Image(image)) => images.push(image_part(image)?),
            _ => {}
        }
    }
    let field = if message.is_error { "error" } else { "content" };
    let response = json!({"functionResponse": {"name": name, "response": {(field): texts.join("\n")}}});
    Ok(std::iter::once(response).chain(images).collect())
}

// ---- Response -----------------------------------------------------------------------

/// A `generateContent` answer, or one chunk of a stream.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
    response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    text: Option<String>,
    /// A thought summary rather than answer text.
    #[serde(default)]
    thought: bool,
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    /// Why the prompt was refused (then there are no candidates).
    block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: i64,
    candidates_token_count: i64,
    cached_content_token_count: i64,
    thoughts_token_count: i64,
}

impl UsageMetadata {
    /// The contract's usage: thinking counts as completion (Gemini counts it apart), and the
    /// total is recomputed to match.
    fn usage(&self) -> Usage {
        let completion_tokens = self.candidates_token_count + self.thoughts_token_count;
        Usage {
            prompt_tokens: self.prompt_token_count,
            completion_tokens,
            total_tokens: self.prompt_token_count + completion_tokens,
            cached_prompt_tokens: self.cached_content_token_count,
            reasoning_tokens: self.thoughts_token_count,
            ..Usage::default()
        }
    }
}

/// A whole answer: the stream's translation applied to its one response.
fn completion(response: GenerateContentResponse) -> Result<Completion, ProviderError> {
    let mut state = StreamState::default();
    let mut id = String::new();
    let mut message = ChatMessage { role: MessageRole::Assistant as i32, ..ChatMessage::default() };
    let mut usage = None;
    for delta in state.on_chunk(response) {
        match delta {
            Delta::Id(response_id) => id = response_id,
            Delta::Text(text) => message.content.push_str(&text),
            Delta::ToolCall(call) => message.tool_calls.push(ToolCall {
                id: call.id.unwrap_or_default(),
                name: call.name.unwrap_or_default(),
                arguments_json: call.arguments_fragment,
            }),
            Delta::Usage(reported) => usage = Some(reported),
            Delta::Finish(finish) => return Ok(Completion { id, message, finish, usage }),
        }
    }
    Err(ProviderError::Malformed("the answer has neither a finishReason nor a blockReason".to_owned()))
}

/// What a stream has sent so far.
#[derive(Debug, Default)]
struct StreamState {
    /// Whether [`Delta::Id`] was sent (with the first chunk).
    id_sent: bool,
    /// Tool calls sent so far, which is the next call's index.
    tool_calls: u32,
    /// The latest usage (every chunk reports it so far), sent just before the finish.
    usage: Option<Usage>,
    /// The API key, to redact from in-stream error messages.
    secret: Secret,
}

impl StreamState {
    /// The deltas of one SSE `data`: a response chunk, or an error Google reports mid-stream.
    fn on_data(&mut self, data: &str) -> Result<Vec<Delta>, ProviderError> {
        let secret = Some(self.secret.expose());
        let json: Value = serde_json::from_str(data).map_err(|error| {
            ProviderError::Malformed(redact(&format!("a stream chunk is not JSON: {error}"), secret))
        })?;
        if let Some(error) = json.get("error") {
            let hints = error_hints(&json);
            let status = error.get("code").and_then(Value::as_u64).and_then(|code| u16::try_from(code).ok());
            return Err(ProviderError::Status {
                status: hints.status.or(status).unwrap_or(500),
                retry_after: hints.retry_after,
                message: redact(&error_message(&json).unwrap_or_else(|| error.to_string()), secret),
            });
        }
        let chunk: GenerateContentResponse = serde_json::from_value(json)
            .map_err(|error| ProviderError::Malformed(redact(&format!("a stream chunk: {error}"), secret)))?;
        Ok(self.on_chunk(chunk))
    }

    /// The deltas of one response chunk; [`Delta::Finish`] comes last when the chunk ends
    /// the answer.
    fn on_chunk(&mut self, chunk: GenerateContentResponse) -> Vec<Delta> {
        let mut deltas = Vec::new();
        if !self.id_sent {
            self.id_sent = true;
            let id = chunk.response_id.unwrap_or_else(|| format!("gemini-{}", uuid::Uuid::new_v4().simple()));
            deltas.push(Delta::Id(id));
        }
        if let Some(usage) = &chunk.usage_metadata {
            self.usage = Some(usage.usage());
        }
        let Some(candidate) = chunk.candidates.into_iter().next() else {
            if let Some(reason) = chunk.prompt_feedback.and_then(|feedback| feedback.block_reason) {
                self.finish(&mut deltas, Finish::new(FinishReason::ContentFilter, reason));
            }
            return deltas;
        };
        for part in candidate.content.map(|content| content.parts).unwrap_or_default() {
            if part.thought {
                continue;
            }
            if let Some(text) = part.text.filter(|text| !text.is_empty()) {
                deltas.push(Delta::Text(text));
            }
            if let Some(call) = part.function_call {
                let index = self.tool_calls;
                self.tool_calls += 1;
                let id = call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| made_up_tool_call_id(index as usize));
                deltas.push(Delta::ToolCall(ToolCallDelta {
                    index,
                    id: Some(id),
                    name: Some(call.name),
                    arguments_fragment: call.args.map_or_else(|| "{}".to_owned(), |args| args.to_string()),
                }));
            }
        }
        if let Some(raw) = candidate.finish_reason {
            let finish = finish(raw, self.tool_calls > 0);
            self.finish(&mut deltas, finish);
        }
        deltas
    }

    fn finish(&mut self, deltas: &mut Vec<Delta>, finish: Finish) {
        deltas.extend(self.usage.take().map(Delta::Usage));
        deltas.push(Delta::Finish(finish));
    }
}

/// The contract's reason for Gemini's `finishReason`: `STOP` after function calls is
/// [`FinishReason::ToolCalls`]; failed function calls are [`FinishReason::Error`]; reasons
/// without a counterpart (`LANGUAGE`, `OTHER`, new ones) stay unspecified, raw kept.
fn finish(raw: String, tool_calls: bool) -> Finish {
    let reason = match raw.as_str() {
        "STOP" if tool_calls => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" | "MISSING_THOUGHT_SIGNATURE" => {
            FinishReason::Error
        }
        _ => FinishReason::Unspecified,
    };
    Finish::new(reason, raw)
}

// ---- Errors -------------------------------------------------------------------------

/// Google's error message: `{"error": {"code", "message", "status", "details"}}`.
fn error_message(body: &Value) -> Option<String> {
    body.pointer("/error/message").and_then(Value::as_str).map(str::to_owned)
}

/// What Google's error details say: `RetryInfo.retryDelay` (`"7s"`), and a wrong key
/// (`ErrorInfo.reason` `API_KEY_INVALID`, sent with 400) stands for 401.
fn error_hints(body: &Value) -> ErrorHints {
    let mut hints = ErrorHints::default();
    let details = body.pointer("/error/details").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for detail in details {
        match detail.get("@type").and_then(Value::as_str) {
            Some("type.googleapis.com/google.rpc.RetryInfo") => {
                hints.retry_after = detail.get("retryDelay").and_then(Value::as_str).and_then(protobuf_duration);
            }
            Some("type.googleapis.com/google.rpc.ErrorInfo")
                if detail.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID") =>
            {
                hints.status = Some(401);
            }
            _ => {}
        }
    }
    hints
}

/// A protobuf `Duration` in its JSON form: seconds with an `s` (`"7s"`, `"0.250s"`).
fn protobuf_duration(text: &str) -> Option<Duration> {
    let seconds = text.strip_suffix('s')?.parse::<f64>().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::agentmesh::llm::v1::{
        ContentPart, GeminiSafetySetting, ProviderOptions, ResponseFormat, ToolChoice, ToolDefinition,
    };
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    fn message(role: MessageRole, content: &str) -> ChatMessage {
        ChatMessage { role: role as i32, content: content.to_owned(), ..ChatMessage::default() }
    }

    fn tool_result(content: &str, call_id: &str, name: Option<&str>) -> ChatMessage {
        ChatMessage {
            tool_call_id: Some(call_id.to_owned()),
            name: name.map(str::to_owned),
            ..message(MessageRole::Tool, content)
        }
    }

    fn calling(calls: &[(&str, &str, &str)]) -> ChatMessage {
        let tool_calls = calls
            .iter()
            .map(|(id, name, arguments)| ToolCall {
                id: (*id).to_owned(),
                name: (*name).to_owned(),
                arguments_json: (*arguments).to_owned(),
            })
            .collect();
        ChatMessage { tool_calls, ..message(MessageRole::Assistant, "") }
    }

    fn image(source: image_part::Source, mime_type: &str) -> ContentPart {
        ContentPart {
            part: Some(content_part::Part::Image(ImagePart {
                source: Some(source),
                mime_type: mime_type.to_owned(),
                detail: String::new(),
            })),
        }
    }

    fn asking(messages: Vec<ChatMessage>) -> ChatRequest {
        ChatRequest { messages, ..ChatRequest::default() }
    }

    fn body(request: &ChatRequest) -> Value {
        request_body(request, 100).unwrap()
    }

    fn unsupported(request: &ChatRequest) -> String {
        match request_body(request, 100) {
            Err(ProviderError::Unsupported(message)) => message,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    fn with_tool_choice(choice: tool_choice::Choice) -> ChatRequest {
        ChatRequest {
            tool_choice: Some(ToolChoice { choice: Some(choice) }),
            tools: vec![ToolDefinition { name: "get_weather".to_owned(), ..ToolDefinition::default() }],
            ..asking(vec![message(MessageRole::User, "Hi")])
        }
    }

    #[test]
    fn tool_choice_modes_and_named_tools_become_function_calling_modes() {
        let mode = |mode: tool_choice::Mode| body(&with_tool_choice(tool_choice::Choice::Mode(mode as i32)));
        assert_eq!(mode(tool_choice::Mode::None)["toolConfig"], json!({"functionCallingConfig": {"mode": "NONE"}}));
        assert_eq!(mode(tool_choice::Mode::Required)["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY"}}));
        assert!(mode(tool_choice::Mode::Unspecified).get("toolConfig").is_none());
        let named = body(&with_tool_choice(tool_choice::Choice::Tool("get_weather".to_owned())));
        assert_eq!(
            named["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        assert_eq!(named["tools"][0]["functionDeclarations"][0]["name"], "get_weather");
        assert!(named["tools"][0]["functionDeclarations"][0].get("parametersJsonSchema").is_none());
    }

    #[test]
    fn sampling_stop_sequences_json_mode_and_safety_settings_are_sent() {
        let request = ChatRequest {
            top_p: Some(0.5),
            stop: vec!["END".to_owned()],
            response_format: Some(ResponseFormat {
                r#type: response_format::Type::JsonObject as i32,
                json_schema: None,
            }),
            provider_options: Some(ProviderOptions {
                gemini_safety_settings: vec![GeminiSafetySetting {
                    category: "HARM_CATEGORY_HARASSMENT".to_owned(),
                    threshold: "BLOCK_ONLY_HIGH".to_owned(),
                }],
                ..ProviderOptions::default()
            }),
            ..asking(vec![message(MessageRole::User, "Hi")])
        };
        let sent = body(&request);
        assert_eq!(
            sent["generationConfig"],
            json!({"maxOutputTokens": 100, "topP": 0.5, "stopSequences": ["END"], "responseMimeType": "application/json"})
        );
        assert_eq!(
            sent["safetySettings"],
            json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}])
        );
        let schemaless = ChatRequest {
            response_format: Some(ResponseFormat {
                r#type: response_format::Type::JsonSchema as i32,
                json_schema: None,
            }),
            ..asking(vec![message(MessageRole::User, "Hi")])
        };
        assert!(unsupported(&schemaless).contains("schema"));
    }

    #[test]
    fn system_messages_anywhere_become_the_system_instruction() {
        let request = asking(vec![
            message(MessageRole::System, "Be terse."),
            message(MessageRole::Unspecified, "Hi"),
            message(MessageRole::Assistant, "Hello."),
            message(MessageRole::System, "Answer in French."),
        ]);
        let sent = body(&request);
        assert_eq!(sent["systemInstruction"], json!({"parts": [{"text": "Be terse."}, {"text": "Answer in French."}]}));
        assert_eq!(
            sent["contents"],
            json!([{"role": "user", "parts": [{"text": "Hi"}]}, {"role": "model", "parts": [{"text": "Hello."}]}])
        );
    }

    #[test]
    fn tool_results_are_named_by_their_call_merged_and_carry_errors_and_images() {
        let png = image(image_part::Source::Data(vec![1, 2, 3]), "image/png");
        let request = asking(vec![
            message(MessageRole::User, "Weather and a map of Paris?"),
            calling(&[("call_a", "get_weather", r#"{"city":"Paris"}"#), ("call_b", "get_map", "")]),
            tool_result("service down", "call_a", None),
            ChatMessage { parts: vec![png], ..tool_result("the map", "call_b", Some("get_map")) },
        ]);
        let mut failed = request.clone();
        failed.messages[2].is_error = true;
        let contents = body(&failed)["contents"].clone();
        assert_eq!(contents.as_array().map(Vec::len), Some(3), "the two results share one content: {contents}");
        assert_eq!(
            contents[1]["parts"],
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SKIP_THOUGHT_SIGNATURE},
                {"functionCall": {"name": "get_map", "args": {}}},
            ])
        );
        assert_eq!(
            contents[2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"error": "service down"}}},
                {"functionResponse": {"name": "get_map", "response": {"content": "the map"}}},
                {"inlineData": {"mimeType": "image/png", "data": "AQID"}},
            ]})
        );
        let orphan = asking(vec![tool_result("21°C", "call_unknown", None)]);
        assert!(unsupported(&orphan).contains("name"));
    }

    #[test]
    fn replayed_calls_need_object_arguments() {
        let request = asking(vec![calling(&[("call_a", "get_weather", "[1]")])]);
        assert!(unsupported(&request).contains("call_a"));
    }

    #[test]
    fn image_urls_go_by_reference_with_a_known_type_and_data_urls_inline() {
        let url = |url: &str, mime_type: &str| {
            let user = ChatMessage {
                parts: vec![image(image_part::Source::Url(url.to_owned()), mime_type)],
                ..message(MessageRole::User, "")
            };
            asking(vec![user])
        };
        assert_eq!(
            body(&url("https://example.com/cat.JPG?size=large", ""))["contents"][0]["parts"][0],
            json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?size=large"}})
        );
        assert_eq!(
            body(&url("https://example.com/cat", "image/webp"))["contents"][0]["parts"][0]["fileData"]["mimeType"],
            "image/webp"
        );
        assert_eq!(
            body(&url("data:image/png;base64,AQID", ""))["contents"][0]["parts"][0],
            json!({"inlineData": {"mimeType": "image/png", "data": "AQID"}})
        );
        assert!(unsupported(&url("https://example.com/cat", "")).contains("mime_type"));
        assert!(unsupported(&url("data:image/svg+xml,<svg/>", "")).contains("base64"));
        let bytes =
            ChatMessage { parts: vec![image(image_part::Source::Data(vec![1]), "")], ..message(MessageRole::User, "") };
        assert!(unsupported(&asking(vec![bytes])).contains("mime_type"));
    }

    #[test]
    fn images_only_go_on_user_and_tool_messages() {
        let png = image(image_part::Source::Data(vec![1]), "image/png");
        for role in [MessageRole::Assistant, MessageRole::System] {
            let request = asking(vec![ChatMessage { parts: vec![png.clone()], ..message(role, "look") }]);
            assert!(unsupported(&request).contains("images"), "{role:?}");
        }
    }

    fn answer(candidate: Value, usage: Value) -> GenerateContentResponse {
        serde_json::from_value(json!({"candidates": [candidate], "usageMetadata": usage, "responseId": "r1"})).unwrap()
    }

    #[test]
    fn finish_reasons_are_normalised_and_kept_raw() {
        let finish_of = |raw: &str, parts: Value| {
            let candidate = json!({"content": {"parts": parts}, "finishReason": raw});
            completion(answer(candidate, json!({}))).unwrap().finish
        };
        let text = json!([{"text": "Hi"}]);
        assert_eq!(finish_of("MAX_TOKENS", text.clone()), Finish::new(FinishReason::Length, "MAX_TOKENS"));
        assert_eq!(finish_of("SAFETY", text.clone()), Finish::new(FinishReason::ContentFilter, "SAFETY"));
        assert_eq!(finish_of("RECITATION", text.clone()).reason, FinishReason::ContentFilter);
        assert_eq!(finish_of("MALFORMED_FUNCTION_CALL", json!([])).reason, FinishReason::Error);
        assert_eq!(finish_of("OTHER", text.clone()), Finish::new(FinishReason::Unspecified, "OTHER"));
        let call = json!([{"functionCall": {"name": "f", "args": {"a": 1}}}]);
        assert_eq!(finish_of("STOP", call), Finish::new(FinishReason::ToolCalls, "STOP"));
        assert_eq!(finish_of("STOP", text), Finish::new(FinishReason::Stop, "STOP"));
    }

    #[test]
    fn a_blocked_prompt_is_a_content_filter_finish_with_no_answer() {
        let response: GenerateContentResponse = serde_json::from_value(json!({
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}
        }))
        .unwrap();
        let completion = completion(response).unwrap();
        assert_eq!(completion.finish, Finish::new(FinishReason::ContentFilter, "PROHIBITED_CONTENT"));
        assert!(completion.message.content.is_empty() && completion.message.tool_calls.is_empty());
        assert!(!completion.id.is_empty(), "a made-up id");
    }

    #[test]
    fn usage_counts_thoughts_as_completion_and_reports_the_cache() {
        let candidate = json!({"content": {"parts": [
            {"text": "Thinking about greetings", "thought": true},
            {"text": "Hi"},
            {"functionCall": {"name": "f"}},
            {"functionCall": {"id": "fc_9", "name": "g", "args": {}}}
        ]}, "finishReason": "STOP"});
        let usage = json!({
            "promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 5,
            "thoughtsTokenCount": 40, "totalTokenCount": 145
        });
        let completion = completion(answer(candidate, usage)).unwrap();
        assert_eq!(completion.id, "r1");
        assert_eq!(completion.message.content, "Hi", "thought summaries are not answer text");
        let calls = &completion.message.tool_calls;
        assert_eq!(calls[0].arguments_json, "{}");
        assert!(calls[0].id.starts_with("call_"), "a made-up id: {}", calls[0].id);
        assert_eq!(calls[1].id, "fc_9", "Gemini's own id when it sends one");
        assert_eq!(
            completion.usage,
            Some(Usage {
                prompt_tokens: 100,
                completion_tokens: 45,
                total_tokens: 145,
                cached_prompt_tokens: 60,
                reasoning_tokens: 40,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn a_unary_answer_without_a_finish_is_malformed() {
        let candidate = json!({"content": {"parts": [{"text": "Hi"}]}});
        assert!(matches!(completion(answer(candidate, json!({}))), Err(ProviderError::Malformed(_))));
    }

    #[test]
    fn stream_chunks_send_the_id_once_and_usage_just_before_the_finish() {
        let mut state = StreamState::default();
        let first = state.on_data(r#"{"candidates":[{"content":{"parts":[{"text":"He"}]}}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1},"responseId":"r1"}"#).unwrap();
        assert_eq!(first, [Delta::Id("r1".to_owned()), Delta::Text("He".to_owned())]);
        let last = state.on_data(r#"{"candidates":[{"content":{"parts":[{"text":"llo"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2},"responseId":"r1"}"#).unwrap();
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, ..Usage::default() };
        assert_eq!(
            last,
            [
                Delta::Text("llo".to_owned()),
                Delta::Usage(usage),
                Delta::Finish(Finish::new(FinishReason::Stop, "STOP"))
            ]
        );
    }

    #[test]
    fn errors_inside_a_stream_keep_their_status_and_redact_the_key() {
        let mut state = StreamState { secret: Secret::new("sk-secret-key"), ..StreamState::default() };
        let error = state
            .on_data(
                r#"{"error":{"code":503,"message":"The model is overloaded (sk-secret-key).","status":"UNAVAILABLE"}}"#,
            )
            .unwrap_err();
        assert_eq!(
            error,
            ProviderError::Status {
                status: 503,
                retry_after: None,
                message: "The model is overloaded ([redacted]).".to_owned()
            }
        );
        assert!(matches!(state.on_data("{\"candidates\": [{"), Err(ProviderError::Malformed(_))));
    }

    #[test]
    fn error_details_give_retry_delays_and_expose_wrong_keys() {
        let body = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.250s"}
        ]}});
        assert_eq!(error_hints(&body), ErrorHints { retry_after: Some(Duration::from_millis(250)), status: Some(401) });
        assert_eq!(error_message(&body).as_deref(), Some("API key not valid. Please pass a valid API key."));
        assert_eq!(error_hints(&json!({"error": {"code": 500}})), ErrorHints::default());
        assert_eq!(protobuf_duration("-1s"), None);
        assert_eq!(protobuf_duration("7"), None);
    }

    fn call<'a>(request: &'a ChatRequest, key: Option<&'a Secret>, model: &'a str) -> ProviderRequest<'a> {
        ProviderRequest { model, request, max_tokens: 10, key }
    }

    #[tokio::test]
    async fn a_missing_key_or_a_strange_model_name_fails_before_any_request() {
        let gemini = Gemini::new("http://127.0.0.1:9/");
        let request = asking(vec![message(MessageRole::User, "Hi")]);
        assert_eq!(
            gemini.chat(call(&request, None, "gemini-2.5-flash")).await,
            Err(ProviderError::MissingKey { secret: "google-api-key".to_owned() })
        );
        let key = Secret::new("AIza-test");
        assert!(matches!(
            gemini.stream(call(&request, Some(&key), "../files?x=1")).await.map(|_| ()),
            Err(ProviderError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn a_wrong_key_is_401_and_the_retry_delay_comes_from_the_body_without_a_header() {
        let server = MockServer::start().await;
        let wrong_key = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(wrong_key))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        let quota = json!({"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "41s"}]}});
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(429).set_body_json(quota)).mount(&server).await;
        let gemini = Gemini::new(server.uri());
        let request = asking(vec![message(MessageRole::User, "Hi")]);
        let key = Secret::new("AIza-test");
        let Err(ProviderError::Status { status, retry_after, .. }) =
            gemini.chat(call(&request, Some(&key), "gemini-2.5-flash")).await
        else {
            panic!("a status error");
        };
        assert_eq!((status, retry_after), (401, None));
        let Err(ProviderError::Status { status, retry_after, .. }) =
            gemini.stream(call(&request, Some(&key), "gemini-2.5-flash")).await.map(|_| ())
        else {
            panic!("a status error");
        };
        assert_eq!((status, retry_after), (429, Some(Duration::from_secs(41))));
    }
}
