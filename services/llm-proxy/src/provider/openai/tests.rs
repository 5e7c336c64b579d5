//! Unit tests of the openai translation the conformance suite does not reach.
use agentmesh_proto::agentmesh::common::v1::{AudioPart, ContentPart, ResourceLink, content_part};
use agentmesh_proto::agentmesh::llm::v1::{
    JsonSchemaFormat, ProviderOptions, ResponseFormat, ToolChoice, ToolDefinition,
};

use super::*;

fn user(text: &str) -> ChatMessage {
    ChatMessage { role: MessageRole::User as i32, content: text.to_owned(), ..Default::default() }
}

fn png(data: &[u8]) -> ContentPart {
    ContentPart {
        part: Some(content_part::Part::Image(ImagePart {
            source: Some(image_part::Source::Data(data.to_vec())),
            mime_type: "image/png".to_owned(),
            detail: String::new(),
        })),
    }
}

fn body_of(provider: &ChatCompletions, request: &ChatRequest, streamed: bool) -> Value {
    let key = Secret::new("sk-unit");
    let call = ProviderRequest { model: "m", request, max_tokens: 100, key: Some(&key) };
    provider.body(&call, streamed).unwrap()
}

fn openai_body(request: &ChatRequest) -> Value {
    body_of(&ChatCompletions::openai(OPENAI_BASE_URL), request, false)
}

fn weather_tool() -> ToolDefinition {
    ToolDefinition { name: "get_weather".to_owned(), ..Default::default() }
}

#[test]
fn tool_choice_modes_and_named_tool() {
    let cases = [
        (tool_choice::Choice::Mode(tool_choice::Mode::Auto as i32), json!("auto")),
        (tool_choice::Choice::Mode(tool_choice::Mode::None as i32), json!("none")),
        (tool_choice::Choice::Mode(tool_choice::Mode::Required as i32), json!("required")),
        (
            tool_choice::Choice::Tool("get_weather".to_owned()),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ),
    ];
    for (choice, expected) in cases {
        let request = ChatRequest {
            messages: vec![user("hi")],
            tools: vec![weather_tool()],
            tool_choice: Some(ToolChoice { choice: Some(choice) }),
            parallel_tool_calls: Some(false),
            ..Default::default()
        };
        let body = openai_body(&request);
        assert_eq!(body["tool_choice"], expected);
        assert_eq!(body["parallel_tool_calls"], json!(false));
        assert_eq!(body["tools"][0], json!({"type": "function", "function": {"name": "get_weather"}}));
    }
}

#[test]
fn tool_knobs_are_left_out_without_tools() {
    let request = ChatRequest {
        messages: vec![user("hi")],
        tool_choice: Some(ToolChoice { choice: Some(tool_choice::Choice::Mode(tool_choice::Mode::None as i32)) }),
        parallel_tool_calls: Some(true),
        ..Default::default()
    };
    let body = openai_body(&request);
    assert!(
        body.get("tool_choice").is_none() && body.get("parallel_tool_calls").is_none() && body.get("tools").is_none()
    );
}

#[test]
fn sampling_stop_user_and_json_object() {
    let request = ChatRequest {
        messages: vec![user("hi")],
        top_p: Some(0.5),
        stop: vec!["END".to_owned(), "\n\n".to_owned()],
        provider_options: Some(ProviderOptions { openai_user: Some("user-42".to_owned()), ..Default::default() }),
        response_format: Some(ResponseFormat { r#type: response_format::Type::JsonObject as i32, json_schema: None }),
        ..Default::default()
    };
    let body = openai_body(&request);
    assert_eq!(body["top_p"], json!(0.5));
    assert_eq!(body["stop"], json!(["END", "\n\n"]));
    assert_eq!(body["user"], json!("user-42"));
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(body["max_completion_tokens"], json!(100));
    assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());
}

#[test]
fn json_schema_carries_description_and_needs_a_schema() {
    let format = |json_schema| ResponseFormat { r#type: response_format::Type::JsonSchema as i32, json_schema };
    let described = JsonSchemaFormat {
        name: "weather".to_owned(),
        description: "The weather".to_owned(),
        schema: None,
        strict: false,
    };
    let body = openai_body(&ChatRequest {
        messages: vec![user("hi")],
        response_format: Some(format(Some(described))),
        ..Default::default()
    });
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "weather", "description": "The weather", "schema": {}, "strict": false}})
    );
    let request = ChatRequest { messages: vec![user("hi")], response_format: Some(format(None)), ..Default::default() };
    let call = ProviderRequest { model: "m", request: &request, max_tokens: 1, key: None };
    assert!(matches!(ChatCompletions::openai(OPENAI_BASE_URL).body(&call, false), Err(ProviderError::Unsupported(_))));
}

#[test]
fn failed_tool_results_say_so() {
    let failed = ChatMessage {
        role: MessageRole::Tool as i32,
        content: "city not found".to_owned(),
        tool_call_id: Some("call_1".to_owned()),
        is_error: true,
        ..Default::default()
    };
    let already = ChatMessage { content: "ERROR 404: city not found".to_owned(), ..failed.clone() };
    let translated = messages(&[failed, already]).unwrap();
    assert_eq!(translated[0], json!({"role": "tool", "tool_call_id": "call_1", "content": "Error: city not found"}));
    assert_eq!(translated[1]["content"], json!("ERROR 404: city not found"));
}

#[test]
fn tool_images_follow_the_run_of_tool_messages_in_a_user_message() {
    let tool = |id: &str, parts: Vec<ContentPart>| ChatMessage {
        role: MessageRole::Tool as i32,
        tool_call_id: Some(id.to_owned()),
        name: Some("screenshot".to_owned()),
        parts,
        ..Default::default()
    };
    let conversation = [tool("call_a", vec![png(b"a")]), tool("call_b", Vec::new()), user("next")];
    let translated = messages(&conversation).unwrap();
    assert_eq!(translated.len(), 4, "{translated:#?}");
    assert_eq!(translated[0]["role"], json!("tool"));
    assert_eq!(translated[0]["content"], json!("The result is the images in the next message."));
    assert_eq!(translated[1]["role"], json!("tool"));
    assert_eq!(translated[2]["role"], json!("user"));
    let parts = translated[2]["content"].as_array().unwrap();
    assert_eq!(parts[0]["text"], json!("The result of tool call call_a (screenshot) includes these attachments:"));
    assert_eq!(parts[1]["image_url"]["url"], json!("data:image/png;base64,YQ=="));
    assert_eq!(translated[3], json!({"role": "user", "content": "next"}));
}

#[test]
fn images_where_the_format_has_none_are_unsupported() {
    for role in [MessageRole::Assistant, MessageRole::System] {
        let message = ChatMessage { role: role as i32, parts: vec![png(b"a")], ..Default::default() };
        assert!(matches!(messages(&[message]), Err(ProviderError::Unsupported(_))), "{role:?}");
    }
    let no_mime = ContentPart {
        part: Some(content_part::Part::Image(ImagePart {
            source: Some(image_part::Source::Data(vec![1])),
            ..Default::default()
        })),
    };
    let message = ChatMessage { role: MessageRole::User as i32, parts: vec![no_mime], ..Default::default() };
    assert!(matches!(messages(&[message]), Err(ProviderError::Unsupported(_))));
}

#[test]
fn image_urls_keep_their_detail_and_text_parts_join_the_content() {
    let image = ContentPart {
        part: Some(content_part::Part::Image(ImagePart {
            source: Some(image_part::Source::Url("https://example.com/a.png".to_owned())),
            mime_type: String::new(),
            detail: "low".to_owned(),
        })),
    };
    let text = ContentPart { part: Some(content_part::Part::Text("second".to_owned())) };
    let message = ChatMessage { parts: vec![text.clone(), image], ..user("first") };
    let system = ChatMessage { role: MessageRole::System as i32, parts: vec![text], ..user("first") };
    let translated = messages(&[message, system]).unwrap();
    assert_eq!(
        translated[0]["content"],
        json!([
            {"type": "text", "text": "first"},
            {"type": "text", "text": "second"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
        ])
    );
    assert_eq!(translated[1], json!({"role": "system", "content": "first\nsecond"}));
}

#[test]
fn azure_has_no_model_in_the_body_and_its_version_can_be_overridden() {
    let azure = ChatCompletions::azure("https://res.openai.azure.com/", "2024-10-21");
    let mut request = ChatRequest { messages: vec![user("hi")], ..Default::default() };
    let body = body_of(&azure, &request, true);
    assert!(body.get("model").is_none());
    assert_eq!(body["max_completion_tokens"], json!(100));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    let call = ProviderRequest { model: "gpt 4o", request: &request, max_tokens: 1, key: None };
    assert_eq!(
        azure.url(&call).unwrap().as_str(),
        "https://res.openai.azure.com/openai/deployments/gpt%204o/chat/completions?api-version=2024-10-21"
    );
    assert!(
        matches!(azure.post(&call, &body), Err(ProviderError::MissingKey { secret }) if secret == "azure-openai-api-key")
    );

    request.provider_options =
        Some(ProviderOptions { azure_api_version: Some("2024-06-01".to_owned()), ..Default::default() });
    let call = ProviderRequest { model: "gpt-4o", request: &request, max_tokens: 1, key: None };
    assert!(azure.url(&call).unwrap().as_str().ends_with("?api-version=2024-06-01"));
    let body = body_of(&azure, &request, true);
    assert_eq!(body["max_tokens"], json!(100), "older versions know only max_tokens");
    assert!(body.get("stream_options").is_none() && body.get("max_completion_tokens").is_none());
}

#[test]
fn compatible_servers_get_max_tokens_and_need_no_key() {
    let local = ChatCompletions::compatible("local", "http://127.0.0.1:8080/v1/");
    assert_eq!((local.name(), local.key_secret()), ("local", Some("local-api-key")));
    let request = ChatRequest { messages: vec![user("hi")], ..Default::default() };
    let body = body_of(&local, &request, false);
    assert_eq!(body["max_tokens"], json!(100));
    assert_eq!(body["model"], json!("m"));
    let call = ProviderRequest { model: "m", request: &request, max_tokens: 1, key: None };
    let post = local.post(&call, &body).unwrap().build().unwrap();
    assert_eq!(post.url().as_str(), "http://127.0.0.1:8080/v1/chat/completions");
    assert!(post.headers().get("authorization").is_none());
    let openai = ChatCompletions::openai(OPENAI_BASE_URL);
    assert!(matches!(openai.post(&call, &body), Err(ProviderError::MissingKey { .. })));
}

#[test]
fn error_bodies_of_every_flavour() {
    let openai =
        json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}});
    assert_eq!(error_message(&openai).as_deref(), Some("Incorrect API key"));
    let vllm = json!({"object": "error", "message": "model not found", "code": 404});
    assert_eq!(error_message(&vllm).as_deref(), Some("model not found"));
    assert_eq!(error_message(&json!({"error": "model not loaded"})).as_deref(), Some("model not loaded"));
    assert_eq!(error_message(&json!({"detail": "?"})), None);
}

fn answer(body: Value) -> Completion {
    completion(serde_json::from_value(body).unwrap()).unwrap()
}

#[test]
fn finish_reasons_and_refusals() {
    let with = |message: Value, finish: &str| {
        answer(json!({"id": "c", "choices": [{"index": 0, "message": message, "finish_reason": finish}]}))
    };
    let text = json!({"role": "assistant", "content": "…", "refusal": null, "tool_calls": null});
    assert_eq!(with(text.clone(), "length").finish, Finish::new(FinishReason::Length, "length"));
    assert_eq!(with(text.clone(), "content_filter").finish.reason, FinishReason::ContentFilter);
    assert_eq!(with(text, "eos").finish, Finish::new(FinishReason::Stop, "eos"));
    let refused = with(json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}), "stop");
    assert_eq!(refused.finish, Finish::new(FinishReason::Refusal, "stop"));
    assert_eq!(refused.message.content, "I can't help with that.");
    let legacy = with(json!({"content": null, "function_call": {"name": "f", "arguments": "{}"}}), "function_call");
    assert_eq!(legacy.finish.reason, FinishReason::ToolCalls);
    assert!(legacy.message.tool_calls[0].id.starts_with("call_"));
    let ollama = with(json!({"content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}), "stop");
    assert_eq!(ollama.finish.reason, FinishReason::ToolCalls, "a stop after tool calls means tool calls");
}

#[test]
fn usage_with_cache_and_reasoning_tokens_or_timings() {
    let completion = answer(json!({
        "id": "c",
        "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0}
        }
    }));
    let expected = Usage {
        prompt_tokens: 2006,
        completion_tokens: 300,
        total_tokens: 2306,
        cached_prompt_tokens: 1920,
        reasoning_tokens: 256,
        ..Default::default()
    };
    assert_eq!(completion.usage, Some(expected));
    let llama = answer(json!({
        "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "timings": {"cache_n": 10, "prompt_n": 5, "predicted_n": 7, "predicted_ms": 12.5}
    }));
    assert!(llama.id.starts_with("chatcmpl-"), "an id is made up when none is sent");
    let usage = llama.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_prompt_tokens),
        (15, 7, 22, 10)
    );
}

fn decode(events: &[&str]) -> (Vec<Delta>, Result<(), ProviderError>) {
    decode_with(StreamDecoder::default(), events)
}

fn decode_with(mut decoder: StreamDecoder, events: &[&str]) -> (Vec<Delta>, Result<(), ProviderError>) {
    let mut out = VecDeque::new();
    for data in events {
        let event = Event { event: "message".to_owned(), data: (*data).to_owned(), ..Default::default() };
        if let Err(error) = decoder.event(&event, &mut out) {
            return (out.into(), Err(error));
        }
    }
    assert!(decoder.done, "the stream ended with [DONE]");
    (out.into(), Ok(()))
}

#[test]
fn llama_cpp_usage_with_the_finish_comes_before_it() {
    let (deltas, result) = decode(&[
        r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"id":"chatcmpl-x","object":"chat.completion.chunk"}"#,
        r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hi"}}],"id":"chatcmpl-x","object":"chat.completion.chunk"}"#,
        r#"{"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"id":"chatcmpl-x","usage":{"completion_tokens":1,"prompt_tokens":3,"total_tokens":4},"timings":{"prompt_n":3,"predicted_n":1}}"#,
        "[DONE]",
    ]);
    result.unwrap();
    let usage = Usage { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4, ..Default::default() };
    assert_eq!(
        deltas,
        [
            Delta::Id("chatcmpl-x".to_owned()),
            Delta::Text("Hi".to_owned()),
            Delta::Usage(usage),
            Delta::Finish(Finish::new(FinishReason::Stop, "stop"))
        ]
    );
}

#[test]
fn azure_prompt_filter_chunks_and_streamed_refusals() {
    let (deltas, result) = decode(&[
        r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#,
        r#"{"choices":[{"content_filter_results":{},"finish_reason":null,"index":0}],"id":"chatcmpl-y"}"#,
        r#"{"choices":[{"delta":{"refusal":"I can't"},"finish_reason":null,"index":0}],"id":"chatcmpl-y"}"#,
        r#"{"choices":[{"delta":{},"finish_reason":"stop","index":0}],"id":"chatcmpl-y"}"#,
        "[DONE]",
    ]);
    result.unwrap();
    assert_eq!(deltas[0], Delta::Id("chatcmpl-y".to_owned()));
    assert_eq!(deltas[1], Delta::Text("I can't".to_owned()));
    assert_eq!(deltas[2], Delta::Finish(Finish::new(FinishReason::Refusal, "stop")));
}

#[test]
fn whole_tool_calls_without_index_get_their_own_indexes() {
    let (deltas, result) = decode(&[
        r#"{"id":"chatcmpl-z","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_a","function":{"name":"f","arguments":"{}"}},{"id":"call_b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
        r#"{"id":"chatcmpl-z","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        "[DONE]",
    ]);
    result.unwrap();
    let indexes: Vec<(u32, Option<String>)> = deltas
        .iter()
        .filter_map(|d| match d {
            Delta::ToolCall(call) => Some((call.index, call.id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(indexes, [(0, Some("call_a".to_owned())), (1, Some("call_b".to_owned()))]);
    assert_eq!(deltas.last(), Some(&Delta::Finish(Finish::new(FinishReason::ToolCalls, "stop"))));
}

#[test]
fn stream_failures() {
    let (_, result) = decode(&[r#"{"id":"c","choices":[{"delta":{"content":"a"}}]}"#, "[DONE]"]);
    assert!(matches!(result, Err(ProviderError::Malformed(_))), "[DONE] without a finish reason");
    let (_, result) = decode(&[r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#]);
    assert_eq!(
        result,
        Err(ProviderError::Status { status: 503, retry_after: None, message: "Loading model".to_owned() })
    );
    let (_, result) = decode(&[r#"{"error":{"message":"The server had an error","type":"server_error"}}"#]);
    assert!(matches!(result, Err(ProviderError::Status { status: 500, .. })));
}

#[tokio::test]
async fn a_stream_ends_after_the_finish_or_with_truncated() {
    let event = |data: &str| Ok(Event { event: "message".to_owned(), data: data.to_owned(), ..Default::default() });
    let finished = [
        event(r#"{"id":"c","choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}"#),
        event("[DONE]"),
        event(r#"{"id":"c","choices":[{"delta":{"content":"after"}}]}"#),
    ];
    let received: Vec<_> = deltas(futures::stream::iter(finished), StreamDecoder::default()).collect().await;
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(matches!(received[2], Ok(Delta::Finish(_))));
    let cut = [event(r#"{"id":"c","choices":[{"delta":{"content":"a"}}]}"#)];
    let received: Vec<_> = deltas(futures::stream::iter(cut), StreamDecoder::default()).collect().await;
    assert_eq!(received.last(), Some(&Err(ProviderError::Truncated)));
}

/// llama-cpp-python 0.3.36's server streaming SmolLM2 (ids shortened): it ignores
/// `stream_options` and sends no usage, not even `timings`.
const LLAMA_CPP_PYTHON_STREAM: [&str; 5] = [
    r#"{"id": "chatcmpl-87be", "model": "smollm2-135m-instruct", "created": 1796543909, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": null, "finish_reason": null}]}"#,
    r#"{"id": "chatcmpl-87be", "model": "smollm2-135m-instruct", "created": 1796543909, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "1"}, "logprobs": null, "finish_reason": null}]}"#,
    r#"{"id": "chatcmpl-87be", "model": "smollm2-135m-instruct", "created": 1796543909, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "."}, "logprobs": null, "finish_reason": null}]}"#,
    r#"{"id": "chatcmpl-87be", "model": "smollm2-135m-instruct", "created": 1796543909, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"}]}"#,
    "[DONE]",
];

#[test]
fn a_compatible_stream_without_usage_gets_an_estimate_before_the_finish() {
    let local = ChatCompletions::compatible("llama", "http://127.0.0.1:8080/v1");
    let request = ChatRequest { messages: vec![user("Count from one to ten in words.")], ..Default::default() };
    let decoder = local.decoder(&request);
    assert_eq!(decoder.estimated_prompt, Some(10), "(31 characters + 8) / 4, rounded up");
    let (deltas, result) = decode_with(decoder, &LLAMA_CPP_PYTHON_STREAM);
    result.unwrap();
    let usage = Usage { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12, ..Default::default() };
    assert_eq!(
        deltas,
        [
            Delta::Id("chatcmpl-87be".to_owned()),
            Delta::Text("1".to_owned()),
            Delta::Text(".".to_owned()),
            Delta::Usage(usage),
            Delta::Finish(Finish::new(FinishReason::Length, "length"))
        ]
    );
}

#[test]
fn reported_usage_is_never_estimated_and_openai_streams_are_never_estimated() {
    let request = ChatRequest { messages: vec![user("hi")], ..Default::default() };
    let local = ChatCompletions::compatible("llama", "http://127.0.0.1:8080/v1");
    let (deltas, result) = decode_with(
        local.decoder(&request),
        &[
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hi"}}],"id":"chatcmpl-x"}"#,
            r#"{"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"id":"chatcmpl-x","usage":{"completion_tokens":1,"prompt_tokens":3,"total_tokens":4}}"#,
            "[DONE]",
        ],
    );
    result.unwrap();
    let usages: Vec<&Delta> = deltas.iter().filter(|d| matches!(d, Delta::Usage(_))).collect();
    let reported = Usage { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4, ..Default::default() };
    assert_eq!(usages, [&Delta::Usage(reported)]);
    for provider in
        [ChatCompletions::openai(OPENAI_BASE_URL), ChatCompletions::azure("https://r.example", "2024-10-21")]
    {
        let (deltas, result) = decode_with(provider.decoder(&request), &LLAMA_CPP_PYTHON_STREAM);
        result.unwrap();
        assert!(!deltas.iter().any(|d| matches!(d, Delta::Usage(_))), "{deltas:?}");
    }
}

#[test]
fn audio_goes_as_input_audio_and_resource_links_as_text() {
    let mut message = user("Transcribe this, then read the notes.");
    message.parts = vec![
        ContentPart {
            part: Some(content_part::Part::Audio(AudioPart { data: vec![1, 2, 3], mime_type: "audio/wav".into() })),
        },
        ContentPart {
            part: Some(content_part::Part::ResourceLink(ResourceLink {
                uri: "file:///notes.md".into(),
                name: "notes".into(),
                ..Default::default()
            })),
        },
    ];
    let body = openai_body(&ChatRequest { messages: vec![message], ..Default::default() });
    let parts = &body["messages"][0]["content"];
    assert_eq!(parts[1], json!({"type": "input_audio", "input_audio": {"data": "AQID", "format": "wav"}}));
    assert_eq!(parts[2], json!({"type": "text", "text": "Resource notes: file:///notes.md"}));

    let mut ogg = user("");
    ogg.parts = vec![ContentPart {
        part: Some(content_part::Part::Audio(AudioPart { data: vec![1], mime_type: "audio/ogg".into() })),
    }];
    let key = Secret::new("sk-unit");
    let request = ChatRequest { messages: vec![ogg], ..Default::default() };
    let call = ProviderRequest { model: "m", request: &request, max_tokens: 10, key: Some(&key) };
    let provider = ChatCompletions::openai(OPENAI_BASE_URL);
    assert!(matches!(provider.body(&call, false), Err(ProviderError::Unsupported(m)) if m.contains("audio/ogg")));
}
