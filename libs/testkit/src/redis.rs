//! A test's own corner of the shared Redis: every key a test writes starts with a prefix
//! unique to it, and [`RedisPrefix`] deletes those keys when dropped — also when the test
//! panics — so parallel tests never see each other's keys and nothing is left behind.
//! Keys are found with `SCAN MATCH` (never `KEYS`, which blocks the server).

use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config, Error, KeysInterface};
use futures::TryStreamExt as _;

/// Longest the cleanup on drop may take before the keys are left to their TTLs.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client for `url`.
pub async fn connect(url: &str) -> Result<Client, Error> {
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    Ok(client)
}

/// Every key starting with `prefix`.
pub async fn keys(client: &Client, prefix: &str) -> Result<Vec<String>, Error> {
    let keys: Vec<_> = client.scan_buffered(format!("{prefix}*"), Some(500), None).try_collect().await?;
    Ok(keys.into_iter().map(|key| String::from_utf8_lossy(key.as_bytes()).into_owned()).collect())
}

/// The keys under one test's prefix; deletes them when dropped.
#[derive(Debug)]
pub struct RedisPrefix {
    url: String,
    prefix: String,
}

impl RedisPrefix {
    /// Claims `prefix` (make it unique, e.g. from [`crate::unique_name`]) on the Redis at `url`.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self { url: url.into(), prefix: prefix.into() }
    }

    /// The claimed prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys under the prefix with their remaining TTL in milliseconds (`-1`: none).
    pub async fn keys_with_ttl(&self) -> Result<Vec<(String, i64)>, Error> {
        let client = connect(&self.url).await?;
        let mut found = Vec::new();
        for key in keys(&client, &self.prefix).await? {
            let ttl: i64 = client.pttl(key.as_str()).await?;
            found.push((key, ttl));
        }
        client.quit().await?;
        Ok(found)
    }

    /// Deletes the keys under the prefix; how many there were.
    pub async fn delete_all(&self) -> Result<usize, Error> {
        delete_prefix(&self.url, &self.prefix).await
    }
}

/// Deletes every key starting with `prefix`; how many there were.
async fn delete_prefix(url: &str, prefix: &str) -> Result<usize, Error> {
    let client = connect(url).await?;
    let found = keys(&client, prefix).await?;
    for chunk in found.chunks(500) {
        let _deleted: i64 = client.del(chunk.to_vec()).await?;
    }
    client.quit().await?;
    Ok(found.len())
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // Drop cannot await, and may run while a runtime unwinds: clean up on a thread with
        // a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                tokio::time::timeout(CLEANUP_TIMEOUT, delete_prefix(&url, &prefix))
                    .await
                    .map_err(|_| std::io::Error::other("timed out"))?
                    .map_err(std::io::Error::other)
            })
        });
        if !matches!(cleanup.join(), Ok(Ok(_))) {
            eprintln!("warning: the test's Redis keys under {} are left to their TTLs", self.prefix);
        }
    }
}
