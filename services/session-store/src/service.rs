//! `SessionService` over gRPC: the seed's sessions and messages API.
//!
//! Each RPC: takes the caller's principal (every record is scoped to it), validates the
//! request against the contract's field rules plus the configured size limits, turns it
//! into a store call, and maps the result back. Store errors become the mesh's error
//! model: not found (also for other owners' records), validation, or a retryable
//! `external_service_error` when the backend is down. Creates honour `idempotency-key`.

use std::sync::Arc;

use agentmesh_proto::agentmesh::common::v1::SortOrder;
use agentmesh_proto::agentmesh::session::v1 as pb;
use agentmesh_proto::agentmesh::session::v1::session_service_server::SessionService as SessionRpc;
use agentmesh_runtime::error::FieldViolation;
use agentmesh_runtime::paging::{PageRequest, query_fingerprint};
use agentmesh_runtime::request::{accept, caller, invalid, refuse_violations, uuid_field};
use agentmesh_runtime::validate::validate;
use agentmesh_runtime::{ApiError, ErrorCode};
use prost::Message as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::convert::{message_to_proto, role_from_proto, session_to_proto, struct_to_object, tool_call_from_proto};
use crate::idempotency::{self, Claim, IdempotencyStore};
use crate::message_rules::{check_tool_calls, shape_violations};
use crate::settings::SessionLimits;
use crate::store::{
    Cursor, Direction, FirstUse, JsonObject, MessagePatch, MessageQuery, MessageRecord, MessageShape, NewMessage,
    NewSession, Owner, Role, SessionPatch, SessionQuery, SessionSort, SessionStore, StoreError,
};

/// Metadata key of the idempotency key (the gateway maps the `Idempotency-Key` header).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Reads and checks of one message update before giving up on concurrent changes.
const UPDATE_ATTEMPTS: usize = 3;

const DEFAULT_SESSION_LIMIT: u32 = 20;
const DEFAULT_MESSAGE_LIMIT: u32 = 50;

/// The service: a store, its idempotency keys and the input limits.
pub struct SessionService {
    store: Arc<dyn SessionStore>,
    idempotency: Arc<dyn IdempotencyStore>,
    limits: SessionLimits,
    /// `FEATURE_ENABLE_BULK_OPERATIONS`: whether bulk create and delete are served.
    bulk_operations: bool,
}

impl SessionService {
    /// A service over `store`, with bulk operations enabled.
    pub fn new(store: Arc<dyn SessionStore>, idempotency: Arc<dyn IdempotencyStore>, limits: SessionLimits) -> Self {
        Self { store, idempotency, limits, bulk_operations: true }
    }

    /// Serves or refuses bulk creation and deletion (`FEATURE_ENABLE_BULK_OPERATIONS`).
    #[must_use]
    pub fn with_bulk_operations(mut self, enabled: bool) -> Self {
        self.bulk_operations = enabled;
        self
    }

    /// Refuses a bulk operation when they are switched off.
    fn check_bulk_allowed(&self) -> Result<(), Status> {
        if self.bulk_operations {
            return Ok(());
        }
        let error = ApiError::new(ErrorCode::NotImplemented, "Bulk operations are disabled on this deployment")
            .with_detail("feature", "bulk_operations");
        Err(error.into())
    }

    /// Runs a create once per idempotency key (see [`crate::idempotency`]).
    async fn once<Req, Resp, F>(&self, request: &Request<Req>, owner: &Owner, create: F) -> Result<Resp, Status>
    where
        Req: prost::Message + prost::Name,
        Resp: prost::Message + Default,
        F: Future<Output = Result<Resp, Status>>,
    {
        match idempotency_key(request)? {
            Some((key, fingerprint)) => self.claimed(owner, key, &fingerprint, create).await,
            None => create.await,
        }
    }

    /// Runs a create under a claim of its idempotency key: the stored response if the key
    /// was completed with the same request, a conflict if it is in use, else the create,
    /// whose response the key then keeps.
    async fn claimed<Resp, F>(
        &self,
        owner: &Owner,
        key: &str,
        fingerprint: &[u8; 32],
        create: F,
    ) -> Result<Resp, Status>
    where
        Resp: prost::Message + Default,
        F: Future<Output = Result<Resp, Status>>,
    {
        match self.idempotency.claim(owner, key, fingerprint, idempotency::LEASE).await.map_err(store_error)? {
            Claim::Replay(bytes) => Resp::decode(bytes.as_slice()).map_err(|error| {
                tracing::error!(%error, "stored idempotent response does not decode");
                Status::from(ApiError::internal())
            }),
            Claim::Mismatch => {
                Err(ApiError::new(ErrorCode::Conflict, "Idempotency-Key was already used with a different request")
                    .into())
            }
            Claim::InProgress => {
                Err(ApiError::new(ErrorCode::Conflict, "A request with this Idempotency-Key is in progress")
                    .with_retry_after(std::time::Duration::from_secs(1))
                    .into())
            }
            Claim::Acquired => match create.await {
                Ok(response) => {
                    let encoded = response.encode_to_vec();
                    let stored = self.idempotency.complete(owner, key, &encoded, idempotency::RETENTION).await;
                    if let Err(error) = stored {
                        tracing::warn!(%error, "idempotent response not stored; a retry will create again");
                    }
                    Ok(response)
                }
                Err(status) => {
                    if let Err(error) = self.idempotency.release(owner, key).await {
                        tracing::warn!(%error, "idempotency claim not released; it expires with its lease");
                    }
                    Err(status)
                }
            },
        }
    }

    /// A checked message from a create request.
    fn new_message(&self, body: &pb::CreateMessageRequest) -> Result<NewMessage, Status> {
        let parent_message_id =
            body.parent_message_id.as_deref().map(|raw| uuid_field("parent_message_id", raw)).transpose()?;
        let metadata = body.metadata.as_ref().map(struct_to_object).unwrap_or_default();
        let message = NewMessage {
            role: role_from_proto(body.role).unwrap_or(Role::User),
            content: body.content.clone(),
            metadata,
            tool_calls: body.tool_calls.iter().map(tool_call_from_proto).collect(),
            tool_call_id: body.tool_call_id.clone().filter(|id| !id.is_empty()),
            parent_message_id,
        };
        let mut violations = Vec::new();
        self.check_content(&message.content, &mut violations);
        self.check_metadata("metadata", &message.metadata, &mut violations);
        check_tool_calls(&self.limits, &message.tool_calls, &mut violations);
        shape_violations(
            MessageShape {
                role: message.role,
                has_content: !message.content.is_empty(),
                has_tool_calls: !message.tool_calls.is_empty(),
                has_tool_call_id: message.tool_call_id.is_some(),
            },
            &mut violations,
        );
        refuse_violations(violations)?;
        Ok(message)
    }

    fn check_metadata(&self, field: &str, metadata: &JsonObject, out: &mut Vec<FieldViolation>) {
        let size = serde_json::to_vec(metadata).map_or(usize::MAX, |bytes| bytes.len());
        if size > self.limits.max_metadata_bytes {
            let message = format!("must be at most {} bytes of JSON", self.limits.max_metadata_bytes);
            out.push(FieldViolation::new(field, &message, Value::from(size)));
        }
    }

    fn check_title(&self, field: &str, title: Option<&String>, out: &mut Vec<FieldViolation>) {
        if let Some(title) = title
            && title.chars().count() > self.limits.max_title_length
        {
            let message = format!("must be at most {} characters long", self.limits.max_title_length);
            out.push(FieldViolation::new(field, &message, Value::Null));
        }
    }

    /// A session to create; `user_id` defaults to the caller, as the contract says.
    fn new_session(
        &self,
        owner: &Owner,
        prefix: &str,
        request: pb::CreateSessionRequest,
        out: &mut Vec<FieldViolation>,
    ) -> NewSession {
        let metadata = request.metadata.as_ref().map(struct_to_object).unwrap_or_default();
        self.check_title(&format!("{prefix}title"), request.title.as_ref(), out);
        self.check_metadata(&format!("{prefix}metadata"), &metadata, out);
        let user_id = request.user_id.or_else(|| Some(owner.user_id.clone()));
        NewSession { user_id, title: request.title, metadata }
    }

    fn check_content(&self, content: &str, out: &mut Vec<FieldViolation>) {
        if content.chars().count() > self.limits.max_content_length {
            let message = format!("must be at most {} characters long", self.limits.max_content_length);
            out.push(FieldViolation::new("content", &message, Value::Null));
        }
    }
}

/// The request's idempotency key, checked, with the request's fingerprint; `None` when
/// it has none.
fn idempotency_key<Req>(request: &Request<Req>) -> Result<Option<(&str, [u8; 32])>, Status>
where
    Req: prost::Message + prost::Name,
{
    let Some(key) = request.metadata().get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= idempotency::MAX_KEY_LENGTH)
        .ok_or_else(|| invalid("idempotency_key", "must be 1 to 255 visible ASCII characters", Value::Null))?;
    let mut hasher = Sha256::new();
    hasher.update(Req::full_name().as_bytes());
    hasher.update([0]);
    hasher.update(request.get_ref().encode_to_vec());
    Ok(Some((key, hasher.finalize().into())))
}

/// The caller, as established by the server's authenticator, as the owner of records.
fn owner<T>(request: &Request<T>) -> Result<Owner, Status> {
    Ok(Owner::from(caller(request)?))
}

fn store_error(error: StoreError) -> Status {
    match error {
        StoreError::NotFound => ApiError::not_found("Resource").into(),
        StoreError::InvalidParent => {
            invalid("parent_message_id", "must be an earlier message of the same session", Value::Null).into()
        }
        StoreError::Conflict => ApiError::new(ErrorCode::Conflict, "The message changed concurrently; retry").into(),
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "session storage unavailable");
            ApiError::external_service("session-storage", "database", true).into()
        }
        StoreError::Internal(source) => {
            tracing::error!(error = %source, "session storage failure");
            ApiError::internal().into()
        }
    }
}

/// Like [`store_error`], naming the missing resource.
fn not_found_as(resource: &'static str) -> impl Fn(StoreError) -> Status {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(resource).into(),
        other => store_error(other),
    }
}

/// The shape of a message with `shape` once `patch` is applied.
fn patched_shape(shape: MessageShape, patch: &MessagePatch) -> MessageShape {
    MessageShape {
        role: patch.role.unwrap_or(shape.role),
        has_content: patch.content.as_ref().map_or(shape.has_content, |content| !content.is_empty()),
        has_tool_calls: patch.tool_calls.as_ref().map_or(shape.has_tool_calls, |calls| !calls.is_empty()),
        has_tool_call_id: patch.tool_call_id.as_ref().map_or(shape.has_tool_call_id, Option::is_some),
    }
}

#[tonic::async_trait]
impl SessionRpc for SessionService {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let owner = owner(&request)?;
        validate(request.get_ref())?;
        let create = async {
            let mut violations = Vec::new();
            let new = self.new_session(&owner, "", request.get_ref().clone(), &mut violations);
            refuse_violations(violations)?;
            let created = self.store.create_sessions(&owner, vec![new]).await.map_err(store_error)?;
            Ok(pb::CreateSessionResponse { session: created.first().map(session_to_proto) })
        };
        Ok(Response::new(self.once(&request, &owner, create).await?))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let (principal, request) = accept(request)?;
        let owner = Owner::from(principal);
        let sort = match pb::SessionSortField::try_from(request.sort_by) {
            Ok(pb::SessionSortField::CreatedAt) => SessionSort::CreatedAt,
            Ok(pb::SessionSortField::UpdatedAt) => SessionSort::UpdatedAt,
            _ => SessionSort::LastActivity,
        };
        let direction = match SortOrder::try_from(request.sort_order) {
            Ok(SortOrder::Asc) => Direction::Asc,
            _ => Direction::Desc,
        };
        let user_filter = request.user_id.clone().unwrap_or_default();
        let fingerprint = query_fingerprint(&[
            "sessions",
            &format!("{sort:?}"),
            &format!("{direction:?}"),
            &format!("{}:{user_filter}", request.user_id.is_some()),
        ]);
        let PageRequest { limit, offset, after } = PageRequest::parse(
            request.limit,
            request.offset,
            &request.page_token,
            &fingerprint,
            DEFAULT_SESSION_LIMIT,
        )?;
        let query = SessionQuery { user_id: request.user_id, sort, direction, limit, offset, after };
        let page = self.store.list_sessions(&owner, &query).await.map_err(store_error)?;
        let next_page_token = page.next_token(
            |last| {
                let key = match sort {
                    SessionSort::CreatedAt => last.created_at,
                    SessionSort::UpdatedAt => last.updated_at,
                    SessionSort::LastActivity => last.last_activity,
                };
                Cursor { key, id: last.id }
            },
            &fingerprint,
        );
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.items.iter().map(session_to_proto).collect(),
            next_page_token,
            total_count: page.total_count(),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let (principal, request) = accept(request)?;
        let owner = Owner::from(principal);
        let session_id = uuid_field("session_id", &request.session_id)?;
        let session = self.store.get_session(&owner, session_id).await.map_err(not_found_as("Session"))?;
        Ok(Response::new(pb::GetSessionResponse { session: Some(session_to_proto(&session)) }))
    }

    async fn update_session(
        &self,
        request: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::UpdateSessionResponse>, Status> {
        let (principal, request) = accept(request)?;
        let owner = Owner::from(principal);
        let session_id = uuid_field("session_id", &request.session_id)?;
        let metadata = request.metadata.as_ref().map(struct_to_object);
        let mut violations = Vec::new();
        self.check_title("title", request.title.as_ref(), &mut violations);
        if let Some(metadata) = &metadata {
            self.check_metadata("metadata", metadata, &mut violations);
        }
        refuse_violations(violations)?;
        let patch = SessionPatch { user_id: request.user_id, title: request.title, metadata };
        let session = self.store.update_session(&owner, session_id, patch).await.map_err(not_found_as("Session"))?;
        Ok(Response::new(pb::UpdateSessionResponse { session: Some(session_to_proto(&session)) }))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let (principal, request) = accept(request)?;
        let owner = Owner::from(principal);
        let session_id = uuid_field("session_id", &request.session_id)?;
        let deleted = self.store.delete_sessions(&owner, &[session_id]).await.map_err(store_error)?;
        if deleted.is_empty() {
            return Err(ApiError::not_found("Session").into());
        }
        Ok(Response::new(pb::DeleteSessionResponse {}))
    }

    async fn bulk_create_sessions(
        &self,
        request: Request<pb::BulkCreateSessionsRequest>,
    ) -> Result<Response<pb::BulkCreateSessionsResponse>, Status> {
        let owner = owner(&request)?;
        self.check_bulk_allowed()?;
        validate(request.get_ref())?;
        let create = async {
            let mut violations = Vec::new();
            let new: Vec<NewSession> = request
                .get_ref()
                .sessions
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    self.new_session(&owner, &format!("sessions[{index}]."), item.clone(), &mut violations)
                })
                .collect();
            refuse_violations(violations)?;
            let created = self.store.create_sessions(&owner, new).await.map_err(store_error)?;
            Ok(pb::BulkCreateSessionsResponse { sessions: created.iter().map(session_to_proto).collect() })
        };
        Ok(Response::new(self.once(&request, &owner, create).await?))
    }

    async fn bulk_delete_sessions(
        &self,
        request: Request<pb::BulkDeleteSessionsRequest>,
    ) -> Result<Response<pb::BulkDeleteSessionsResponse>, Status> {
        let owner = owner(&request)?;
        self.check_bulk_allowed()?;
        validate(request.get_ref())?;
        let ids = request
            .get_ref()
            .session_ids
            .iter()
            .enumerate()
            .map(|(index, raw)| uuid_field(&format!("session_ids[{index}]"), raw))
            .collect::<Result<Vec<_>, _>>()?;
        self.store.delete_sessions(&owner, &ids).await.map_err(store_error)?;
        Ok(Response::new(pb::BulkDeleteSessionsResponse {}))
    }

    /// An append under an idempotency key is first tried as the key's first use, which
    /// the store may do in the append's own write; otherwise (or when the key was used
    /// before) it takes the claim path like every other create.
    async fn create_message(
        &self,
        request: Request<pb::CreateMessageRequest>,
    ) -> Result<Response<pb::CreateMessageResponse>, Status> {
        let owner = owner(&request)?;
        validate(request.get_ref())?;
        let key = idempotency_key(&request)?;
        let body = request.get_ref();
        let session_id = uuid_field("session_id", &body.session_id)?;
        let message = self.new_message(body)?;
        let created = |record: &MessageRecord| pb::CreateMessageResponse { message: Some(message_to_proto(record)) };
        let Some((key, fingerprint)) = key else {
            let record =
                self.store.create_message(&owner, session_id, message).await.map_err(not_found_as("Session"))?;
            return Ok(Response::new(created(&record)));
        };
        let first_use = FirstUse {
            key,
            fingerprint,
            retention: idempotency::RETENTION,
            response: &|record| created(record).encode_to_vec(),
        };
        match self.store.create_message_first_use(&owner, session_id, message.clone(), first_use).await {
            Ok(Some(record)) => return Ok(Response::new(created(&record))),
            // The key has a row, or the store cannot combine: the claim path decides.
            Ok(None) => {}
            // Refused, but a stored response of this key still answers a repeat (the
            // session may be gone since): the claim path decides, and refuses again
            // when the key is new.
            Err(StoreError::NotFound | StoreError::InvalidParent) => {}
            Err(error) => return Err(not_found_as("Session")(error)),
        }
        let create = async {
            let record =
                self.store.create_message(&owner, session_id, message).await.map_err(not_found_as("Session"))?;
            Ok(created(&record))
        };
        Ok(Response::new(self.claimed(&owner, key, &fingerprint, create).await?))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let (principal, request) = accept(request)?;
        let owner = Owner::from(principal);
        let session_id = uuid_field("session_id", &request.session_id)?;
        let role = request.role.and_then(role_from_proto);
        let search = request.search.filter(|s| !s.is_empty());
        let direction = match SortOrder::try_from(request.sort_order) {
            Ok(SortOrder::Desc) => Direction::Desc,
            _ => Direction::Asc,
        };
        let fingerprint = query_fingerprint(&[
            "messages",
            &session_id.to_string(),
            role.map_or("", Role::as_str),
            &format!("{}:{}", search.is_some(), search.as_deref().unwrap_or_default()),
            &format!("{direction:?}"),
        ]);
        let PageRequest { limit, offset, after } = PageRequest::parse(
            request.limit,
            request.offset,
            &request.page_token,
            &fingerprint,
            DEFAULT_MESSAGE_LIMIT,
        )?;
        let query = MessageQuery { role, search, limit, offset, after, direction };
        let page = self.store.list_messages(&owner, session_id, &query).await.map_err(not_found_as("Session"))?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page.items.iter().map(message_to_proto).collect(),
            next_page_token: page.next_token(|last| Cursor { key: last.created_at, id: last.id }, &fingerprint),
            total_count: page.total_count(),
        }))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let (principal, request) = accept(request)?;
        let owner = Owner::from(principal);
        let message_id = uuid_field("message_id", &request.message_id)?;
        let message = self.store.get_message(&owner, message_id).await.map_err(not_found_as("Message"))?;
        Ok(Response::new(pb::GetMessageResponse { message: Some(message_to_proto(&message)) }))
    }

    async fn update_message(
        &self,
        request: Request<pb::UpdateMessageRequest>,
    ) -> Result<Response<pb::UpdateMessageResponse>, Status> {
        let (principal, request) = accept(request)?;
        let owner = Owner::from(principal);
        let message_id = uuid_field("message_id", &request.message_id)?;
        let parent_message_id = match request.parent_message_id.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(raw) => Some(Some(uuid_field("parent_message_id", raw)?)),
        };
        let tool_calls: Vec<_> = request.tool_calls.iter().map(tool_call_from_proto).collect();
        let mut patch = MessagePatch {
            content: request.content,
            role: role_from_proto(request.role),
            metadata: request.metadata.as_ref().map(struct_to_object),
            tool_calls: if tool_calls.is_empty() { None } else { Some(tool_calls) },
            tool_call_id: request.tool_call_id.map(|id| Some(id).filter(|id| !id.is_empty())),
            parent_message_id,
            expect: None,
        };
        let mut violations = Vec::new();
        if let Some(content) = &patch.content {
            self.check_content(content, &mut violations);
        }
        if let Some(metadata) = &patch.metadata {
            self.check_metadata("metadata", metadata, &mut violations);
        }
        if let Some(calls) = &patch.tool_calls {
            check_tool_calls(&self.limits, calls, &mut violations);
        }
        refuse_violations(violations)?;
        // The shape rules apply to the message the update produces: read it, check the
        // result, and let the store apply the patch only if the shape read is still the
        // stored one (a concurrent update in between makes us read and check again).
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.store.get_message(&owner, message_id).await.map_err(not_found_as("Message"))?;
            let mut violations = Vec::new();
            shape_violations(patched_shape(current.shape(), &patch), &mut violations);
            refuse_violations(violations)?;
            patch.expect = Some(current.shape());
            match self.store.update_message(&owner, message_id, patch.clone()).await {
                Ok(message) => {
                    return Ok(Response::new(pb::UpdateMessageResponse { message: Some(message_to_proto(&message)) }));
                }
                Err(StoreError::Conflict) => continue,
                Err(error) => return Err(not_found_as("Message")(error)),
            }
        }
        Err(ApiError::new(ErrorCode::Conflict, "The message is being changed concurrently; retry")
            .with_retry_after(std::time::Duration::from_secs(1))
            .into())
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let (principal, request) = accept(request)?;
        let owner = Owner::from(principal);
        let message_id = uuid_field("message_id", &request.message_id)?;
        self.store.delete_message(&owner, message_id).await.map_err(not_found_as("Message"))?;
        Ok(Response::new(pb::DeleteMessageResponse {}))
    }
}
