use serde_json::json;

use super::*;

fn descriptor(name: &str) -> MessageDescriptor {
    agentmesh_proto::descriptor_pool().get_message_by_name(name).unwrap()
}

fn parse(name: &str, body: Json) -> Result<DynamicMessage, Vec<FieldViolation>> {
    let mut message = DynamicMessage::new(descriptor(name));
    let mut out = Violations::default();
    merge_object(&mut message, &body, "", &mut out);
    if out.0.is_empty() { Ok(message) } else { Err(out.0) }
}

fn fields(violations: Vec<FieldViolation>) -> Vec<String> {
    violations.into_iter().map(|v| v.field).collect()
}

#[test]
fn a_message_renders_in_the_seed_shape() {
    let body = json!({
        "session_id": "0193a3f0-0000-7000-8000-000000000001",
        "content": "hello",
        "role": "assistant",
        "metadata": {"lang": "en", "n": 3, "nested": {"ok": [true, null, 1.5]}},
        "tool_calls": [{"id": "call_1", "name": "search", "arguments": "{\"q\": \"x\"}"}]
    });
    let message = parse("agentmesh.session.v1.CreateMessageRequest", body.clone()).unwrap();
    let rendered = message_to_json(&message);
    assert_eq!(rendered["role"], "assistant");
    assert_eq!(rendered["metadata"], body["metadata"], "Struct is plain JSON, integers stay integers");
    assert_eq!(rendered["tool_calls"], body["tool_calls"]);
    assert_eq!(rendered["parent_message_id"], Json::Null, "unset optional fields are null");
    assert_eq!(rendered["content"], "hello");
}

#[test]
fn scalars_enums_and_timestamps_render_like_the_seed() {
    let session = agentmesh_proto::agentmesh::session::v1::Session {
        id: "s1".into(),
        message_count: 12,
        created_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123_456_000 }),
        ..Default::default()
    };
    let dynamic = DynamicMessage::decode(
        descriptor("agentmesh.session.v1.Session"),
        prost::Message::encode_to_vec(&session).as_slice(),
    )
    .unwrap();
    let rendered = message_to_json(&dynamic);
    assert_eq!(rendered["message_count"], 12, "int64 is a JSON number");
    assert_eq!(rendered["created_at"], "2023-11-14T22:13:20.123456Z");
    assert_eq!(rendered["title"], Json::Null);
    assert!(rendered.as_object().unwrap().contains_key("user_id"), "unset optional fields are present as null");
    assert_eq!(rendered["metadata"], Json::Null);
    let role = descriptor("agentmesh.session.v1.Message").get_field_by_name("role").unwrap();
    let Kind::Enum(role) = role.kind() else { panic!() };
    assert_eq!(enum_to_json(&role, 4), "tool");
    assert_eq!(enum_to_json(&role, 0), Json::Null);
    assert_eq!(enum_names(&role), ["user", "assistant", "system", "tool"]);
}

#[test]
fn unknown_fields_wrong_types_and_bad_enums_are_all_reported() {
    let violations = parse(
        "agentmesh.session.v1.CreateMessageRequest",
        json!({"content": 5, "role": "robot", "extra": true, "metadata": [], "tool_calls": {}}),
    )
    .unwrap_err();
    let mut names = fields(violations.clone());
    names.sort();
    assert_eq!(names, ["content", "extra", "metadata", "role", "tool_calls"]);
    let role = violations.iter().find(|v| v.field == "role").unwrap();
    assert_eq!(role.message, "must be one of: user, assistant, system, tool");
    assert_eq!(role.value, "robot");
}

#[test]
fn null_is_unset_for_optional_fields_and_refused_for_plain_ones() {
    let ok = parse("agentmesh.session.v1.CreateSessionRequest", json!({"title": null, "metadata": null})).unwrap();
    assert!(!ok.has_field_by_name("title"));
    let refused = parse("agentmesh.session.v1.CreateMessageRequest", json!({"content": null})).unwrap_err();
    assert_eq!(fields(refused), ["content"]);
}

#[test]
fn numbers_are_range_checked_and_nested_items_named() {
    let violations =
        parse("agentmesh.session.v1.ListSessionsRequest", json!({"limit": 4_294_967_296_i64, "offset": 1.5}))
            .unwrap_err();
    assert_eq!(fields(violations), ["limit", "offset"]);
    let bulk = parse(
        "agentmesh.session.v1.BulkCreateSessionsRequest",
        json!({"sessions": [{"title": "ok"}, {"title": 7}, {"nope": 1}]}),
    )
    .unwrap_err();
    assert_eq!(fields(bulk), ["sessions[1].title", "sessions[2].nope"]);
    assert_eq!(fields(parse("agentmesh.session.v1.CreateSessionRequest", json!([1])).unwrap_err()), ["body"]);
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!({ "a": deep });
    }
    let violations =
        parse("agentmesh.session.v1.CreateSessionRequest", json!({"metadata": deep})).map(|_| ()).unwrap_err();
    assert_eq!(violations[0].message, "is nested too deeply");
}

#[test]
fn query_text_is_parsed_by_field_kind() {
    let descriptor = descriptor("agentmesh.session.v1.ListMessagesRequest");
    let mut message = DynamicMessage::new(descriptor.clone());
    let mut out = Violations::default();
    let field = |name: &str| descriptor.get_field_by_name(name).unwrap();
    set_from_text(&mut message, &field("limit"), "20", &mut out);
    set_from_text(&mut message, &field("role"), "tool", &mut out);
    set_from_text(&mut message, &field("search"), "100%", &mut out);
    assert!(out.0.is_empty(), "{:?}", out.0);
    let rendered = message_to_json(&message);
    assert_eq!((rendered["limit"].clone(), rendered["role"].clone()), (json!(20), json!("tool")));
    set_from_text(&mut message, &field("offset"), "ten", &mut out);
    set_from_text(&mut message, &field("role"), "Tool", &mut out);
    assert_eq!(fields(out.0), ["offset", "role"]);
}

#[test]
fn json_round_trips_through_protobuf() {
    let body = json!({
        "user_id": "u1",
        "title": "t",
        "metadata": {"a": [1, "x", {"b": false}], "c": null}
    });
    let message = parse("agentmesh.session.v1.CreateSessionRequest", body.clone()).unwrap();
    let bytes = prost::Message::encode_to_vec(&message);
    let decoded =
        DynamicMessage::decode(descriptor("agentmesh.session.v1.CreateSessionRequest"), bytes.as_slice()).unwrap();
    assert_eq!(message_to_json(&decoded), body);
}
