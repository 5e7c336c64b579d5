//! Unit tests of the anthropic translation the conformance suite does not reach.
use agentmesh_proto::agentmesh::common::v1::{ContentPart, content_part};
use agentmesh_proto::agentmesh::llm::v1::{JsonSchemaFormat, ProviderOptions, ResponseFormat, ToolChoice};
use agentmesh_runtime::config::Secret;
use serde_json::json;

use super::*;

fn user(text: &str) -> ChatMessage {
    ChatMessage { role: MessageRole::User as i32, content: text.to_owned(), ..Default::default() }
}

fn tool_message(id: &str, text: &str, is_error: bool) -> ChatMessage {
    ChatMessage {
        role: MessageRole::Tool as i32,
        content: text.to_owned(),
        tool_call_id: Some(id.to_owned()),
        is_error,
        ..Default::default()
    }
}

fn weather_tool() -> ToolDefinition {
    ToolDefinition { name: "get_weather".to_owned(), description: "Weather".to_owned(), parameters: None }
}

/// The JSON body `request` translates to.
fn body(request: &ChatRequest, stream: bool) -> Result<Value, ProviderError> {
    let call = ProviderRequest { model: "claude-sonnet-4-5", request, max_tokens: 100, key: None };
    let body = MessagesRequest::new(call, stream)?;
    serde_json::to_value(&body).map_err(|error| ProviderError::Malformed(error.to_string()))
}

fn choice(choice: tool_choice::Choice) -> Option<ToolChoice> {
    Some(ToolChoice { choice: Some(choice) })
}

fn mode(mode: tool_choice::Mode) -> Option<ToolChoice> {
    choice(tool_choice::Choice::Mode(mode as i32))
}

#[test]
fn sampling_stop_top_k_and_system_are_translated() -> Result<(), ProviderError> {
    let request = ChatRequest {
        messages: vec![
            ChatMessage { role: MessageRole::System as i32, content: "Be terse.".to_owned(), ..Default::default() },
            user("Hi"),
            ChatMessage { role: MessageRole::System as i32, content: "Be kind.".to_owned(), ..Default::default() },
        ],
        temperature: Some(0.5),
        top_p: Some(0.9),
        stop: vec!["END".to_owned()],
        provider_options: Some(ProviderOptions { anthropic_top_k: Some(40), ..Default::default() }),
        ..Default::default()
    };
    let body = body(&request, true)?;
    assert_eq!(body["system"], "Be terse.\n\nBe kind.");
    assert_eq!(body["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]));
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["top_k"], 40);
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["stream"], true);
    assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
    Ok(())
}

#[test]
fn tool_choice_variants() -> Result<(), ProviderError> {
    let cases = [
        (mode(tool_choice::Mode::Auto), None, json!({"type": "auto"})),
        (mode(tool_choice::Mode::Required), None, json!({"type": "any"})),
        (mode(tool_choice::Mode::None), None, json!({"type": "none"})),
        (
            choice(tool_choice::Choice::Tool("get_weather".to_owned())),
            None,
            json!({"type": "tool", "name": "get_weather"}),
        ),
        (mode(tool_choice::Mode::Required), Some(false), json!({"type": "any", "disable_parallel_tool_use": true})),
        (None, Some(false), json!({"type": "auto", "disable_parallel_tool_use": true})),
        (None, Some(true), Value::Null),
    ];
    for (tool_choice, parallel_tool_calls, expected) in cases {
        let request = ChatRequest {
            messages: vec![user("Hi")],
            tools: vec![weather_tool()],
            tool_choice,
            parallel_tool_calls,
            ..Default::default()
        };
        let body = body(&request, false)?;
        assert_eq!(body["tool_choice"], expected, "{:?} {parallel_tool_calls:?}", request.tool_choice);
        assert_eq!(
            body["tools"],
            json!([{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}])
        );
    }
    Ok(())
}

#[test]
fn consecutive_tool_results_merge_into_one_user_message_with_errors_and_images() -> Result<(), ProviderError> {
    let mut screenshot = tool_message("call_2", "", false);
    screenshot.parts = vec![ContentPart {
        part: Some(content_part::Part::Image(ImagePart {
            source: Some(image_part::Source::Data(vec![1, 2, 3])),
            mime_type: "image/png".to_owned(),
            detail: String::new(),
        })),
    }];
    let request = ChatRequest {
        messages: vec![
            user("Look"),
            ChatMessage {
                role: MessageRole::Assistant as i32,
                content: "Let me check.".to_owned(),
                tool_calls: vec![
                    ToolCall {
                        id: "call_1".to_owned(),
                        name: "fetch".to_owned(),
                        arguments_json: r#"{"a":1}"#.to_owned(),
                    },
                    ToolCall { id: "call_2".to_owned(), name: "shot".to_owned(), arguments_json: String::new() },
                ],
                ..Default::default()
            },
            tool_message("call_1", "boom", true),
            screenshot,
            user("And?"),
        ],
        ..Default::default()
    };
    let body = body(&request, false)?;
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Look"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "fetch", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "shot", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "boom"}], "is_error": true},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AQID"}}
                ]},
                {"type": "text", "text": "And?"}
            ]}
        ])
    );
    Ok(())
}

#[test]
fn tool_results_come_first_in_a_merged_user_message() -> Result<(), ProviderError> {
    let request = ChatRequest {
        messages: vec![
            ChatMessage { role: MessageRole::System as i32, ..Default::default() },
            user("Note"),
            tool_message("call_1", "done", false),
        ],
        ..Default::default()
    };
    let body = body(&request, false)?;
    assert!(body.get("system").is_none(), "empty system texts are left out");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "done"}]},
            {"type": "text", "text": "Note"}
        ]}])
    );
    Ok(())
}

#[test]
fn image_urls_and_data_urls() -> Result<(), ProviderError> {
    let image = |url: &str| ContentPart {
        part: Some(content_part::Part::Image(ImagePart {
            source: Some(image_part::Source::Url(url.to_owned())),
            ..Default::default()
        })),
    };
    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: MessageRole::User as i32,
            parts: vec![image("https://example.com/a.png"), image("data:image/jpeg;base64,/9j/")],
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = body(&request, false)?;
    assert_eq!(
        body["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}
        ])
    );
    Ok(())
}

#[test]
fn unsupported_requests_are_refused() {
    let image = ContentPart {
        part: Some(content_part::Part::Image(ImagePart {
            source: Some(image_part::Source::Url("https://example.com/a.png".to_owned())),
            ..Default::default()
        })),
    };
    let assistant_image = ChatMessage { role: MessageRole::Assistant as i32, parts: vec![image], ..Default::default() };
    let bad_arguments = ChatMessage {
        role: MessageRole::Assistant as i32,
        tool_calls: vec![ToolCall { id: "c".to_owned(), name: "t".to_owned(), arguments_json: "[1]".to_owned() }],
        ..Default::default()
    };
    let anonymous_result =
        ChatMessage { role: MessageRole::Tool as i32, content: "x".to_owned(), ..Default::default() };
    let bytes_without_type = ChatMessage {
        role: MessageRole::User as i32,
        parts: vec![ContentPart {
            part: Some(content_part::Part::Image(ImagePart {
                source: Some(image_part::Source::Data(vec![1])),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    for message in [assistant_image, bad_arguments, anonymous_result, bytes_without_type] {
        let request = ChatRequest { messages: vec![user("Hi"), message], ..Default::default() };
        assert!(matches!(body(&request, false), Err(ProviderError::Unsupported(_))), "{:?}", request.messages[1]);
    }
}

fn json_schema(name: &str) -> Option<ResponseFormat> {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    Some(ResponseFormat {
        r#type: response_format::Type::JsonSchema as i32,
        json_schema: Some(JsonSchemaFormat {
            name: name.to_owned(),
            description: String::new(),
            schema: schema.as_object().map(agentmesh_proto::json::object_to_struct),
            strict: true,
        }),
    })
}

#[test]
fn json_formats_use_a_forced_tool_or_an_instruction() -> Result<(), ProviderError> {
    let request = ChatRequest { messages: vec![user("Hi")], response_format: json_schema(""), ..Default::default() };
    let sent = body(&request, false)?;
    assert_eq!(sent["tools"][0]["name"], DEFAULT_ANSWER_TOOL);
    assert_eq!(sent["tools"][0]["input_schema"]["properties"]["city"]["type"], "string");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": DEFAULT_ANSWER_TOOL, "disable_parallel_tool_use": true})
    );

    let with_tools =
        ChatRequest { tools: vec![weather_tool()], response_format: json_schema("weather"), ..request.clone() };
    let sent = body(&with_tools, false)?;
    assert_eq!(sent["tools"][1]["name"], "weather");
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));

    let clash = ChatRequest { response_format: json_schema("get_weather"), ..with_tools };
    assert!(matches!(body(&clash, false), Err(ProviderError::Unsupported(_))));

    let json_object = ChatRequest {
        response_format: Some(ResponseFormat { r#type: response_format::Type::JsonObject as i32, json_schema: None }),
        ..request
    };
    assert_eq!(body(&json_object, false)?["system"], JSON_OBJECT_INSTRUCTION);
    Ok(())
}

fn response(body: Value, answer_tool: Option<&str>) -> Completion {
    let response: MessagesResponse = serde_json::from_value(body).unwrap_or_else(|error| panic!("{error}"));
    response.into_completion(answer_tool)
}

#[test]
fn finish_reasons_are_mapped_and_kept_raw() {
    for (raw, reason) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("pause_turn", FinishReason::Stop),
        ("max_tokens", FinishReason::Length),
        ("model_context_window_exceeded", FinishReason::Length),
        ("tool_use", FinishReason::ToolCalls),
        ("refusal", FinishReason::Refusal),
    ] {
        let completion = response(
            json!({"id": "msg_1", "stop_reason": raw, "usage": {"input_tokens": 1, "output_tokens": 1}, "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "x"},
                {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}
            ]}),
            None,
        );
        assert_eq!(completion.finish, Finish::new(reason, raw));
        assert_eq!(completion.message.content, "x");
    }
}

#[test]
fn usage_includes_cache_reads_and_writes_in_prompt_tokens() {
    let completion = response(
        json!({"id": "msg_1", "content": [], "stop_reason": "end_turn", "usage": {
            "input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20
        }}),
        None,
    );
    let usage = completion.usage.unwrap_or_default();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (130, 5, 135));
    assert_eq!((usage.cached_prompt_tokens, usage.cache_creation_tokens), (100, 20));
    let nulls = response(
        json!({"id": "m", "content": [], "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": null}}),
        None,
    );
    assert_eq!(nulls.usage.map(|usage| usage.total_tokens), Some(7));
}

#[test]
fn the_answer_tool_becomes_text_and_other_calls_stay_calls() {
    let completion = response(
        json!({"id": "msg_1", "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}, "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
        ]}),
        Some("weather"),
    );
    assert_eq!(completion.message.content, r#"{"city":"Paris"}"#);
    assert!(completion.message.tool_calls.is_empty());
    assert_eq!(completion.finish, Finish::new(FinishReason::Stop, "tool_use"));

    let completion = response(
        json!({"id": "msg_1", "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}, "content": [
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Paris"}}
        ]}),
        Some("weather"),
    );
    assert_eq!(completion.message.tool_calls[0].id, "toolu_2");
    assert_eq!(completion.finish.reason, FinishReason::ToolCalls);
}

#[test]
fn error_bodies_and_in_stream_error_types() {
    let body = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    assert_eq!(error_message(&body).as_deref(), Some("overloaded_error: Overloaded"));
    assert_eq!(error_message(&json!({"message": "x"})), None);
    for (kind, status) in
        [("overloaded_error", 529), ("rate_limit_error", 429), ("api_error", 500), ("authentication_error", 401)]
    {
        assert_eq!(error_status(kind), status);
    }
}

/// The deltas of `events` (data lines only).
async fn stream_of(events: &[Value], answer_tool: Option<&str>) -> Vec<Result<Delta, ProviderError>> {
    let events: Vec<Result<Event, ProviderError>> =
        events.iter().map(|data| Ok(Event { data: data.to_string(), ..Default::default() })).collect();
    deltas(futures::stream::iter(events), answer_tool.map(str::to_owned), "sk-ant-secret-key-123".to_owned())
        .collect()
        .await
}

#[tokio::test]
async fn in_stream_errors_end_the_stream_with_their_status() {
    let deltas = stream_of(
        &[
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
            json!({"type": "ping"}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            json!({"type": "message_stop"}),
        ],
        None,
    )
    .await;
    assert_eq!(deltas.len(), 2, "{deltas:?}");
    assert!(matches!(&deltas[1], Err(ProviderError::Status { status: 529, .. })), "{deltas:?}");
}

#[tokio::test]
async fn streamed_answer_tool_input_becomes_text_and_usage_merges() {
    let deltas = stream_of(
        &[
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 5, "cache_read_input_tokens": 50, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ],
        Some("weather"),
    )
    .await;
    let deltas: Vec<Delta> = deltas.into_iter().map(|delta| delta.unwrap_or_else(|error| panic!("{error}"))).collect();
    let usage = Usage {
        prompt_tokens: 55,
        completion_tokens: 9,
        total_tokens: 64,
        cached_prompt_tokens: 50,
        ..Default::default()
    };
    assert_eq!(
        deltas,
        [
            Delta::Id("msg_1".to_owned()),
            Delta::Text("{\"city\":".to_owned()),
            Delta::Text("\"Paris\"}".to_owned()),
            Delta::ToolCall(ToolCallDelta {
                index: 0,
                id: Some("toolu_2".to_owned()),
                name: Some("now".to_owned()),
                arguments_fragment: String::new()
            }),
            Delta::ToolCall(argument_fragment(0, "{}".to_owned())),
            Delta::Usage(usage),
            Delta::Finish(Finish::new(FinishReason::ToolCalls, "tool_use")),
        ]
    );
}

#[tokio::test]
async fn a_missing_key_is_refused_before_any_request() {
    let provider = Anthropic::new("http://127.0.0.1:9/");
    let request = ChatRequest { messages: vec![user("Hi")], ..Default::default() };
    let empty = Secret::new("");
    for key in [None, Some(&empty)] {
        let call = ProviderRequest { model: "claude-sonnet-4-5", request: &request, max_tokens: 10, key };
        assert_eq!(provider.chat(call).await, Err(ProviderError::MissingKey { secret: KEY_SECRET.to_owned() }));
    }
    assert_eq!(provider.key_secret(), Some(KEY_SECRET));
    assert_eq!(provider.name(), "anthropic");
}
