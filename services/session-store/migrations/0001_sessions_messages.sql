-- Sessions and messages: the seed's tables, owned by a principal (tenant_id, owner_id).
--
-- Deviations from the seed, on purpose:
-- * Ids and timestamps come from the store (UUID v7, microsecond-truncated UTC), so one
--   clock orders ids, created_at, last_activity and updated_at, and a record reads back
--   exactly as the write returned it. No column defaults invent ids or times.
-- * Text lengths are the service's configurable validation limits, not VARCHAR caps that
--   would contradict a raised limit; `role` is checked against the four roles.
-- * `updated_at` triggers fire only for changes of the row's own fields (UPDATE OF ...),
--   so bumping `message_count` / `last_activity` on an append never touches `updated_at`,
--   and they only fill in `updated_at` when the writer did not set it (the store always
--   does; the trigger keeps manual SQL honest).
-- * `parent_message_id` is cleared when the parent is deleted (ON DELETE SET NULL), with
--   an index so that deleting a message does not scan the table for replies.

CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

CREATE TABLE sessions (
    id            uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    owner_id      text        NOT NULL,
    user_id       text,
    title         text,
    metadata      jsonb       NOT NULL DEFAULT '{}',
    message_count integer     NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    last_activity timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- Listing: one index per sort field, within the owner, ties broken by id. Both directions
-- use the same index (forward or backward scan); the optional user_id filter is applied
-- on top of the owner's range.
CREATE INDEX sessions_owner_created_at ON sessions (tenant_id, owner_id, created_at, id);
CREATE INDEX sessions_owner_updated_at ON sessions (tenant_id, owner_id, updated_at, id);
CREATE INDEX sessions_owner_last_activity ON sessions (tenant_id, owner_id, last_activity, id);

CREATE TABLE messages (
    id                uuid        PRIMARY KEY,
    session_id        uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    role              text        NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content           text        NOT NULL,
    metadata          jsonb       NOT NULL DEFAULT '{}',
    tool_calls        jsonb       NOT NULL DEFAULT '[]',
    parent_message_id uuid        REFERENCES messages (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

-- Conversation order (and the cascade from sessions).
CREATE INDEX messages_session_order ON messages (session_id, created_at, id);
-- Replies of a message, for ON DELETE SET NULL.
CREATE INDEX messages_parent ON messages (parent_message_id) WHERE parent_message_id IS NOT NULL;
-- Case-insensitive substring search (ILIKE '%...%').
CREATE INDEX messages_content_trgm ON messages USING gin (content public.gin_trgm_ops);

CREATE FUNCTION update_updated_at_column() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$;

CREATE TRIGGER update_sessions_updated_at
    BEFORE UPDATE OF user_id, title, metadata ON sessions
    FOR EACH ROW WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at)
    EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_messages_updated_at
    BEFORE UPDATE OF role, content, metadata, tool_calls ON messages
    FOR EACH ROW WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at)
    EXECUTE FUNCTION update_updated_at_column();
