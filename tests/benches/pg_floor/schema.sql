-- The least a one-step agent run must keep in PostgreSQL, as plain tables: a session row,
-- messages with the indexes the session API needs (conversation order, trigram search),
-- the run, and an outbox for the events. Fewer columns and indexes than agentmesh's own
-- schemas, so the numbers pgbench gets on it are an upper bound for any service on top.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE sessions (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    message_count integer NOT NULL DEFAULT 0,
    last_activity timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_owner_last_activity ON sessions (owner, last_activity DESC);

CREATE TABLE messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id bigint NOT NULL REFERENCES sessions (id),
    role text NOT NULL,
    content text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX messages_conversation ON messages (session_id, created_at, id);
CREATE INDEX messages_content_trgm ON messages USING gin (content gin_trgm_ops);

CREATE TABLE runs (
    id bigint PRIMARY KEY,
    session_id bigint NOT NULL,
    status text NOT NULL,
    checkpoint text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_active ON runs (session_id) WHERE status IN ('queued', 'running');

CREATE TABLE outbox (
    seq bigserial PRIMARY KEY,
    topic text NOT NULL,
    payload bytea NOT NULL
);

-- One session per pgbench client at most (the scripts pick among 64).
INSERT INTO sessions (id, owner) SELECT g, 'user-' || g FROM generate_series(1, 64) AS g;
