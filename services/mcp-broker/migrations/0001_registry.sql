-- MCP servers and tools: the registry owned by mcp-broker.
--
-- * Ids and timestamps come from the store (UUID v7, microsecond-truncated UTC); no
--   column defaults invent them.
-- * Names sort and compare byte-wise (COLLATE "C"), which is the order the in-process
--   backend lists them in, and names are the listing cursor.
-- * Secrets are never stored: `authentication` and `stdio` hold secret *names*.
-- * A tool's server is a foreign key; the store deletes a server's tools itself (to queue
--   their `tool.deleted` events), ON DELETE CASCADE only keeps manual SQL consistent.
-- * `withdrawn` marks tools that discovery disabled because their server stopped
--   offering them, so they are enabled again when they come back.

CREATE TABLE mcp_servers (
    id                uuid        PRIMARY KEY,
    name              text        COLLATE "C" NOT NULL CONSTRAINT mcp_servers_name_key UNIQUE,
    description       text,
    endpoint          text        NOT NULL,
    authentication    jsonb       NOT NULL DEFAULT '{}',
    capabilities      text[]      NOT NULL DEFAULT '{}',
    health_check_url  text,
    enabled           boolean     NOT NULL,
    transport         text        NOT NULL CHECK (transport IN ('stdio', 'streamable_http', 'sse')),
    stdio             jsonb,
    tool_prefix       text,
    status            text        NOT NULL CHECK (status IN ('unknown', 'healthy', 'degraded', 'unhealthy')),
    last_health_check timestamptz,
    protocol_version  text        NOT NULL DEFAULT '',
    server_info       text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

CREATE TABLE tools (
    id            uuid        PRIMARY KEY,
    name          text        COLLATE "C" NOT NULL CONSTRAINT tools_name_key UNIQUE,
    description   text        NOT NULL,
    schema        jsonb       NOT NULL,
    mcp_server_id uuid        CONSTRAINT tools_mcp_server_id_fkey REFERENCES mcp_servers (id) ON DELETE CASCADE,
    enabled       boolean     NOT NULL,
    metadata      jsonb       NOT NULL DEFAULT '{}',
    title         text,
    output_schema jsonb,
    annotations   jsonb,
    remote_name   text,
    withdrawn     boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- A server's tools, by name (ListMcpServerTools, the mcp_server_id filter, discovery).
CREATE INDEX tools_server_name ON tools (mcp_server_id, name);
-- One stored tool per remote tool of a server.
CREATE UNIQUE INDEX tools_server_remote_name ON tools (mcp_server_id, remote_name) WHERE remote_name IS NOT NULL;
