//! The prologue every RPC handler of a service runs before its own logic: who is calling
//! (the principal the server's authenticator established), whether the request keeps the
//! contract's field rules, and the ids it names, each refusal already in the mesh's error
//! model (`authentication_error`, `validation_error` naming the field).
//!
//! A handler keeps only its domain steps:
//!
//! ```
//! use agentmesh_proto::agentmesh::mcp::v1 as pb;
//! use agentmesh_runtime::request::{accept, uuid_field};
//!
//! fn get_tool(request: tonic::Request<pb::GetToolRequest>) -> Result<uuid::Uuid, tonic::Status> {
//!     let (_principal, request) = accept(request)?;
//!     let tool_id = uuid_field("tool_id", &request.tool_id)?;
//!     // ... the store call and the response ...
//!     Ok(tool_id)
//! }
//!
//! // Served without an authenticator there is no principal: the call is refused.
//! let request = tonic::Request::new(pb::GetToolRequest { tool_id: uuid::Uuid::nil().to_string() });
//! assert_eq!(get_tool(request).map_err(|status| status.code()), Err(tonic::Code::Unauthenticated));
//! ```

use serde_json::Value;
use tonic::Request;
use uuid::Uuid;

use crate::auth::Principal;
use crate::context::RequestContext;
use crate::error::{ApiError, ErrorCode, FieldViolation};
use crate::validate::validate;

/// The caller, as established by the server's authenticator (the request's
/// [`RequestContext`], or the current task's when the handler was called without one).
pub fn caller<T>(request: &Request<T>) -> Result<Principal, ApiError> {
    request
        .extensions()
        .get::<RequestContext>()
        .and_then(|context| context.principal.clone())
        .or_else(|| RequestContext::current().and_then(|context| context.principal))
        .ok_or_else(|| ApiError::new(ErrorCode::Authentication, "Authentication required"))
}

/// The caller and the request's message, once it keeps the contract's field rules: the
/// whole prologue of a handler that needs nothing else of the request (metadata).
pub fn accept<T: prost::Message + prost::Name>(request: Request<T>) -> Result<(Principal, T), ApiError> {
    let principal = caller(&request)?;
    let message = request.into_inner();
    validate(&message)?;
    Ok((principal, message))
}

/// One invalid field as a validation error.
pub fn invalid(field: &str, message: &str, value: Value) -> ApiError {
    ApiError::validation(vec![FieldViolation::new(field, message, value)])
}

/// The UUID in `field` (checked by the contract's `format: "uuid"` rule already; a value
/// that still does not parse is refused the same way).
pub fn uuid_field(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| invalid(field, "must be a UUID", Value::from(raw)))
}

/// Every violation a handler collected beyond the contract's rules, as one validation
/// error; `Ok` when there are none.
pub fn refuse_violations(violations: Vec<FieldViolation>) -> Result<(), ApiError> {
    if violations.is_empty() { Ok(()) } else { Err(ApiError::validation(violations)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Tier;

    fn alice() -> Principal {
        Principal { user_id: "alice".into(), tenant_id: "acme".into(), tier: Tier::Default, scopes: vec![] }
    }

    #[tokio::test]
    async fn the_caller_comes_from_the_request_or_the_current_task() {
        let mut request = Request::new(());
        assert_eq!(caller(&request).map_err(|e| e.code), Err(ErrorCode::Authentication));
        request.extensions_mut().insert(RequestContext { principal: Some(alice()), ..RequestContext::new() });
        assert_eq!(caller(&request).map(|p| p.user_id), Ok("alice".to_owned()));

        let context = RequestContext { principal: Some(alice()), ..RequestContext::new() };
        let seen = context.scope(async { caller(&Request::new(())).map(|p| p.user_id) }).await;
        assert_eq!(seen, Ok("alice".to_owned()));
    }

    #[test]
    fn ids_and_collected_violations_are_validation_errors() {
        let error = uuid_field("session_id", "nope").err().map(|e| e.field_violations);
        assert_eq!(error, Some(vec![FieldViolation::new("session_id", "must be a UUID", Value::from("nope"))]));
        assert_eq!(uuid_field("id", &Uuid::nil().to_string()), Ok(Uuid::nil()));
        assert_eq!(refuse_violations(vec![]), Ok(()));
        let refused = refuse_violations(vec![FieldViolation::new("title", "too long", Value::Null)]);
        assert_eq!(refused.map_err(|e| e.code), Err(ErrorCode::Validation));
    }
}
