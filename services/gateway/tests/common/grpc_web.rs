//! A hand-rolled grpc-web client, as a browser's library speaks it: a POST whose body is
//! length-prefixed frames (a flag byte, a big-endian length, the protobuf message), binary
//! or base64 (`-text`), answered with the trailers in a last frame flagged `0x80`.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message;
use reqwest::header::HeaderMap;

use super::Mesh;

/// `application/grpc-web+proto` or `application/grpc-web-text` (base64).
#[derive(Debug, Clone, Copy)]
pub enum Wire {
    Binary,
    Text,
}

impl Wire {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Binary => "application/grpc-web+proto",
            Self::Text => "application/grpc-web-text",
        }
    }
}

/// One grpc-web answer, unframed.
#[derive(Debug)]
pub struct Reply {
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
    /// The `0x80` frame's `name: value` lines; `None` for a trailers-only answer.
    pub trailers: Option<HashMap<String, String>>,
}

impl Reply {
    /// The call's status: from the trailers frame, or the headers of a trailers-only answer.
    pub fn grpc_status(&self) -> Option<&str> {
        match &self.trailers {
            Some(trailers) => trailers.get("grpc-status").map(String::as_str),
            None => self.headers.get("grpc-status").map(|v| v.to_str().unwrap()),
        }
    }

    /// The only message of the answer.
    pub fn message<M: Message + Default>(&self) -> M {
        assert_eq!(self.messages.len(), 1, "one message expected: {self:?}");
        M::decode(self.messages[0].clone()).unwrap()
    }
}

/// `message` as one grpc-web data frame.
pub fn frame(message: &impl Message) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.encoded_len()).unwrap());
    message.encode(&mut frame).unwrap();
    frame.freeze()
}

/// Splits a grpc-web body into its messages and its trailers frame.
pub fn unframe(mut body: Bytes) -> (Vec<Bytes>, Option<HashMap<String, String>>) {
    let (mut messages, mut trailers) = (Vec::new(), None);
    while body.has_remaining() {
        let flag = body.get_u8();
        let length = body.get_u32() as usize;
        let payload = body.split_to(length);
        if flag & 0x80 == 0 {
            messages.push(payload);
        } else {
            assert!(trailers.is_none() && !body.has_remaining(), "the trailers frame comes last, once");
            let text = String::from_utf8(payload.to_vec()).unwrap();
            let pairs = text.split("\r\n").filter(|line| !line.is_empty()).map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_owned(), value.trim().to_owned())
            });
            trailers = Some(pairs.collect());
        }
    }
    (messages, trailers)
}

/// A grpc-web call of `path` with `message`, ready for more headers.
pub fn request(mesh: &Mesh, wire: Wire, path: &str, message: &impl Message) -> reqwest::RequestBuilder {
    let framed = frame(message);
    let body = match wire {
        Wire::Binary => framed.to_vec(),
        Wire::Text => STANDARD.encode(framed).into_bytes(),
    };
    mesh.http
        .post(mesh.url(path))
        .header("content-type", wire.content_type())
        .header("accept", wire.content_type())
        .header("x-grpc-web", "1")
        .body(body)
}

/// Sends a grpc-web call and unframes the answer, checking what every answer shares.
pub async fn send(wire: Wire, request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200, "grpc-web answers 200 and puts the outcome in grpc-status");
    let headers = response.headers().clone();
    let content_type = headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with(wire.content_type()), "{content_type}");
    let bytes = response.bytes().await.unwrap();
    let bytes = match wire {
        Wire::Binary => bytes,
        // Each frame is base64-encoded on its own (padded), so decode quantum by quantum.
        Wire::Text => bytes.chunks(4).flat_map(|quantum| STANDARD.decode(quantum).unwrap()).collect(),
    };
    let (messages, trailers) = unframe(bytes);
    Reply { headers, messages, trailers }
}
