//! Feeds arbitrary input to the transcoder the way a REST request reaches it: a route
//! chosen by the first byte, path variables, a query string and a JSON body. Nothing may
//! panic, and whatever converts must survive protobuf encoding and rendering unchanged.

#![no_main]

use agentmesh_gateway::json::message_to_json;
use agentmesh_gateway::rest::request_message;
use agentmesh_gateway::routes::RouteTable;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use prost_reflect::DynamicMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let table = RouteTable::from_pool(agentmesh_proto::descriptor_pool()).expect("the contract's routes are valid");
    let routes = table.routes();
    let route = &routes[usize::from(selector) % routes.len()];

    // Layout of `rest`: path-variable text, 0xFF, query text, 0xFF, JSON body.
    let mut parts = rest.splitn(3, |b| *b == 0xFF);
    let variable = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok());

    let variables: Vec<(String, String)> = route
        .segments
        .iter()
        .filter_map(|segment| match segment {
            agentmesh_gateway::routes::Segment::Variable(field) => Some((field.clone(), variable.clone())),
            agentmesh_gateway::routes::Segment::Literal(_) => None,
        })
        .collect();
    let body = if route.body.is_empty() { None } else { body };
    if let Ok(message) = request_message(route, &variables, Some(&query), body, Some(&variable)) {
        let rendered = message_to_json(&message);
        let decoded = DynamicMessage::decode(route.rpc.input(), message.encode_to_vec().as_slice())
            .expect("an encoded request decodes");
        assert_eq!(message_to_json(&decoded), rendered, "protobuf round trip changed the JSON");
    }

    // Routing never panics on arbitrary paths either.
    let _ = table.find(&http::Method::GET, &variable);
});
