//! The broker's open MCP sessions: one [`Connection`] per server (per server and user when
//! the server's credentials are per user), opened on first use and reused by every call.
//!
//! A session is built from the stored server: secret names are resolved through a
//! [`SecretReader`] into a [`ServerSpec`] here, so the connection layer only sees values.
//! A session that has ended (its process exited, its transport failed) is opened again on
//! the next use; a call that fails in a way that [`ConnectionError::closes_connection`]
//! drops it. Deleting or disabling a server, changing it, and shutting down close its
//! sessions, which ends stdio children. Each server also has its own
//! [`Resilience`] (breaker, retries, bulkhead) from `config.resilience.mcp`, reported as
//! a dependency. A session's `notifications/tools/list_changed` re-syncs the server's tools.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_resilience::{Preset, Resilience};
use agentmesh_runtime::config::Secret;
use agentmesh_runtime::{Dependency, DependencyHealth};
use uuid::Uuid;

use crate::connection::{self, Connection, ConnectionError, HttpSpec, ServerSpec, StdioSpec, Timeouts, TransportSpec};
use crate::settings::ClientSettings;
use crate::store::{
    DiscoveredTool, EnvValue, Handshake, McpServerRecord, McpStore, StoreError, ToolAnnotations, ToolRecord, Transport,
};
use agentmesh_runtime::secrets::{SecretReadError, SecretReader};

/// The placeholder of the user's id in the secret names of a per-user server.
const USER_PLACEHOLDER: &str = "{user_id}";

/// Why a session could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Opening or talking to the server failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A secret the server needs could not be read.
    #[error(transparent)]
    SecretUnreadable(#[from] SecretReadError),
    /// A secret the server needs does not exist.
    #[error("secret {0:?} does not exist")]
    MissingSecret(String),
    /// The server uses stdio and this broker starts no processes (`MCP_STDIO_ENABLED`).
    #[error("stdio MCP servers are disabled on this broker")]
    StdioDisabled,
    /// The server's transport is not supported by the client.
    #[error("the {0} transport is not supported")]
    UnsupportedTransport(&'static str),
    /// The server's configuration cannot be used (a stdio server without a command).
    #[error("the MCP server is misconfigured: {0}")]
    Misconfigured(&'static str),
    /// The server was disabled while its session was opening.
    #[error("the MCP server is disabled")]
    Disabled,
    /// The registry failed (or the server was deleted) while a session was opening or
    /// while recording what the server said.
    #[error("registry: {0}")]
    Store(#[from] StoreError),
}

/// Which session: a server, and the user for per-user servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    server_id: Uuid,
    user_id: Option<String>,
}

/// The open sessions and per-server resilience.
pub struct Sessions {
    store: Arc<dyn McpStore>,
    secrets: Option<Arc<dyn SecretReader>>,
    settings: ClientSettings,
    preset: Preset,
    dependencies: Option<DependencyHealth>,
    open: Arc<Mutex<HashMap<SessionKey, Arc<Connection>>>>,
    /// One lock per session being opened, so that concurrent first calls share one session
    /// while a slow server delays no other.
    opening: Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Each server's resilience, with the name it is reported under.
    resilience: Mutex<HashMap<Uuid, (String, Resilience)>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Sessions {
    /// No sessions yet; secrets are read with `secrets` (none: servers needing one fail),
    /// and each server's resilience is reported in `dependencies`.
    pub fn new(
        store: Arc<dyn McpStore>,
        secrets: Option<Arc<dyn SecretReader>>,
        settings: ClientSettings,
        preset: Preset,
        dependencies: Option<DependencyHealth>,
    ) -> Self {
        Self {
            store,
            secrets,
            settings,
            preset,
            dependencies,
            open: Arc::default(),
            opening: Mutex::default(),
            resilience: Mutex::default(),
        }
    }

    /// The client settings.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The session with `server` for `user_id` (used only when its credentials are per
    /// user), opened when there is none or it has ended.
    pub async fn connection(&self, server: &McpServerRecord, user_id: &str) -> Result<Arc<Connection>, SessionError> {
        let key = key(server, user_id);
        if let Some(connection) = self.live(&key) {
            return Ok(connection);
        }
        let gate = lock(&self.opening).entry(key.clone()).or_default().clone();
        let opened = {
            let _opening = gate.lock().await;
            match self.live(&key) {
                Some(connection) => Ok(connection),
                None => self.open_new(server, key.clone()).await,
            }
        };
        // The gate is dropped once no one else waits on it.
        let mut gates = lock(&self.opening);
        if gates.get(&key).is_some_and(|current| Arc::ptr_eq(current, &gate) && Arc::strong_count(current) == 2) {
            gates.remove(&key);
        }
        opened
    }

    /// Opens a new session for `key` and makes it the one in use.
    async fn open_new(&self, server: &McpServerRecord, key: SessionKey) -> Result<Arc<Connection>, SessionError> {
        let spec = self.spec(server, key.user_id.as_deref()).await?;
        let connection = Connection::open(&spec).await?;
        // The server may have been deleted or disabled while this session was opening;
        // its sessions were closed then, so this one must not stay.
        match self.store.get_server(server.id).await {
            Ok(current) if current.config.enabled => {}
            Ok(_) => {
                connection.close().await;
                return Err(SessionError::Disabled);
            }
            Err(error) => {
                connection.close().await;
                return Err(error.into());
            }
        }
        let connection = Arc::new(connection);
        self.supervise(key.clone(), &connection);
        let stale = lock(&self.open).insert(key, connection.clone());
        if let Some(stale) = stale {
            close(stale).await;
        }
        Ok(connection)
    }

    /// The open session of `key`, unless it has ended.
    fn live(&self, key: &SessionKey) -> Option<Arc<Connection>> {
        lock(&self.open).get(key).filter(|connection| !connection.is_closed()).cloned()
    }

    /// Forgets `connection` (after a failure that closes it) and closes it.
    pub async fn discard(&self, server: &McpServerRecord, user_id: &str, connection: &Arc<Connection>) {
        let key = key(server, user_id);
        let removed = {
            let mut open = lock(&self.open);
            match open.get(&key) {
                Some(current) if Arc::ptr_eq(current, connection) => open.remove(&key),
                _ => None,
            }
        };
        if let Some(removed) = removed {
            close(removed).await;
        }
    }

    /// Closes every session with server `server_id` (deleted, disabled or changed).
    pub async fn close_server(&self, server_id: Uuid) {
        let closing: Vec<Arc<Connection>> = {
            let mut open = lock(&self.open);
            let keys: Vec<SessionKey> = open.keys().filter(|key| key.server_id == server_id).cloned().collect();
            keys.iter().filter_map(|key| open.remove(key)).collect()
        };
        for connection in closing {
            close(connection).await;
        }
    }

    /// Closes every session (shutdown).
    pub async fn close_all(&self) {
        let closing: Vec<Arc<Connection>> = lock(&self.open).drain().map(|(_, connection)| connection).collect();
        for connection in closing {
            close(connection).await;
        }
    }

    /// The resilience of calls to `server`, made (and reported) on first use.
    pub fn resilience(&self, server: &McpServerRecord) -> Resilience {
        let mut all = lock(&self.resilience);
        all.entry(server.id)
            .or_insert_with(|| {
                let name = dependency_name(&server.config.name);
                let resilience = Resilience::new(name.clone(), &self.preset);
                if let Some(dependencies) = &self.dependencies {
                    dependencies.register(
                        Dependency::new(name.clone(), ExternalServiceType::McpServer).with_resilience(&resilience),
                    );
                }
                (name, resilience)
            })
            .1
            .clone()
    }

    /// Forgets `server_id`'s resilience and its dependency entry (the server was deleted
    /// or reconfigured): a server registered again starts with a closed breaker and is
    /// listed once.
    pub fn forget_server(&self, server_id: Uuid) {
        let forgotten = lock(&self.resilience).remove(&server_id);
        if let (Some((name, _)), Some(dependencies)) = (forgotten, &self.dependencies) {
            dependencies.unregister(&name);
        }
    }

    /// Discovery: opens (or reuses) the session, records the handshake, lists the tools and
    /// syncs them into the registry; returns the server's tools after the sync.
    pub async fn discover(&self, server: &McpServerRecord, user_id: &str) -> Result<Vec<ToolRecord>, SessionError> {
        let connection = self.connection(server, user_id).await?;
        let details = connection.details();
        let handshake = Handshake {
            capabilities: details.capabilities.clone(),
            protocol_version: details.protocol_version.clone(),
            server_info: details.server_info(),
        };
        self.store.record_handshake(server.id, handshake).await?;
        let listed = match connection.list_tools().await {
            Ok(listed) => listed,
            Err(error) => {
                if error.closes_connection() {
                    self.discard(server, user_id, &connection).await;
                }
                return Err(error.into());
            }
        };
        let outcome = self.store.sync_tools(server.id, listed.into_iter().map(discovered).collect()).await?;
        tracing::info!(
            server = %server.config.name,
            created = outcome.created.len(),
            updated = outcome.updated.len(),
            disabled = outcome.disabled.len(),
            "MCP tools synced"
        );
        Ok(outcome.tools)
    }

    /// For as long as the session lives: re-syncs the server's tools each time it says its
    /// list changed, and forgets the session when it ends (a stdio server that exited), so
    /// that the next use opens a new one. Holds the session only while syncing.
    fn supervise(&self, key: SessionKey, connection: &Arc<Connection>) {
        let mut changes = connection.tools_changed();
        let ended = connection.on_close();
        let session = Arc::downgrade(connection);
        let store = self.store.clone();
        let open = self.open.clone();
        tokio::spawn(async move {
            tokio::pin!(ended);
            loop {
                tokio::select! {
                    () = &mut ended => break,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let Some(connection) = session.upgrade() else { return };
                        resync(store.as_ref(), key.server_id, &connection).await;
                    }
                }
            }
            let ended = {
                let mut open = lock(&open);
                match open.get(&key) {
                    Some(current) if std::ptr::eq(Arc::as_ptr(current), session.as_ptr()) => open.remove(&key),
                    _ => None,
                }
            };
            if let Some(ended) = ended {
                tracing::info!(server_id = %key.server_id, "MCP session ended; the next use opens a new one");
                close(ended).await;
            }
        });
    }

    /// The resolved specification of a session with `server`.
    async fn spec(&self, server: &McpServerRecord, user_id: Option<&str>) -> Result<ServerSpec, SessionError> {
        let config = &server.config;
        let transport = match config.transport {
            Transport::Stdio => {
                if !self.settings.stdio_enabled {
                    return Err(SessionError::StdioDisabled);
                }
                let stdio = config.stdio.as_ref().ok_or(SessionError::Misconfigured("no stdio command"))?;
                let mut env = Vec::with_capacity(stdio.env.len());
                for variable in &stdio.env {
                    let value = match &variable.value {
                        EnvValue::Literal(value) => value.clone(),
                        EnvValue::Secret(name) => self.secret(name, user_id).await?.expose().to_owned(),
                    };
                    env.push((variable.name.clone(), value));
                }
                TransportSpec::Stdio(StdioSpec {
                    command: stdio.command.clone(),
                    args: stdio.args.clone(),
                    env,
                    working_directory: stdio.working_directory.as_ref().map(PathBuf::from),
                })
            }
            Transport::StreamableHttp => {
                let authentication = &config.authentication;
                let mut headers = Vec::new();
                if let Some(name) = &authentication.bearer_secret {
                    let token = self.secret(name, user_id).await?;
                    headers.push(("Authorization".to_owned(), format!("Bearer {}", token.expose())));
                }
                for (header, name) in &authentication.header_secrets {
                    headers.push((header.clone(), self.secret(name, user_id).await?.expose().to_owned()));
                }
                TransportSpec::StreamableHttp(HttpSpec { url: config.endpoint.clone(), headers })
            }
            Transport::Sse => return Err(SessionError::UnsupportedTransport("sse")),
        };
        Ok(ServerSpec {
            label: config.name.clone(),
            transport,
            timeouts: Timeouts {
                initialize: self.settings.connect_timeout,
                request: self.settings.request_timeout,
                shutdown_grace: self.settings.shutdown_grace,
            },
        })
    }

    /// The value of secret `name`, `{user_id}` replaced for per-user servers.
    async fn secret(&self, name: &str, user_id: Option<&str>) -> Result<Secret, SessionError> {
        let name = match user_id {
            Some(user_id) => name.replace(USER_PLACEHOLDER, user_id),
            None => name.to_owned(),
        };
        let reader = self.secrets.as_ref().ok_or_else(|| SessionError::MissingSecret(name.clone()))?;
        reader.read(&name).await?.ok_or(SessionError::MissingSecret(name))
    }
}

/// Lists the tools again after a change notice and syncs them.
async fn resync(store: &dyn McpStore, server_id: Uuid, connection: &Connection) {
    let synced = match connection.list_tools().await {
        Ok(listed) => store.sync_tools(server_id, listed.into_iter().map(discovered).collect()).await,
        Err(error) => {
            tracing::warn!(%server_id, %error, "listing tools after a change failed");
            return;
        }
    };
    match synced {
        Ok(outcome) => tracing::info!(
            %server_id,
            created = outcome.created.len(),
            updated = outcome.updated.len(),
            disabled = outcome.disabled.len(),
            "MCP tools re-synced after a change"
        ),
        Err(error) => tracing::warn!(%server_id, %error, "syncing tools after a change failed"),
    }
}

fn key(server: &McpServerRecord, user_id: &str) -> SessionKey {
    let per_user = server.config.authentication.per_user;
    SessionKey { server_id: server.id, user_id: per_user.then(|| user_id.to_owned()) }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The name a server's resilience and dependency entry go by.
fn dependency_name(server_name: &str) -> String {
    format!("mcp-server-{server_name}")
}

/// Closes `connection` in order when nothing else holds it; otherwise kills it at once (the
/// last holder's drop reaps a stdio server).
async fn close(connection: Arc<Connection>) {
    match Arc::try_unwrap(connection) {
        Ok(connection) => connection.close().await,
        // A call, a health check or a resync still holds it: end it now all the same, so a
        // deleted or disabled server leaves no process behind.
        Err(shared) => shared.kill(),
    }
}

/// A listed tool in the registry's terms.
fn discovered(tool: connection::DiscoveredTool) -> DiscoveredTool {
    let hints = tool.annotations;
    let any_hint = hints.read_only.is_some()
        || hints.destructive.is_some()
        || hints.idempotent.is_some()
        || hints.open_world.is_some();
    DiscoveredTool {
        remote_name: tool.remote_name,
        description: tool.description.unwrap_or_default(),
        title: tool.title,
        input_schema: tool.input_schema,
        output_schema: tool.output_schema,
        annotations: any_hint.then_some(ToolAnnotations {
            read_only_hint: hints.read_only,
            destructive_hint: hints.destructive,
            idempotent_hint: hints.idempotent,
            open_world_hint: hints.open_world,
        }),
    }
}
