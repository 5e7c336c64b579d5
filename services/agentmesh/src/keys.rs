//! `agentmesh keys`: manage API keys in the gateway's PostgreSQL key store.
//!
//! ```text
//! agentmesh keys create --user U [--tenant T] [--tier default|authenticated|premium] [--scope S]... [--name N]
//! agentmesh keys list [--user U] [--tenant T] [--include-revoked]
//! agentmesh keys revoke <ID | PREFIX | KEY>
//! ```
//!
//! `create` prints the new key alone on stdout (so `KEY=$(agentmesh keys create ...)`
//! works) and its metadata on stderr; the key is never shown again. Without `--scope` the
//! key gets the default scopes: every non-admin scope of the contract (see
//! `agentmesh_gateway::auth::keys`). `revoke` takes the key's id, its visible prefix as
//! listed (or enough of it to be unambiguous), or the full key.
//!
//! The store is the one the gateway uses: PostgreSQL from `DB_URL` / `DB_*`, schema
//! `gateway` or `GATEWAY_DB_SCHEMA`. The commands refuse to run unless `USE_DATABASE=true`
//! (keys in memory would vanish with the command). These commands act across tenants:
//! whoever can run them with the database credentials administers every key.

use std::io::Write as _;

use agentmesh_gateway::auth::keys::{self, KeyError, KeyHash, KeySettings, NewApiKey, VISIBLE_RANDOM_CHARS};
use agentmesh_gateway::auth::store::{self, ApiKeyStore, Cursor, KeyQuery, PostgresKeyStore, StoreError};
use agentmesh_gateway::auth::{ApiKeyRecord, Clock as _, SystemClock};
use agentmesh_runtime::auth::Tier;
use agentmesh_runtime::config::StorageBackend;
use agentmesh_runtime::{Config, ServerError};
use clap::Subcommand;
use uuid::Uuid;

/// Fewest characters after the key prefix that `revoke` accepts as a prefix.
const MIN_PREFIX_CHARS: usize = 4;

/// `agentmesh keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it once (stdout); metadata goes to stderr.
    Create {
        /// The user the key authenticates as.
        #[arg(long, value_name = "USER")]
        user: String,
        /// The user's tenant (empty: single tenant).
        #[arg(long, value_name = "TENANT", default_value = "")]
        tenant: String,
        /// Rate-limit tier: default, authenticated or premium.
        #[arg(long, value_name = "TIER", default_value = "default", value_parser = parse_tier)]
        tier: Tier,
        /// A scope to grant (repeatable); none grants every non-admin scope.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A label.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List keys' metadata (never the keys), newest first.
    List {
        /// Only this user's keys.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only this tenant's keys.
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke a key: it stops working immediately.
    Revoke {
        /// The key's id, its listed prefix (or an unambiguous start of it), or the key.
        #[arg(value_name = "ID_OR_PREFIX")]
        key: String,
    },
}

/// Why a `keys` command failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Starting the process failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The configured storage is not PostgreSQL.
    #[error(
        "API keys must be stored in PostgreSQL, but the configured storage is {0}: set USE_DATABASE=true and \
         DB_URL (or DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD); keys kept in memory would vanish when \
         this command exits"
    )]
    NotPersistent(&'static str),
    /// The key could not be made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing matches the id or prefix.
    #[error("no API key matches {0:?}")]
    NotFound(String),
    /// Several keys match the prefix.
    #[error("{input:?} matches {count} API keys: give more of the prefix, or the id")]
    Ambiguous {
        /// What was given.
        input: String,
        /// How many keys match.
        count: usize,
    },
    /// Too little of a prefix.
    #[error("give the key's id, or at least {0} characters of its prefix")]
    PrefixTooShort(usize),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

fn parse_tier(raw: &str) -> Result<Tier, String> {
    Tier::parse(raw).ok_or_else(|| "expected default, authenticated or premium".to_owned())
}

/// Runs one `keys` command against the configured PostgreSQL key store.
pub async fn run(config: Config, command: KeysCommand) -> Result<(), KeysError> {
    match config.storage {
        StorageBackend::Postgres => {}
        StorageBackend::Memory => return Err(KeysError::NotPersistent("memory")),
        StorageBackend::Redis => return Err(KeysError::NotPersistent("Redis (sessions only)")),
    }
    let store = PostgresKeyStore::connect(&config.database, &store::schema(&config)?).await?;
    let settings = KeySettings::from_config(&config.security);
    match command {
        KeysCommand::Create { user, tenant, tier, scopes, name } => {
            create(&store, &settings, NewApiKey { user_id: user, tenant_id: tenant, tier, scopes, name }).await
        }
        KeysCommand::List { user, tenant, include_revoked } => list(&store, user, tenant, include_revoked).await,
        KeysCommand::Revoke { key } => revoke(&store, &settings, &key).await,
    }
}

async fn create(store: &PostgresKeyStore, settings: &KeySettings, new: NewApiKey) -> Result<(), KeysError> {
    let created = keys::create_key(store, settings, new, SystemClock.now()).await?;
    let record = &created.record;
    let mut stderr = std::io::stderr().lock();
    writeln!(stderr, "Created API key {} ({}) for user {:?}", record.id, record.prefix, record.user_id)?;
    writeln!(stderr, "  tenant: {:?}, tier: {}, scopes: {}", record.tenant_id, record.tier, record.scopes.join(" "))?;
    writeln!(stderr, "Store the key now: it cannot be shown again.")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", created.secret.expose())?;
    stdout.flush()?;
    Ok(())
}

async fn list(
    store: &PostgresKeyStore,
    user: Option<String>,
    tenant: Option<String>,
    include_revoked: bool,
) -> Result<(), KeysError> {
    let mut query = KeyQuery { tenant_id: tenant, user_id: user, include_revoked, limit: 100, offset: 0, after: None };
    let mut rows = vec![header()];
    loop {
        let page = store.list(&query).await?;
        rows.extend(page.items.iter().map(row));
        match page.items.last() {
            Some(last) if page.items.len() == query.limit as usize => {
                query.after = Some(Cursor { created_at: last.created_at, id: last.id });
            }
            _ => break,
        }
    }
    let mut stdout = std::io::stdout().lock();
    write_table(&mut stdout, &rows)?;
    Ok(())
}

fn header() -> Vec<String> {
    ["ID", "PREFIX", "USER", "TENANT", "TIER", "STATUS", "CREATED", "LAST USED", "NAME", "SCOPES"]
        .map(str::to_owned)
        .to_vec()
}

fn row(key: &ApiKeyRecord) -> Vec<String> {
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(|| "-".to_owned(), |at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    };
    vec![
        key.id.to_string(),
        key.prefix.clone(),
        key.user_id.clone(),
        if key.tenant_id.is_empty() { "-".to_owned() } else { key.tenant_id.clone() },
        key.tier.to_string(),
        if key.is_active() { "active".to_owned() } else { "revoked".to_owned() },
        time(Some(key.created_at)),
        time(key.last_used_at),
        key.name.clone().unwrap_or_else(|| "-".to_owned()),
        key.scopes.join(","),
    ]
}

/// Columns padded to their widest cell, the last one unpadded.
fn write_table(out: &mut impl std::io::Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The one key `input` names: an id, a full key, or a start of a visible prefix.
async fn resolve(store: &PostgresKeyStore, settings: &KeySettings, input: &str) -> Result<ApiKeyRecord, KeysError> {
    if let Ok(id) = Uuid::try_parse(input) {
        return store.get(id).await?.ok_or_else(|| KeysError::NotFound(input.to_owned()));
    }
    let visible = settings.prefix.len() + VISIBLE_RANDOM_CHARS;
    if settings.is_key(input) && input.len() > visible {
        // A full key: found by its hash, and never repeated beyond its visible prefix.
        let found = store.find_by_hash(&KeyHash::of(input)).await?;
        return found.ok_or_else(|| KeysError::NotFound(settings.visible_prefix(input)));
    }
    let minimum = settings.prefix.len() + MIN_PREFIX_CHARS;
    if input.len() < minimum {
        return Err(KeysError::PrefixTooShort(minimum));
    }
    let mut matches = store.find_by_prefix(input).await?;
    match matches.len() {
        0 => Err(KeysError::NotFound(input.to_owned())),
        1 => Ok(matches.remove(0)),
        count => Err(KeysError::Ambiguous { input: input.to_owned(), count }),
    }
}

async fn revoke(store: &PostgresKeyStore, settings: &KeySettings, input: &str) -> Result<(), KeysError> {
    let key = resolve(store, settings, input).await?;
    let revoked =
        store.revoke(None, key.id, SystemClock.now()).await?.ok_or_else(|| KeysError::NotFound(key.prefix.clone()))?;
    let mut stdout = std::io::stdout().lock();
    match (key.revoked_at, revoked.revoked_at) {
        (Some(at), _) => writeln!(stdout, "API key {} ({}) was already revoked at {at}", key.id, key.prefix)?,
        _ => writeln!(stdout, "Revoked API key {} ({}) of user {:?}", key.id, key.prefix, key.user_id)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            vec!["aaa".to_owned(), "b".to_owned(), "last".to_owned()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A    BB  C\naaa  b   last\n");
    }

    #[test]
    fn tiers_parse_by_name() {
        assert_eq!(parse_tier("premium"), Ok(Tier::Premium));
        assert!(parse_tier("gold").is_err());
    }
}
