-- The gateway's own tables: API keys (stored hashed) and refresh-token state.
-- They live in the gateway's schema (`gateway`, or GATEWAY_DB_SCHEMA), which every pooled
-- connection puts first on its search_path.
--
-- * `key_hash` is the SHA-256 of the full key: keys are 192+ bits of CSPRNG output, so a
--   fast unsalted hash is safe and lets a key be found in one unique-index lookup. The key
--   itself is never stored; `prefix` (e.g. `sk-3f9aQ_x1`) is kept in clear for listings.
-- * Ids and timestamps come from the gateway (UUID v7, microsecond UTC): no defaults.
-- * `refresh_tokens` holds one row per refresh token (its JWT `jti`). Rotation marks the
--   presented token used and inserts its successor in the same family; presenting a used
--   token again revokes the family. `api_key_id` has no foreign key on purpose: static
--   development keys (SECURITY_API_KEYS) have ids but no row. Expired rows are purged.

CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    key_hash     bytea       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    prefix       text        NOT NULL,
    user_id      text        NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 255),
    tenant_id    text        NOT NULL CHECK (char_length(tenant_id) <= 255),
    tier         text        NOT NULL CHECK (tier IN ('default', 'authenticated', 'premium')),
    scopes       text[]      NOT NULL,
    name         text        CHECK (char_length(name) <= 255),
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Listing newest first within a tenant, optionally for one user.
CREATE INDEX api_keys_tenant_created ON api_keys (tenant_id, created_at DESC, id DESC);
CREATE INDEX api_keys_tenant_user_created ON api_keys (tenant_id, user_id, created_at DESC, id DESC);

CREATE TABLE refresh_tokens (
    jti        uuid        PRIMARY KEY,
    family_id  uuid        NOT NULL,
    api_key_id uuid        NOT NULL,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
