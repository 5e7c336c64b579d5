//! The `local` provider: the seed's `SECRET_*` fallback values from the environment, and a
//! dotenv or JSON file that is watched for changes, so a key edited in the file (or a
//! Kubernetes Secret remounted there) is served without a restart. Development needs
//! nothing else: with no file, the environment is served.
//!
//! Names in the file may be written as the seed writes them (`openai-api-key`) or as
//! environment variables (`OPENAI_API_KEY`): both mean `openai-api-key`. The file wins over
//! the environment. Versions are numbered from 1 as this process sees values change; the
//! last [`KEPT_VERSIONS`] of each secret can be read, so a rotation's previous version
//! stays readable while verification overlaps. A rotation is written back to the file
//! (atomically, keeping its other lines); without a file it lives in memory.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, broadcast};

use super::{
    Change, ChangeKind, Provider, ProviderError, ProviderKind, Rotation, SecretValue, SecretVersion, VersionInfo,
};

/// Versions of each secret kept readable.
pub const KEPT_VERSIONS: usize = 5;

/// Changes buffered for slow watchers before they are told they missed some.
const CHANGE_BUFFER: usize = 256;

/// The environment and a watched file.
#[derive(Debug)]
pub struct LocalProvider {
    file: Option<PathBuf>,
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
}

#[derive(Debug, Default)]
struct State {
    /// The fallback values from the environment (fixed).
    environment: BTreeMap<String, SecretValue>,
    /// The file's values as last read.
    file_values: BTreeMap<String, SecretValue>,
    /// SHA-256 of the file's bytes as last read, to notice changes.
    file_digest: Option<[u8; 32]>,
    /// Rotations made without a file.
    overlay: BTreeMap<String, SecretValue>,
    /// Every secret seen, with its recent versions.
    secrets: BTreeMap<String, History>,
}

#[derive(Debug, Default)]
struct History {
    /// Newest last.
    versions: VecDeque<Stored>,
    /// The secret is gone (its versions stay readable by number).
    deleted: bool,
}

#[derive(Debug)]
struct Stored {
    number: u64,
    value: SecretValue,
    created_at: SystemTime,
}

impl History {
    fn current(&self) -> Option<&Stored> {
        if self.deleted { None } else { self.versions.back() }
    }
}

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalFileError {
    /// It could not be read or written.
    #[error("secrets file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It is not a dotenv file or a JSON object of strings.
    #[error("secrets file {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a value).
        reason: String,
    },
}

impl LocalProvider {
    /// Serves `environment` (the seed's fallback values by name) and, when given, `file`,
    /// which is read now: a file that cannot be read or parsed stops the start.
    pub async fn open(
        environment: BTreeMap<String, SecretValue>,
        file: Option<PathBuf>,
    ) -> Result<Self, LocalFileError> {
        let provider = Self {
            file,
            state: Mutex::new(State { environment, ..State::default() }),
            changes: broadcast::channel(CHANGE_BUFFER).0,
        };
        let mut state = provider.state.lock().await;
        if let Some(path) = &provider.file {
            let bytes =
                tokio::fs::read(path).await.map_err(|source| LocalFileError::Io { path: path.clone(), source })?;
            state.file_values = parse(path, &bytes)?;
            state.file_digest = Some(Sha256::digest(&bytes).into());
        }
        // The first versions are not changes anyone needs to hear about.
        let _initial = state.settle();
        drop(state);
        Ok(provider)
    }

    /// Reads the file again if it changed, announcing what changed. A file that is gone or
    /// cannot be parsed keeps the values last read (a half-written edit must not delete
    /// every secret); the error says why.
    pub async fn reload(&self) -> Result<(), LocalFileError> {
        let Some(path) = &self.file else { return Ok(()) };
        // Read under the lock: a reload that read the file before a rotation rewrote it
        // must not apply those older bytes after the rotation's own reload.
        let mut state = self.state.lock().await;
        let bytes = tokio::fs::read(path).await.map_err(|source| LocalFileError::Io { path: path.clone(), source })?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if state.file_digest == Some(digest) {
            return Ok(());
        }
        state.file_values = parse(path, &bytes)?;
        state.file_digest = Some(digest);
        let changes = state.settle();
        drop(state);
        self.announce(changes);
        Ok(())
    }

    /// Checks the file every `interval`, for as long as the task runs.
    pub async fn watch(&self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            ticks.tick().await;
            match self.reload().await {
                Ok(()) => failing = false,
                // Said once per outage, not once per tick.
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "secrets file not read; serving the values last read");
                }
                Err(_) => {}
            }
        }
    }

    fn announce(&self, changes: Vec<Change>) {
        for change in changes {
            tracing::info!(name = %change.name, version = %change.version, kind = ?change.kind, "secret changed");
            // Nobody listening is fine.
            let _unheard = self.changes.send(change);
        }
    }

    /// Writes `value` for `name` into the file, keeping every other line.
    async fn write_file(&self, path: &Path, name: &str, value: &str) -> Result<(), ProviderError> {
        let io = |error: std::io::Error| ProviderError::Unavailable { reason: format!("secrets file: {error}") };
        let current = tokio::fs::read(path).await.map_err(io)?;
        let text = String::from_utf8(current)
            .map_err(|_| ProviderError::Unavailable { reason: "secrets file is not UTF-8".to_owned() })?;
        let updated = if is_json(path) { json_with(&text, name, value)? } else { dotenv_with(&text, name, value) };
        let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
        tokio::fs::write(&temporary, updated.as_bytes()).await.map_err(io)?;
        if let Ok(metadata) = tokio::fs::metadata(path).await {
            tokio::fs::set_permissions(&temporary, metadata.permissions()).await.map_err(io)?;
        }
        tokio::fs::rename(&temporary, path).await.map_err(io)
    }
}

impl State {
    /// Brings every secret's history up to the values now in force; returns the changes.
    fn settle(&mut self) -> Vec<Change> {
        let mut effective: BTreeMap<String, SecretValue> = self.environment.clone();
        effective.extend(self.file_values.iter().map(|(name, value)| (name.clone(), value.clone())));
        effective.extend(self.overlay.iter().map(|(name, value)| (name.clone(), value.clone())));
        let now = SystemTime::now();
        let mut changes = Vec::new();
        for (name, value) in effective.iter() {
            let history = self.secrets.entry(name.clone()).or_default();
            let previous = history.current().map(|stored| stored.number);
            if history.current().is_some_and(|stored| stored.value == *value) {
                continue;
            }
            let number = history.versions.back().map_or(1, |stored| stored.number + 1);
            history.versions.push_back(Stored { number, value: value.clone(), created_at: now });
            if history.versions.len() > KEPT_VERSIONS {
                history.versions.pop_front();
            }
            history.deleted = false;
            changes.push(Change {
                name: name.clone(),
                version: number.to_string(),
                previous_version: previous.map(|number| number.to_string()),
                kind: if previous.is_some() { ChangeKind::Rotated } else { ChangeKind::Created },
                time: now,
            });
        }
        for (name, history) in &mut self.secrets {
            if effective.contains_key(name) || history.deleted {
                continue;
            }
            history.deleted = true;
            if let Some(last) = history.versions.back() {
                changes.push(Change {
                    name: name.clone(),
                    version: last.number.to_string(),
                    previous_version: None,
                    kind: ChangeKind::Deleted,
                    time: now,
                });
            }
        }
        changes
    }

    fn info(name: &str, stored: &Stored) -> VersionInfo {
        VersionInfo {
            name: name.to_owned(),
            version: stored.number.to_string(),
            created_at: Some(stored.created_at),
            expires_at: None,
        }
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    async fn get(&self, name: &str, version: Option<&str>) -> Result<SecretVersion, ProviderError> {
        let state = self.state.lock().await;
        let history = state.secrets.get(name).ok_or_else(|| ProviderError::NotFound { name: name.to_owned() })?;
        let stored = match version {
            None => history.current().ok_or_else(|| ProviderError::NotFound { name: name.to_owned() })?,
            Some(version) => {
                history.versions.iter().find(|stored| stored.number.to_string() == version).ok_or_else(|| {
                    ProviderError::VersionNotFound { name: name.to_owned(), version: version.to_owned() }
                })?
            }
        };
        Ok(SecretVersion { info: State::info(name, stored), value: stored.value.clone() })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<VersionInfo>, ProviderError> {
        let state = self.state.lock().await;
        Ok(state
            .secrets
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter_map(|(name, history)| history.current().map(|stored| State::info(name, stored)))
            .collect())
    }

    async fn put(&self, name: &str, value: SecretValue) -> Result<Rotation, ProviderError> {
        let name = normalize(name)
            .ok_or_else(|| ProviderError::Rejected { reason: format!("{name:?} is not a secret name") })?;
        if self.file.is_some() && value.as_text().is_none() {
            return Err(ProviderError::Rejected { reason: "a secret in the local file must be UTF-8 text".to_owned() });
        }
        let previous = {
            let state = self.state.lock().await;
            state.secrets.get(&name).and_then(|history| history.current().map(|stored| State::info(&name, stored)))
        };
        match (&self.file, value.as_text()) {
            (Some(path), Some(text)) => {
                self.write_file(path, &name, text).await?;
                self.reload().await.map_err(|error| ProviderError::Unavailable { reason: error.to_string() })?;
            }
            _ => {
                let mut state = self.state.lock().await;
                state.overlay.insert(name.clone(), value);
                let changes = state.settle();
                drop(state);
                self.announce(changes);
            }
        }
        let state = self.state.lock().await;
        let current = state
            .secrets
            .get(&name)
            .and_then(|history| history.current().map(|stored| State::info(&name, stored)))
            .ok_or_else(|| ProviderError::Unavailable { reason: "the rotated value was not read back".to_owned() })?;
        // Rotating to the value already current makes no new version.
        let previous = previous.filter(|previous| previous.version != current.version);
        Ok(Rotation { current, previous })
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}

/// The secret name a file or environment key stands for: lower case, `_` as `-`; `None`
/// when it cannot be one.
pub fn normalize(key: &str) -> Option<String> {
    let name: String = key.trim().chars().map(|c| if c == '_' { '-' } else { c.to_ascii_lowercase() }).collect();
    let valid = !name.is_empty() && name.len() <= 127 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    valid.then_some(name)
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("json"))
}

/// The secrets in a file's bytes.
fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, SecretValue>, LocalFileError> {
    let format = |reason: String| LocalFileError::Format { path: path.to_owned(), reason };
    let text = std::str::from_utf8(bytes).map_err(|_| format("not UTF-8".to_owned()))?;
    let pairs = if is_json(path) { json_pairs(text).map_err(format)? } else { dotenv_pairs(text).map_err(format)? };
    let mut values = BTreeMap::new();
    for (key, value) in pairs {
        match normalize(&key) {
            Some(name) => {
                values.insert(name, SecretValue::from(value));
            }
            None => tracing::warn!(key = %key, "secrets file entry skipped: not a secret name"),
        }
    }
    Ok(values)
}

fn json_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|error| format!("not a JSON object: line {}", error.line()))?;
    object
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(value) => Ok((key, value)),
            _ => Err(format!("{key}: values must be strings")),
        })
        .collect()
}

/// `KEY=value` lines, with optional `export `, `#` comments, and single- or double-quoted
/// values (double quotes understand `\n`, `\"` and `\\`).
fn dotenv_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let Some((key, raw)) = dotenv_line(line) else {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            return Err(format!("line {} is not KEY=value", index + 1));
        };
        let value = unquote(raw).ok_or_else(|| format!("line {}: unterminated quote", index + 1))?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// A line's key and raw value; `None` for blank lines, comments and nonsense.
fn dotenv_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start();
    if line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.contains(char::is_whitespace)).then_some((key, value.trim()))
}

fn unquote(raw: &str) -> Option<String> {
    if let Some(inner) = raw.strip_prefix('\'') {
        return inner.strip_suffix('\'').map(str::to_owned);
    }
    let Some(inner) = raw.strip_prefix('"') else {
        // Unquoted: a ` #` starts a comment.
        let value = raw.split(" #").next().unwrap_or_default();
        return Some(value.trim_end().to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            value.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => value.push('\n'),
            Some(other) => value.push(other),
            None => value.push('\\'),
        }
    }
    Some(value)
}

/// A value as a dotenv file writes it: double-quoted and escaped.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// `text` with `name`'s line set to `value` (appended when absent).
fn dotenv_with(text: &str, name: &str, value: &str) -> String {
    let mut replaced = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| match dotenv_line(line) {
            Some((key, _)) if normalize(key).as_deref() == Some(name) => {
                replaced = true;
                format!("{key}={}", quote(value))
            }
            _ => line.to_owned(),
        })
        .collect();
    if !replaced {
        lines.push(format!("{name}={}", quote(value)));
    }
    let mut updated = lines.join("\n");
    updated.push('\n');
    updated
}

/// `text` (a JSON object) with `name` set to `value`, under the key already used for it.
fn json_with(text: &str, name: &str, value: &str) -> Result<String, ProviderError> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|_| ProviderError::Unavailable { reason: "secrets file is not a JSON object".to_owned() })?;
    let key =
        object.keys().find(|key| normalize(key).as_deref() == Some(name)).cloned().unwrap_or_else(|| name.to_owned());
    object.insert(key, serde_json::Value::String(value.to_owned()));
    let mut updated = serde_json::to_string_pretty(&object)
        .map_err(|error| ProviderError::Unavailable { reason: error.to_string() })?;
    updated.push('\n');
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(secret: &SecretVersion) -> &str {
        secret.value.as_text().unwrap()
    }

    fn environment(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), SecretValue::from((*value).to_owned()))).collect()
    }

    #[test]
    fn dotenv_reads_comments_exports_and_quotes() {
        let pairs = dotenv_pairs(
            "# keys\nexport OPENAI_API_KEY=sk-1 # rotated monthly\nanthropic-api-key='a b'\n\nJWT=\"x\\\"y\\nz\"\n",
        )
        .unwrap();
        assert_eq!(
            pairs,
            [
                ("OPENAI_API_KEY".to_owned(), "sk-1".to_owned()),
                ("anthropic-api-key".to_owned(), "a b".to_owned()),
                ("JWT".to_owned(), "x\"y\nz".to_owned()),
            ]
        );
        assert!(dotenv_pairs("just words\n").unwrap_err().contains("line 1"));
        assert!(dotenv_pairs("A=\"open\n").unwrap_err().contains("unterminated"));
    }

    #[test]
    fn writing_a_dotenv_value_keeps_the_other_lines_and_reads_back() {
        let original = "# comment\nOPENAI_API_KEY=old\nOTHER=1\n";
        let updated = dotenv_with(original, "openai-api-key", "new \"quoted\"\nline");
        assert_eq!(updated, "# comment\nOPENAI_API_KEY=\"new \\\"quoted\\\"\\nline\"\nOTHER=1\n");
        let pairs = dotenv_pairs(&updated).unwrap();
        assert_eq!(pairs[0].1, "new \"quoted\"\nline");
        assert_eq!(dotenv_with("", "jwt-secret-key", "k"), "jwt-secret-key=\"k\"\n");
    }

    #[test]
    fn names_are_normalized_and_bad_ones_refused() {
        assert_eq!(normalize("OPENAI_API_KEY").as_deref(), Some("openai-api-key"));
        assert_eq!(normalize("mcp-github-token").as_deref(), Some("mcp-github-token"));
        assert_eq!(normalize("a/b"), None);
        assert_eq!(normalize(""), None);
    }

    #[tokio::test]
    async fn the_environment_is_served_and_rotation_keeps_the_previous_version() {
        let provider = LocalProvider::open(environment(&[("openai-api-key", "sk-env")]), None).await.unwrap();
        let mut changes = provider.changes().unwrap();
        let first = provider.get("openai-api-key", None).await.unwrap();
        assert_eq!((text(&first), first.info.version.as_str()), ("sk-env", "1"));

        let rotation = provider.put("openai-api-key", SecretValue::from("sk-new".to_owned())).await.unwrap();
        assert_eq!(rotation.current.version, "2");
        assert_eq!(rotation.previous.map(|previous| previous.version).as_deref(), Some("1"));
        assert_eq!(text(&provider.get("openai-api-key", None).await.unwrap()), "sk-new");
        assert_eq!(text(&provider.get("openai-api-key", Some("1")).await.unwrap()), "sk-env");
        let change = changes.try_recv().unwrap();
        assert_eq!(
            (change.kind, change.version.as_str(), change.previous_version.as_deref()),
            (ChangeKind::Rotated, "2", Some("1"))
        );

        assert_eq!(
            provider.get("openai-api-key", Some("9")).await.unwrap_err(),
            ProviderError::VersionNotFound { name: "openai-api-key".to_owned(), version: "9".to_owned() }
        );
        assert_eq!(
            provider.get("missing", None).await.unwrap_err(),
            ProviderError::NotFound { name: "missing".to_owned() }
        );
    }

    #[tokio::test]
    async fn the_file_wins_is_watched_and_takes_rotations() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("secrets.env");
        std::fs::write(&path, "OPENAI_API_KEY=sk-file\nmcp-token=t1\n").unwrap();
        let provider =
            LocalProvider::open(environment(&[("openai-api-key", "sk-env")]), Some(path.clone())).await.unwrap();
        let mut changes = provider.changes().unwrap();
        assert_eq!(text(&provider.get("openai-api-key", None).await.unwrap()), "sk-file");
        let listed: Vec<String> = provider.list("").await.unwrap().into_iter().map(|info| info.name).collect();
        assert_eq!(listed, ["mcp-token", "openai-api-key"]);
        assert_eq!(provider.list("mcp").await.unwrap().len(), 1);

        // Edited by hand: one rotated, one removed (the environment's value comes back for
        // a name the environment has).
        std::fs::write(&path, "OPENAI_API_KEY=sk-file-2\n").unwrap();
        provider.reload().await.unwrap();
        let mut seen = [changes.try_recv().unwrap(), changes.try_recv().unwrap()];
        seen.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!((seen[0].name.as_str(), seen[0].kind), ("mcp-token", ChangeKind::Deleted));
        assert_eq!((seen[1].name.as_str(), seen[1].kind), ("openai-api-key", ChangeKind::Rotated));
        assert!(matches!(provider.get("mcp-token", None).await, Err(ProviderError::NotFound { .. })));

        // A rotation is written back, keeping the variable's spelling.
        let rotation = provider.put("openai-api-key", SecretValue::from("sk-rotated".to_owned())).await.unwrap();
        assert_eq!(rotation.current.version, "3");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "OPENAI_API_KEY=\"sk-rotated\"\n");

        // A broken edit keeps the values last read.
        std::fs::write(&path, "not a pair\n").unwrap();
        assert!(provider.reload().await.is_err());
        assert_eq!(text(&provider.get("openai-api-key", None).await.unwrap()), "sk-rotated");
    }

    #[tokio::test]
    async fn a_json_file_is_read_and_written_as_json() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("secrets.json");
        std::fs::write(&path, r#"{"anthropic-api-key": "a1"}"#).unwrap();
        let provider = LocalProvider::open(BTreeMap::new(), Some(path.clone())).await.unwrap();
        assert_eq!(text(&provider.get("anthropic-api-key", None).await.unwrap()), "a1");
        provider.put("jwt-secret-key", SecretValue::from("j".to_owned())).await.unwrap();
        let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written, serde_json::json!({"anthropic-api-key": "a1", "jwt-secret-key": "j"}));

        std::fs::write(&path, r#"{"a": 1}"#).unwrap();
        let error = provider.reload().await.unwrap_err().to_string();
        assert!(error.contains("values must be strings"), "{error}");
    }
}
