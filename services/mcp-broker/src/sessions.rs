//! The broker's open MCP sessions: one [`Connection`] per server (per server and user when
//! the server's credentials are per user), opened on first use and reused by every call.
//!
//! A session is built from the stored server: secret names are resolved through a
//! [`SecretReader`] into a [`ServerSpec`] here, so the connection layer only sees values.
//! A session remembers which secrets it was opened with (names and digests, never values):
//! when secrets-broker announces a change to one of them, the session is closed and the
//! next call opens one with the rotated credential ([`Sessions::follow_secret_changes`]).
//! A stdio server that exits on its own is started again in the background, after a
//! delay that grows while it keeps exiting ([`crate::restart`]); until it is back, calls
//! are refused at once with [`SessionError::Restarting`], and its health is recorded
//! (unhealthy when it exits, healthy when it is back). Any other session that has ended
//! (an HTTP transport that failed, a session dropped because a call failed in a way that
//! [`ConnectionError::closes_connection`]) is opened again on the next use. Deleting or
//! disabling a server, changing it, and shutting down close its sessions and stop its
//! restarts, which ends stdio children (started by a [`Launcher`]). Each server also has
//! its own [`Resilience`] (breaker, retries, bulkhead) from `config.resilience.mcp`,
//! reported as a dependency. A session's `notifications/tools/list_changed` re-syncs the
//! server's tools.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;
use agentmesh_resilience::{Preset, Resilience};
use agentmesh_runtime::config::Secret;
use agentmesh_runtime::{Dependency, DependencyHealth};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
use uuid::Uuid;

use crate::connection::{
    self, Connection, ConnectionError, HttpSpec, Launcher, ServerSpec, StdioSpec, Timeouts, TransportSpec,
};
use crate::restart::Backoff;
use crate::settings::ClientSettings;
use crate::store::{
    DiscoveredTool, EnvValue, Handshake, McpServerRecord, McpStore, ServerStatus, StoreError, ToolAnnotations,
    ToolRecord, Transport,
};
use agentmesh_runtime::secrets::{SecretNotice, SecretReadError, SecretReader};

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
    /// The stdio server exited and is being started again.
    #[error("the stdio MCP server exited and is being restarted (next attempt in {:.1} s)", retry_after.as_secs_f64())]
    Restarting {
        /// How long until the next attempt to start it (zero: under way).
        retry_after: Duration,
    },
    /// The registry failed (or the server was deleted) while a session was opening or
    /// while recording what the server said.
    #[error("registry: {0}")]
    Store(#[from] StoreError),
}

impl SessionError {
    /// Whether the same attempt may succeed later without anyone changing the server:
    /// the server failed or could not be reached, is being restarted, or a store or
    /// secret it needs was unavailable (not a configuration or a credential it refused).
    pub fn may_pass(&self) -> bool {
        match self {
            SessionError::Connection(error) => error.is_server_failure(),
            SessionError::SecretUnreadable(_)
            | SessionError::Restarting { .. }
            | SessionError::Store(StoreError::Unavailable(_)) => true,
            SessionError::MissingSecret(_)
            | SessionError::StdioDisabled
            | SessionError::UnsupportedTransport(_)
            | SessionError::Misconfigured(_)
            | SessionError::Disabled
            | SessionError::Store(_) => false,
        }
    }
}

/// Which session: a server, and the user for per-user servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    server_id: Uuid,
    user_id: Option<String>,
}

/// A stdio session being started again after its server exited.
#[derive(Debug)]
struct Restarting {
    /// Which run of restarts: a later one for the same session replaces it.
    run: u64,
    /// When the next attempt starts.
    next_attempt: Instant,
}

/// The open sessions and per-server resilience.
pub struct Sessions {
    /// These sessions, for the tasks that supervise them.
    this: Weak<Sessions>,
    store: Arc<dyn McpStore>,
    launcher: Launcher,
    secrets: Option<Arc<dyn SecretReader>>,
    settings: ClientSettings,
    preset: Preset,
    dependencies: Option<DependencyHealth>,
    open: Mutex<HashMap<SessionKey, Arc<Connection>>>,
    /// One lock per session being opened, so that concurrent first calls share one session
    /// while a slow server delays no other.
    opening: Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Each server's resilience, with the name it is reported under.
    resilience: Mutex<HashMap<Uuid, (String, Resilience)>>,
    /// Stdio sessions whose server exited, until they are back or no longer wanted. Taken
    /// before `open` when both are.
    restarting: Mutex<HashMap<SessionKey, Restarting>>,
    /// Numbers the runs of restarts.
    restart_runs: AtomicU64,
    /// Set on shutdown: nothing is restarted any more.
    stopping: AtomicBool,
    /// Each server's background discovery, aborted when the server changes or goes.
    discoveries: Mutex<HashMap<Uuid, tokio::task::AbortHandle>>,
    /// The secrets each session using any was opened with.
    credentials: Mutex<HashMap<SessionKey, (Weak<Connection>, UsedSecrets)>>,
}

/// The secrets a session was opened with: resolved names and SHA-256 digests of the
/// values, to tell whether a rotation changed what it uses without keeping the values.
type UsedSecrets = Vec<(String, [u8; 32])>;

fn digest(value: &Secret) -> [u8; 32] {
    Sha256::digest(value.expose().as_bytes()).into()
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Sessions {
    /// No sessions yet; stdio servers are started with `launcher`, secrets are read with
    /// `secrets` (none: servers needing one fail), and each server's resilience is reported
    /// in `dependencies`.
    pub fn new(
        store: Arc<dyn McpStore>,
        launcher: Launcher,
        secrets: Option<Arc<dyn SecretReader>>,
        settings: ClientSettings,
        preset: Preset,
        dependencies: Option<DependencyHealth>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            this: this.clone(),
            store,
            launcher,
            secrets,
            settings,
            preset,
            dependencies,
            open: Mutex::default(),
            opening: Mutex::default(),
            resilience: Mutex::default(),
            restarting: Mutex::default(),
            restart_runs: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            discoveries: Mutex::default(),
            credentials: Mutex::default(),
        })
    }

    /// The client settings.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The session with `server` for `user_id` (used only when its credentials are per
    /// user), opened when there is none or it has ended; refused while its stdio server is
    /// being restarted.
    pub async fn connection(&self, server: &McpServerRecord, user_id: &str) -> Result<Arc<Connection>, SessionError> {
        let key = key(server, user_id);
        if let Some(connection) = self.live(&key) {
            return Ok(connection);
        }
        if let Some(restarting) = lock(&self.restarting).get(&key) {
            let retry_after = restarting.next_attempt.saturating_duration_since(Instant::now());
            return Err(SessionError::Restarting { retry_after });
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
        let (spec, used) = self.spec(server, key.user_id.as_deref()).await?;
        let connection = Connection::open_with(&spec, &self.launcher).await?;
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
        self.remember_credentials(&key, &connection, used);
        // In the map before it is supervised, so that its supervisor finds it there.
        let stale = lock(&self.open).insert(key.clone(), connection.clone());
        self.supervise(key, &connection, Backoff::default());
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

    /// Closes every session with server `server_id` (deleted, disabled or changed), and
    /// stops restarting its stdio server.
    pub async fn close_server(&self, server_id: Uuid) {
        lock(&self.restarting).retain(|key, _| key.server_id != server_id);
        let closing: Vec<Arc<Connection>> = {
            let mut open = lock(&self.open);
            let keys: Vec<SessionKey> = open.keys().filter(|key| key.server_id == server_id).cloned().collect();
            keys.iter().filter_map(|key| open.remove(key)).collect()
        };
        for connection in closing {
            close(connection).await;
        }
    }

    /// Closes every session and restarts nothing any more (shutdown).
    pub async fn close_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        lock(&self.restarting).clear();
        lock(&self.discoveries).drain().for_each(|(_, discovery)| discovery.abort());
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

    /// Forgets `server_id`'s resilience and its dependency entry, and ends its background
    /// discovery (the server was deleted or reconfigured): a server registered again starts
    /// with a closed breaker and is listed once.
    pub fn forget_server(&self, server_id: Uuid) {
        if let Some(discovery) = lock(&self.discoveries).remove(&server_id) {
            discovery.abort();
        }
        let forgotten = lock(&self.resilience).remove(&server_id);
        if let (Some((name, _)), Some(dependencies)) = (forgotten, &self.dependencies) {
            dependencies.unregister(&name);
        }
    }

    /// Discovery, with the server's health recorded either way (see [`Self::sync_tools`]);
    /// returns the server's tools after the sync.
    pub async fn discover(&self, server: &McpServerRecord, user_id: &str) -> Result<Vec<ToolRecord>, SessionError> {
        let result = self.sync_tools(server, user_id).await;
        let (status, reason) = match &result {
            Ok(_) => (ServerStatus::Healthy, "discovery succeeded".to_owned()),
            Err(error) => (ServerStatus::Unhealthy, format!("discovery failed: {error}")),
        };
        if let Err(error) = self.store.record_health(server.id, status, crate::store::now(), &reason).await {
            tracing::warn!(server = %server.config.name, %error, "recording health failed");
        }
        result
    }

    /// [`Self::discover`] in the background (as `user_id` for per-user servers), tried
    /// again after a growing delay (the restart schedule of [`Backoff`]) for as long as the
    /// server cannot be reached: a server registered before it is up gets its tools once
    /// it is. Changing, deleting or disabling the server ([`Self::forget_server`]) and
    /// shutting down end the attempts, as does a failure no retry can mend.
    pub fn discover_in_background(&self, server: McpServerRecord, user_id: String) {
        let this = self.this.clone();
        let server_id = server.id;
        let attempts = tokio::spawn(async move {
            let mut backoff = Backoff::default();
            loop {
                let Some(sessions) = this.upgrade() else { return };
                let error = match sessions.discover(&server, &user_id).await {
                    Ok(_) => return,
                    Err(error) => error,
                };
                if !error.may_pass() {
                    tracing::warn!(server = %server.config.name, %error, "background discovery failed");
                    return;
                }
                drop(sessions);
                let delay = backoff.next_delay();
                tracing::warn!(
                    server = %server.config.name,
                    %error,
                    retry_in_s = delay.as_secs_f64(),
                    "background discovery failed; trying again"
                );
                tokio::time::sleep(delay).await;
            }
        });
        if let Some(previous) = lock(&self.discoveries).insert(server_id, attempts.abort_handle()) {
            previous.abort();
        }
    }

    /// Opens (or reuses) the session, records the handshake, lists the tools and syncs them
    /// into the registry; returns the server's tools after the sync.
    async fn sync_tools(&self, server: &McpServerRecord, user_id: &str) -> Result<Vec<ToolRecord>, SessionError> {
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
    /// list changed, and forgets the session when it ends. A stdio server that exited on its
    /// own is then started again after `backoff`'s next delay; any other session is opened
    /// again on its next use. Holds the session only while syncing.
    fn supervise(&self, key: SessionKey, connection: &Arc<Connection>, mut backoff: Backoff) {
        let mut changes = connection.tools_changed();
        let ended = connection.on_close();
        let session = Arc::downgrade(connection);
        let sessions = self.this.clone();
        let store = self.store.clone();
        let stdio = connection.pid().is_some();
        let opened_at = Instant::now();
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
            let Some(this) = sessions.upgrade() else { return };
            backoff.exited_after(opened_at.elapsed());
            let delay = backoff.next_delay();
            let Some((ended, restart)) = this.take_ended(&key, session.as_ptr(), stdio.then_some(delay)) else {
                return;
            };
            close(ended).await;
            let Some(run) = restart else {
                tracing::info!(server_id = %key.server_id, "MCP session ended; the next use opens a new one");
                return;
            };
            tracing::warn!(server_id = %key.server_id, delay = ?delay, "stdio MCP server exited; restarting it");
            let reason = format!("the stdio server exited; restarting in {:.1} s", delay.as_secs_f64());
            this.record_health(key.server_id, ServerStatus::Unhealthy, &reason).await;
            drop(this);
            keep_restarting(sessions, key, backoff, run, delay).await;
        });
    }

    /// Removes the session of `key` if it is still `session` (nothing else closed it), and,
    /// given a delay, schedules its restart after it; returns the session and the run of
    /// restarts.
    fn take_ended(
        &self,
        key: &SessionKey,
        session: *const Connection,
        restart_in: Option<Duration>,
    ) -> Option<(Arc<Connection>, Option<u64>)> {
        let mut restarting = lock(&self.restarting);
        let mut open = lock(&self.open);
        if !open.get(key).is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), session)) {
            return None;
        }
        let ended = open.remove(key)?;
        let run = restart_in.filter(|_| !self.stopping.load(Ordering::SeqCst)).map(|delay| {
            let run = self.restart_runs.fetch_add(1, Ordering::Relaxed);
            restarting.insert(key.clone(), Restarting { run, next_attempt: Instant::now() + delay });
            run
        });
        Some((ended, run))
    }

    /// Whether `run` still restarts `key`; if so its next attempt is moved `delay` ahead.
    fn reschedule(&self, key: &SessionKey, run: u64, delay: Duration) -> bool {
        match lock(&self.restarting).get_mut(key) {
            Some(restarting) if restarting.run == run => {
                restarting.next_attempt = Instant::now() + delay;
                true
            }
            _ => false,
        }
    }

    /// Stops `run` of restarts of `key`, if it is still the current one.
    fn stop_restarting(&self, key: &SessionKey, run: u64) {
        let mut restarting = lock(&self.restarting);
        if restarting.get(key).is_some_and(|current| current.run == run) {
            restarting.remove(key);
        }
    }

    /// One attempt of `run` to start `key`'s stdio server again. `Ok` when there is
    /// nothing more to do: it is back (and supervised with `backoff`), or no longer wanted
    /// (deleted, disabled, closed, shutting down).
    async fn restart(&self, key: &SessionKey, run: u64, backoff: &Backoff) -> Result<(), SessionError> {
        if lock(&self.restarting).get(key).is_none_or(|current| current.run != run) {
            return Ok(());
        }
        let server = match self.store.get_server(key.server_id).await {
            Ok(server) if server.config.enabled => server,
            Ok(_) | Err(StoreError::NotFound) => {
                self.stop_restarting(key, run);
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        let (spec, used) = self.spec(&server, key.user_id.as_deref()).await?;
        let connection = Arc::new(Connection::open_with(&spec, &self.launcher).await?);
        self.remember_credentials(key, &connection, used);
        let (installed, stale) = {
            let mut restarting = lock(&self.restarting);
            let current = restarting.get(key).is_some_and(|current| current.run == run);
            if current && !self.stopping.load(Ordering::SeqCst) {
                restarting.remove(key);
                (true, lock(&self.open).insert(key.clone(), connection.clone()))
            } else {
                (false, None)
            }
        };
        if !installed {
            close(connection).await;
            return Ok(());
        }
        self.supervise(key.clone(), &connection, backoff.clone());
        if let Some(stale) = stale {
            close(stale).await;
        }
        tracing::info!(server = %server.config.name, pid = connection.pid(), "stdio MCP server restarted");
        self.record_health(key.server_id, ServerStatus::Healthy, "the stdio server was restarted").await;
        Ok(())
    }

    /// Records `server_id`'s health (which emits `mcp_server.health_changed` on a change).
    async fn record_health(&self, server_id: Uuid, status: ServerStatus, reason: &str) {
        if let Err(error) = self.store.record_health(server_id, status, crate::store::now(), reason).await {
            tracing::warn!(%server_id, %error, "recording health failed");
        }
    }

    /// The resolved specification of a session with `server`, and the secrets it uses.
    async fn spec(
        &self,
        server: &McpServerRecord,
        user_id: Option<&str>,
    ) -> Result<(ServerSpec, UsedSecrets), SessionError> {
        let config = &server.config;
        let mut used = UsedSecrets::new();
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
                        EnvValue::Secret(name) => self.secret(name, user_id, &mut used).await?.expose().to_owned(),
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
                    let token = self.secret(name, user_id, &mut used).await?;
                    headers.push(("Authorization".to_owned(), format!("Bearer {}", token.expose())));
                }
                for (header, name) in &authentication.header_secrets {
                    headers.push((header.clone(), self.secret(name, user_id, &mut used).await?.expose().to_owned()));
                }
                TransportSpec::StreamableHttp(HttpSpec { url: config.endpoint.clone(), headers })
            }
            Transport::Sse => return Err(SessionError::UnsupportedTransport("sse")),
        };
        let spec = ServerSpec {
            label: config.name.clone(),
            transport,
            timeouts: Timeouts {
                initialize: self.settings.connect_timeout,
                request: self.settings.request_timeout,
                shutdown_grace: self.settings.shutdown_grace,
            },
        };
        Ok((spec, used))
    }

    /// The value of secret `name`, `{user_id}` replaced for per-user servers; noted in `used`.
    async fn secret(&self, name: &str, user_id: Option<&str>, used: &mut UsedSecrets) -> Result<Secret, SessionError> {
        let name = match user_id {
            Some(user_id) => name.replace(USER_PLACEHOLDER, user_id),
            None => name.to_owned(),
        };
        let reader = self.secrets.as_ref().ok_or_else(|| SessionError::MissingSecret(name.clone()))?;
        let value = reader.read(&name).await?.ok_or_else(|| SessionError::MissingSecret(name.clone()))?;
        used.push((name, digest(&value)));
        Ok(value)
    }

    /// Notes that `connection` (the session of `key`) was opened with `used`.
    fn remember_credentials(&self, key: &SessionKey, connection: &Arc<Connection>, used: UsedSecrets) {
        let mut credentials = lock(&self.credentials);
        // Sessions that have ended are forgotten here rather than wherever they end.
        credentials.retain(|_, (session, _)| session.strong_count() > 0);
        if !used.is_empty() {
            credentials.insert(key.clone(), (Arc::downgrade(connection), used));
        }
    }

    /// Closes the sessions opened with a credential that secrets-broker announces as
    /// changed (every session with credentials is checked after the watch reconnects), for
    /// as long as it runs; their next use opens them with the current credential.
    pub async fn follow_secret_changes(self: Arc<Self>) {
        let Some(mut notices) = self.secrets.as_ref().and_then(|secrets| secrets.watch("")) else { return };
        while let Some(notice) = notices.next().await {
            let changed = match &notice {
                SecretNotice::Changed(name) => Some(name.as_str()),
                SecretNotice::Resync => None,
            };
            self.close_outdated(changed).await;
        }
    }

    /// Closes the sessions using secret `changed` (any secret, when `None`) whose value is
    /// no longer the one they were opened with.
    async fn close_outdated(&self, changed: Option<&str>) {
        let Some(reader) = &self.secrets else { return };
        let uses = |name: &String| changed.is_none_or(|changed| changed == name);
        let candidates: Vec<(SessionKey, Weak<Connection>, UsedSecrets)> = lock(&self.credentials)
            .iter()
            .filter(|(_, (_, used))| used.iter().any(|(name, _)| uses(name)))
            .map(|(key, (session, used))| (key.clone(), session.clone(), used.clone()))
            .collect();
        for (key, session, used) in candidates {
            let mut outdated = false;
            for (name, opened_with) in used.iter().filter(|(name, _)| uses(name)) {
                match reader.read(name).await {
                    Ok(Some(value)) => outdated |= digest(&value) != *opened_with,
                    Ok(None) => outdated = true,
                    Err(error) => {
                        tracing::warn!(%error, secret = %name, "changed MCP credential not read; the session keeps its own");
                    }
                }
            }
            let Some(session) = session.upgrade().filter(|_| outdated) else { continue };
            let removed = {
                let mut open = lock(&self.open);
                match open.get(&key) {
                    Some(current) if Arc::ptr_eq(current, &session) => open.remove(&key),
                    _ => None,
                }
            };
            lock(&self.credentials).remove(&key);
            if let Some(removed) = removed {
                tracing::info!(server_id = %key.server_id, "MCP credential changed; the next call opens a new session");
                close(removed).await;
            }
        }
    }
}

/// Starts `key`'s stdio server again after `delay`, and after each failed attempt waits
/// `backoff`'s next delay, for as long as `run` of restarts is wanted.
async fn keep_restarting(sessions: Weak<Sessions>, key: SessionKey, mut backoff: Backoff, run: u64, delay: Duration) {
    let mut delay = delay;
    loop {
        tokio::time::sleep(delay).await;
        let Some(this) = sessions.upgrade() else { return };
        let Err(error) = this.restart(&key, run, &backoff).await else { return };
        delay = backoff.next_delay();
        if !this.reschedule(&key, run, delay) {
            return;
        }
        tracing::warn!(server_id = %key.server_id, %error, delay = ?delay, "restarting a stdio MCP server failed; trying again");
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
