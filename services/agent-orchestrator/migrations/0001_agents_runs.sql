-- Agents, runs and checkpoints: what agent-orchestrator owns.
--
-- * Ids and timestamps come from the store or its caller (UUID v7, microsecond-truncated
--   UTC); no column defaults invent them. Lists are newest first by id.
-- * An agent's name is unique among its owner's agents; names compare byte-wise.
-- * Runs outlive their agent (they are history): `agent_id` is not a foreign key.
-- * "One holder per session" is the partial unique index `runs_session_holder`: at most
--   one run of a session has `holds_session`, so two replicas admitting runs on one
--   session cannot both start one. `held_since` is when the holder got the session.
-- * An idempotency key names one run of its owner (`runs_user_key`).
-- * Structured values the store reads and writes whole (principal, request, usage,
--   error, pending calls, metadata) are jsonb.

CREATE TABLE agents (
    id            uuid        PRIMARY KEY,
    user_id       text        NOT NULL,
    name          text        COLLATE "C" NOT NULL,
    description   text,
    system_prompt text,
    model         jsonb       NOT NULL DEFAULT '{}',
    tools         text[]      NOT NULL DEFAULT '{}',
    approval      jsonb       NOT NULL DEFAULT '{}',
    concurrency   text        NOT NULL CHECK (concurrency IN ('reject', 'enqueue', 'interrupt')),
    metadata      jsonb       NOT NULL DEFAULT '{}',
    status        text        NOT NULL CHECK (status IN ('idle', 'processing', 'waiting', 'error', 'completed')),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT agents_user_name_key UNIQUE (user_id, name)
);

-- ListAgents: an owner's agents, newest first.
CREATE INDEX agents_user_id ON agents (user_id, id DESC);

CREATE TABLE runs (
    id                  uuid        PRIMARY KEY,
    agent_id            uuid        NOT NULL,
    session_id          uuid        NOT NULL,
    user_id             text        NOT NULL,
    principal           jsonb       NOT NULL,
    request             jsonb       NOT NULL,
    status              text        NOT NULL
        CHECK (status IN ('queued', 'running', 'requires_action', 'completed', 'failed', 'cancelled')),
    user_message_id     uuid,
    response_message_id uuid,
    usage               jsonb       NOT NULL DEFAULT '{}',
    error               jsonb,
    step_count          integer     NOT NULL DEFAULT 0,
    pending_tool_calls  jsonb       NOT NULL DEFAULT '[]',
    idempotency_key     text,
    last_sequence       bigint      NOT NULL DEFAULT 0,
    metadata            jsonb       NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    completed_at        timestamptz,
    lease_owner         text,
    lease_expires_at    timestamptz,
    holds_session       boolean     NOT NULL,
    held_since          timestamptz
);

-- One holder per session.
CREATE UNIQUE INDEX runs_session_holder ON runs (session_id) WHERE holds_session;
-- One run per owner and idempotency key.
CREATE UNIQUE INDEX runs_user_key ON runs (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- ListSessionRuns: a session's runs, newest first.
CREATE INDEX runs_session_id ON runs (session_id, id DESC);
-- The queue of a session: its queued runs, oldest first.
CREATE INDEX runs_session_queue ON runs (session_id, created_at, id) WHERE status = 'queued';
-- An agent's derived status: its unfinished runs, and its last finished one.
CREATE INDEX runs_agent_status ON runs (agent_id, status);
CREATE INDEX runs_agent_completed ON runs (agent_id, completed_at DESC, id DESC) WHERE completed_at IS NOT NULL;
-- claim_abandoned_runs: running runs by lease expiry, and session holders never started.
CREATE INDEX runs_lease_expiry ON runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_unstarted_holders ON runs (held_since) WHERE status = 'queued' AND holds_session;

-- The latest checkpoint of each run.
CREATE TABLE run_checkpoints (
    run_id     uuid        PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    step       integer     NOT NULL,
    checkpoint jsonb       NOT NULL,
    saved_at   timestamptz NOT NULL
);
