//! The Lua scripts that make every multi-key write of the Redis store atomic, and how they
//! are loaded and run.
//!
//! Each script is `lua/common.lua` (key layout, TTL and index helpers) followed by its own
//! body. They are loaded with `SCRIPT LOAD` on connect and run with `EVALSHA`; when Redis
//! has lost its script cache (restart, `SCRIPT FLUSH`) the `NOSCRIPT` answer makes the
//! call load the script again and retry once, within the same attempt.

use fred::prelude::{Error as FredError, LuaInterface, Pool, Value};

/// Helpers every script starts with.
const COMMON: &str = include_str!("lua/common.lua");

/// One loaded script.
#[derive(Debug)]
pub(super) struct Script {
    /// Names the script in errors.
    pub(super) name: &'static str,
    /// Full source: common helpers + body.
    source: String,
    /// SHA-1 digest Redis reported when loading it.
    sha: String,
}

impl Script {
    fn new(name: &'static str, body: &str) -> Self {
        Self { name, source: format!("{COMMON}\n{body}"), sha: String::new() }
    }

    async fn load(&mut self, pool: &Pool) -> Result<(), FredError> {
        self.sha = pool.script_load(self.source.clone()).await?;
        Ok(())
    }

    /// Runs the script once with `args` (no keys: scripts build their keys from the prefix).
    pub(super) async fn run(&self, pool: &Pool, args: Vec<Value>) -> Result<Value, FredError> {
        match pool.evalsha(self.sha.clone(), Vec::<String>::new(), args.clone()).await {
            Err(error) if error.details().starts_with("NOSCRIPT") => {
                let sha: String = pool.script_load(self.source.clone()).await?;
                pool.evalsha(sha, Vec::<String>::new(), args).await
            }
            result => result,
        }
    }
}

/// Every script of the store.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) create_sessions: Script,
    pub(super) update_session: Script,
    pub(super) delete_sessions: Script,
    pub(super) list_sessions: Script,
    pub(super) create_message: Script,
    pub(super) get_message: Script,
    pub(super) update_message: Script,
    pub(super) delete_message: Script,
    pub(super) list_messages: Script,
    pub(super) claim: Script,
    pub(super) complete: Script,
    pub(super) release: Script,
}

impl Scripts {
    /// Loads every script into Redis's script cache.
    pub(super) async fn load(pool: &Pool) -> Result<Self, FredError> {
        let mut scripts = Self {
            create_sessions: Script::new("create_sessions", include_str!("lua/create_sessions.lua")),
            update_session: Script::new("update_session", include_str!("lua/update_session.lua")),
            delete_sessions: Script::new("delete_sessions", include_str!("lua/delete_sessions.lua")),
            list_sessions: Script::new("list_sessions", include_str!("lua/list_sessions.lua")),
            create_message: Script::new("create_message", include_str!("lua/create_message.lua")),
            get_message: Script::new("get_message", include_str!("lua/get_message.lua")),
            update_message: Script::new("update_message", include_str!("lua/update_message.lua")),
            delete_message: Script::new("delete_message", include_str!("lua/delete_message.lua")),
            list_messages: Script::new("list_messages", include_str!("lua/list_messages.lua")),
            claim: Script::new("claim", include_str!("lua/claim.lua")),
            complete: Script::new("complete", include_str!("lua/complete.lua")),
            release: Script::new("release", include_str!("lua/release.lua")),
        };
        for script in [
            &mut scripts.create_sessions,
            &mut scripts.update_session,
            &mut scripts.delete_sessions,
            &mut scripts.list_sessions,
            &mut scripts.create_message,
            &mut scripts.get_message,
            &mut scripts.update_message,
            &mut scripts.delete_message,
            &mut scripts.list_messages,
            &mut scripts.claim,
            &mut scripts.complete,
            &mut scripts.release,
        ] {
            script.load(pool).await?;
        }
        Ok(scripts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fred::prelude::{Builder, ClientLike, Config};

    use super::*;

    #[tokio::test]
    async fn a_script_missing_from_the_cache_is_loaded_again() {
        let Some(url) = agentmesh_testkit::require(agentmesh_testkit::Service::Redis).await else { return };
        let pool = Builder::from_config(Config::from_url(&url).unwrap()).build_pool(1).unwrap();
        pool.init().await.unwrap();
        let mut script = Script::new("echo", "return { 'ok', ARGV[4] }");
        // As after a Redis restart: the digest we hold is not in the server's cache.
        script.sha = "0".repeat(40);
        let args: Vec<Value> = ["p:", "t", "u", "hello"].into_iter().map(Value::from).collect();
        let reply = script.run(&pool, args).await.unwrap();
        assert_eq!(reply, Value::Array(vec!["ok".into(), "hello".into()]));
        pool.quit().await.unwrap();
    }
}
