use std::time::Duration;

use agentmesh_resilience::Preset;

use super::*;
use crate::auth::Tier;

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(None, pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
}

fn issue_variables(error: ConfigError) -> Vec<String> {
    error.issues.into_iter().map(|i| i.variable).collect()
}

const STRONG_KEY: &str = "q7Vx2pLm9Rt4Kc8Nw3Yb6Hf1Jd5Gs0Za";

/// A real (non-development) service key and the trusted-keys entry for it.
fn identity_keys() -> (String, String) {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let key = crate::auth::ServiceKey::from_seed(&[7; 32]);
    (encode(&[7; 32]), format!("gateway:{}", encode(key.verifying_key().as_bytes())))
}

/// `pairs` in production with real identity keys.
fn load_production(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let (service_key, trusted) = identity_keys();
    let mut all = vec![
        ("ENVIRONMENT", "production"),
        ("SECURITY_SERVICE_KEY", &service_key),
        ("SECURITY_TRUSTED_KEYS", &trusted),
    ];
    all.extend_from_slice(pairs);
    load(&all)
}

#[test]
fn embedded_defaults_run_without_any_variable() {
    let config = load(&[]).unwrap();
    assert_eq!(config.environment, Environment::Development);
    assert_eq!(config.storage, StorageBackend::Memory);
    assert_eq!(config.listen_addr(ServiceName::Gateway), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.endpoints.get(ServiceName::SessionStore).url, "http://127.0.0.1:50051");
    assert_eq!(config.security.secret_key.expose(), DEV_SECRET_KEY);
    assert_eq!(config.rate_limit.api_default_limit, 100);
    assert_eq!(config.rate_limit.create_session_limit, 10);
    assert_eq!(config.rate_limit.execute_agent_limit, 5);
    assert_eq!(config.redis.session_ttl, Duration::from_secs(3600));
    assert!(config.nats.url.is_none());
}

#[test]
fn seed_retry_and_breaker_numbers_are_the_defaults() {
    let r = load(&[]).unwrap().resilience;
    assert_eq!(
        (r.llm.retry.max_attempts, r.llm.retry.base_delay, r.llm.retry.max_delay),
        (3, Duration::from_secs(1), Duration::from_secs(60))
    );
    assert!((r.llm.retry.multiplier - 2.0).abs() < f64::EPSILON);
    assert_eq!((r.llm.breaker.failure_threshold, r.llm.breaker.recovery_timeout), (5, Duration::from_secs(60)));
    assert_eq!((r.database.retry.max_attempts, r.database.retry.base_delay), (5, Duration::from_millis(500)));
    assert!((r.database.retry.multiplier - 1.5).abs() < f64::EPSILON);
    assert_eq!(
        (r.database.breaker.failure_threshold, r.database.breaker.recovery_timeout),
        (3, Duration::from_secs(30))
    );
    assert_eq!((r.mcp.retry.base_delay, r.mcp.retry.max_delay), (Duration::from_secs(2), Duration::from_secs(120)));
    assert_eq!((r.mcp.breaker.failure_threshold, r.mcp.breaker.recovery_timeout), (3, Duration::from_secs(120)));
    assert_eq!((r.secret.retry.max_attempts, r.secret.retry.max_delay), (2, Duration::from_secs(10)));
}

#[test]
fn retry_and_circuit_variables_override_presets() {
    let config = load(&[
        ("RETRY_LLM_MAX_ATTEMPTS", "7"),
        ("RETRY_LLM_BASE_DELAY", "0.25"),
        ("CIRCUIT_DB_FAILURE_THRESHOLD", "2"),
        ("CIRCUIT_MCP_RECOVERY_TIMEOUT", "1.5"),
    ])
    .unwrap();
    assert_eq!(config.resilience.llm.retry.max_attempts, 7);
    assert_eq!(config.resilience.llm.retry.base_delay, Duration::from_millis(250));
    assert_eq!(config.resilience.database.breaker.failure_threshold, 2);
    assert_eq!(config.resilience.mcp.breaker.recovery_timeout, Duration::from_millis(1500));
}

#[test]
fn bulkhead_and_timeout_variables_override_presets() {
    let config = load(&[
        ("BULKHEAD_INTERNAL_MAX_CONCURRENCY", "1024"),
        ("BULKHEAD_INTERNAL_QUEUE_WAIT", "0.5"),
        ("TIMEOUT_LLM", "300"),
    ])
    .unwrap();
    let internal = &config.resilience.internal;
    assert_eq!((internal.max_concurrency, internal.max_queue_wait), (1024, Duration::from_millis(500)));
    assert_eq!(config.resilience.llm.timeout, Duration::from_secs(300));
    assert_eq!(config.resilience.database, Preset::database(), "untouched classes keep their preset");
    let names = issue_variables(load(&[("BULKHEAD_MCP_MAX_CONCURRENCY", "0"), ("TIMEOUT_DB", "0")]).unwrap_err());
    assert_eq!(names, ["TIMEOUT_DB", "BULKHEAD_MCP_MAX_CONCURRENCY"], "in the order the classes are read");
}

#[test]
fn every_bad_value_is_reported_at_once_by_name() {
    let error = load(&[
        ("DB_PORT", "not-a-port"),
        ("REDIS_PORT", "70000"),
        ("FEATURE_ENABLE_RETRIES", "perhaps"),
        ("OBSERVABILITY_TRACING_SAMPLE_RATE", "2"),
        ("SESSION_STORE_ADDR", "nowhere"),
        ("RETRY_MCP_MAX_ATTEMPTS", "0"),
    ])
    .unwrap_err();
    let text = error.to_string();
    let names = issue_variables(error);
    for expected in [
        "DB_PORT",
        "REDIS_PORT",
        "FEATURE_ENABLE_RETRIES",
        "OBSERVABILITY_TRACING_SAMPLE_RATE",
        "SESSION_STORE_ADDR",
        "RETRY_MCP_MAX_ATTEMPTS",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert_eq!(text.lines().count(), names.len() + 1, "one line per issue: {text}");
}

#[test]
fn production_refuses_dev_secret_wildcard_cors_memory_and_debug() {
    let names = issue_variables(
        load(&[
            ("ENVIRONMENT", "production"),
            ("SECURITY_SECRET_KEY", DEV_SECRET_KEY),
            ("SECURITY_CORS_ORIGINS", "[\"*\"]"),
            ("USE_MEMORY", "true"),
            ("DEBUG", "true"),
        ])
        .unwrap_err(),
    );
    for expected in ["SECURITY_SECRET_KEY", "SECURITY_CORS_ORIGINS", "USE_MEMORY", "DEBUG"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

#[test]
fn production_refuses_a_missing_or_weak_secret() {
    let missing = issue_variables(load_production(&[]).unwrap_err());
    assert_eq!(missing, ["SECURITY_SECRET_KEY"]);
    let weak = issue_variables(load_production(&[("SECURITY_SECRET_KEY", &"ab".repeat(20))]).unwrap_err());
    assert_eq!(weak, ["SECURITY_SECRET_KEY"]);
    let short = issue_variables(load(&[("SECURITY_SECRET_KEY", "short")]).unwrap_err());
    assert_eq!(short, ["SECURITY_SECRET_KEY"]);
}

#[test]
fn production_with_a_strong_secret_uses_persistent_storage() {
    let config = load_production(&[("SECURITY_SECRET_KEY", STRONG_KEY)]).unwrap();
    assert_eq!(config.storage, StorageBackend::Postgres);
    assert!(!config.debug);
    assert!((config.observability.tracing_sample_rate - 0.01).abs() < f64::EPSILON);
}

#[test]
fn urls_are_built_from_parts_or_taken_whole_and_never_debug_printed() {
    let config = load(&[("DB_PASSWORD", "hunter2"), ("DB_HOST", "db"), ("REDIS_PASSWORD", "s3cret")]).unwrap();
    assert_eq!(config.database.url().expose(), "postgres://postgres:hunter2@db:5432/ai_agent");
    assert_eq!(config.redis.url().expose(), "redis://:s3cret@localhost:6379/0");
    let printed = format!("{config:?}");
    assert!(!printed.contains("hunter2") && !printed.contains("s3cret") && !printed.contains(DEV_SECRET_KEY));
    let whole = load(&[("DB_URL", "postgres://x@y/z")]).unwrap();
    assert_eq!(whole.database.url().expose(), "postgres://x@y/z");
}

#[test]
fn host_and_port_set_the_gateway_and_service_variables_set_peers() {
    let config =
        load(&[("HOST", "0.0.0.0"), ("PORT", "9000"), ("SESSION_STORE_URL", "http://session-store:50051")]).unwrap();
    assert_eq!(config.listen_addr(ServiceName::Gateway), "0.0.0.0:9000".parse().unwrap());
    assert_eq!(config.listen_addr(ServiceName::SessionStore), "0.0.0.0:50051".parse().unwrap());
    assert_eq!(config.endpoints.get(ServiceName::SessionStore).url, "http://session-store:50051");
}

#[test]
fn storage_flags_select_one_backend() {
    assert_eq!(load(&[("USE_REDIS", "true")]).unwrap().storage, StorageBackend::Redis);
    assert_eq!(load(&[("USE_DATABASE", "1"), ("USE_REDIS", "1")]).unwrap().storage, StorageBackend::Postgres);
    let none = issue_variables(load(&[("USE_MEMORY", "false")]).unwrap_err());
    assert_eq!(none, ["USE_MEMORY"]);
}

#[test]
fn feature_flags_can_switch_retries_and_breakers_off_everywhere() {
    let config = load(&[("FEATURE_ENABLE_RETRIES", "false"), ("FEATURE_ENABLE_CIRCUIT_BREAKERS", "false")]).unwrap();
    let r = &config.resilience;
    for preset in [&r.llm, &r.database, &r.mcp, &r.secret, &r.internal] {
        assert_eq!(preset.retry.max_attempts, 1);
        assert_eq!(preset.breaker.failure_threshold, u32::MAX);
        assert!(preset.breaker.failure_rate.is_none());
    }
    let defaults = load(&[]).unwrap();
    assert_eq!(defaults.resilience.llm.retry.max_attempts, 3);
}

#[test]
fn static_api_keys_parse_and_bad_entries_are_named_without_echoing_keys() {
    let good = format!("sk-{}", "a1B2".repeat(8));
    let premium = format!("sk-{}", "Z_9-".repeat(9));
    let config = load(&[("SECURITY_API_KEYS", &format!(" {good}=alice , {premium}=bob:premium,"))]).unwrap();
    let keys = &config.security.api_keys;
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0].key.expose(), keys[0].user_id.as_str(), keys[0].tier), (good.as_str(), "alice", Tier::Default));
    assert_eq!((keys[1].user_id.as_str(), keys[1].tier), ("bob", Tier::Premium));
    assert!(!format!("{config:?}").contains(&good), "Debug must hide static keys");

    let short = "sk-tooShort";
    let entries = format!("{short}=a,{good}=b:gold,{good}=,no-equals-{good},{premium}=c,{premium}=d");
    let error = load(&[("SECURITY_API_KEYS", &entries)]).unwrap_err();
    let text = error.to_string();
    let messages: Vec<_> = error.issues.iter().filter(|i| i.variable == "SECURITY_API_KEYS").collect();
    assert_eq!(messages.len(), 5, "{text}");
    for (issue, n) in messages.iter().zip([1, 2, 3, 4, 6]) {
        assert!(issue.message.starts_with(&format!("entry {n}:")), "{issue}");
    }
    assert!(!text.contains(&good) && !text.contains(short) && !text.contains(&premium), "{text}");

    let production = issue_variables(
        load_production(&[("SECURITY_SECRET_KEY", STRONG_KEY), ("SECURITY_API_KEYS", &good)]).unwrap_err(),
    );
    assert_eq!(production, ["SECURITY_API_KEYS"]);
}

#[test]
fn rate_limit_redis_prefix_and_timeout_default_to_production_values_and_can_be_set() {
    let defaults = load(&[]).unwrap().rate_limit;
    assert_eq!(defaults.redis_prefix, "agentmesh:ratelimit:");
    assert_eq!(defaults.redis_timeout, Duration::from_millis(50));

    let set = load(&[("RATE_LIMIT_REDIS_PREFIX", "test_1234:"), ("RATE_LIMIT_REDIS_TIMEOUT", "1.5")]).unwrap();
    assert_eq!(set.rate_limit.redis_prefix, "test_1234:");
    assert_eq!(set.rate_limit.redis_timeout, Duration::from_millis(1500));

    let bad = issue_variables(load(&[("RATE_LIMIT_REDIS_TIMEOUT", "0")]).unwrap_err());
    assert_eq!(bad, ["RATE_LIMIT_REDIS_TIMEOUT"]);
    let bad = issue_variables(load(&[("RATE_LIMIT_REDIS_TIMEOUT", "soon")]).unwrap_err());
    assert_eq!(bad, ["RATE_LIMIT_REDIS_TIMEOUT"]);
}

#[test]
fn production_refuses_missing_or_development_service_keys_and_reads_key_files() {
    let missing =
        issue_variables(load(&[("ENVIRONMENT", "production"), ("SECURITY_SECRET_KEY", STRONG_KEY)]).unwrap_err());
    assert_eq!(missing, ["SECURITY_SERVICE_KEY", "SECURITY_TRUSTED_KEYS"]);

    use base64::Engine as _;
    let dev = crate::auth::ServiceKey::development(ServiceName::Gateway);
    let dev_public = base64::engine::general_purpose::STANDARD.encode(dev.verifying_key().as_bytes());
    let (service_key, _) = identity_keys();
    let refused = load(&[
        ("ENVIRONMENT", "production"),
        ("SECURITY_SECRET_KEY", STRONG_KEY),
        ("SECURITY_SERVICE_KEY", &service_key),
        ("SECURITY_TRUSTED_KEYS", &format!("gateway:{dev_public}")),
    ])
    .unwrap_err();
    assert_eq!(issue_variables(refused), ["SECURITY_TRUSTED_KEYS"]);

    let dir = std::env::temp_dir().join(format!("agentmesh-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (service_key, trusted) = identity_keys();
    std::fs::write(dir.join("key"), &service_key).unwrap();
    std::fs::write(dir.join("trusted"), trusted.replace(',', "\n")).unwrap();
    let config = load(&[
        ("ENVIRONMENT", "production"),
        ("SECURITY_SECRET_KEY", STRONG_KEY),
        ("SECURITY_SERVICE_KEY_FILE", dir.join("key").to_str().unwrap()),
        ("SECURITY_TRUSTED_KEYS_FILE", dir.join("trusted").to_str().unwrap()),
    ])
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(config.identity.service_key, Some(crate::auth::ServiceKey::from_seed(&[7; 32])));

    let bad = load(&[("SECURITY_SERVICE_KEY", "not a key"), ("SECURITY_TRUSTED_KEYS", "nobody:AAAA")]).unwrap_err();
    assert_eq!(
        bad.issues.iter().map(|i| i.variable.clone()).collect::<Vec<_>>(),
        ["SECURITY_SERVICE_KEY", "SECURITY_TRUSTED_KEYS"]
    );
    assert!(!bad.to_string().contains("not a key"), "{bad}");
}

#[test]
fn logs_are_text_on_a_terminal_and_json_elsewhere_unless_chosen() {
    let unset = load(&[]).unwrap().observability.log_format;
    assert_eq!(unset, LogFormat::Auto);
    assert_eq!((unset.resolve(true), unset.resolve(false)), (LogFormat::Text, LogFormat::Json));
    for (value, expected) in [("json", LogFormat::Json), ("text", LogFormat::Text), ("auto", LogFormat::Auto)] {
        let chosen = load(&[("OBSERVABILITY_LOG_FORMAT", value)]).unwrap().observability.log_format;
        assert_eq!(chosen, expected, "{value}");
    }
    let json = LogFormat::Json;
    assert_eq!((json.resolve(true), LogFormat::Text.resolve(false)), (LogFormat::Json, LogFormat::Text));
    let error = load(&[("OBSERVABILITY_LOG_FORMAT", "xml")]).unwrap_err();
    assert_eq!(issue_variables(error), ["OBSERVABILITY_LOG_FORMAT"]);
}
