-- Helpers shared by every script of the Redis session store; the store prepends this file
-- to each script body before SCRIPT LOAD (EVALSHA scripts cannot share functions).
--
-- Every script receives ARGV[1] = key prefix, ARGV[2] = owner tenant, ARGV[3] = owner
-- user, then its own arguments. Keys are built here from the prefix rather than passed in
-- KEYS because which keys a write touches (a session's messages, its label's indexes) is
-- only known inside the script; this needs a standalone (or sentinel) Redis.
--
-- Numbers cross the boundary as decimal text: timestamps are microseconds since the Unix
-- epoch (exact in a Lua double until the year 2255), expiry times are milliseconds.

local PREFIX, TENANT, USER = ARGV[1], ARGV[2], ARGV[3]

-- Escapes '%' and ':' so that user-chosen parts of key names cannot collide.
local function esc(text)
  return (string.gsub(text, '[%%:]', { ['%'] = '%25', [':'] = '%3A' }))
end

local OWNER = PREFIX .. 'owner_sessions:' .. esc(TENANT) .. ':' .. esc(USER)
-- Sessions of the owner by expiry time (ms), to find index entries of expired sessions.
local EXPIRES = OWNER .. ':expires'
-- The `user_id` label of each of the owner's labelled sessions (session id -> label).
local LABELS = OWNER .. ':labels'
local SORTS = { 'created_at', 'updated_at', 'last_activity' }

local function session_key(id) return PREFIX .. 'session:' .. id end
local function messages_key(id) return PREFIX .. 'session_messages:' .. id end
local function replies_key(id) return PREFIX .. 'session_replies:' .. id end
local function message_key(id) return PREFIX .. 'message:' .. id end
local function label_index(label) return OWNER .. ':label:' .. esc(label) end

-- An integer as exact decimal text (tostring switches to exponent notation past 14 digits).
local function int(n) return string.format('%.0f', n) end

-- The server's clock, in microseconds and milliseconds: one clock for every replica of
-- the service, so timestamps follow the order in which writes were applied.
local function clock()
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return us, math.floor(us / 1000)
end

-- Optional string arguments arrive as '-' (absent) or '+' followed by the value.
local function opt(arg)
  if string.sub(arg, 1, 1) == '+' then return string.sub(arg, 2) end
  return nil
end

-- Whether session `id` exists and belongs to the caller (another owner's = missing).
local function owned(id)
  local owner = redis.call('HMGET', session_key(id), 'tenant', 'owner')
  return owner[1] == TENANT and owner[2] == USER
end

-- The session's `user_id` label, or nil.
local function label_of(id)
  local label = redis.call('HGET', session_key(id), 'user_id')
  if label then return label end
  return nil
end

-- Puts session `id` at `at` in the owner's index for `sort` and in its label's.
local function index(id, label, sort, at)
  redis.call('ZADD', OWNER .. ':' .. sort, at, id)
  if label then redis.call('ZADD', label_index(label) .. ':' .. sort, at, id) end
end

-- Removes session `id` from every index of the owner.
local function unindex(id, label)
  for _, sort in ipairs(SORTS) do
    redis.call('ZREM', OWNER .. ':' .. sort, id)
    if label then redis.call('ZREM', label_index(label) .. ':' .. sort, id) end
  end
  redis.call('ZREM', EXPIRES, id)
  redis.call('HDEL', LABELS, id)
end

-- Session `id` was written at `now_ms`: it lives `ttl` ms from now. The session hash,
-- its message index and its reply index expire exactly then. Message keys expire at the
-- session's "horizon", pushed to now + 2 * ttl (touching every message once) only when
-- the session would otherwise outlive them, so an append stays O(1) amortised; a message
-- key outliving its session by up to one ttl is unreachable (every read checks the
-- session). The owner's index keys expire with the newest of their sessions. Returns the
-- horizon, for keys created after this call.
local function touch(id, label, now_ms, ttl)
  local expires_at = int(now_ms + ttl)
  local key = session_key(id)
  redis.call('PEXPIREAT', key, expires_at)
  redis.call('PEXPIREAT', messages_key(id), expires_at)
  redis.call('PEXPIREAT', replies_key(id), expires_at)
  local horizon = tonumber(redis.call('HGET', key, 'horizon') or '0')
  if horizon < now_ms + ttl then
    horizon = now_ms + 2 * ttl
    for _, message in ipairs(redis.call('ZRANGE', messages_key(id), 0, -1)) do
      redis.call('PEXPIREAT', message_key(message), int(horizon))
    end
    redis.call('HSET', key, 'horizon', int(horizon))
  end
  redis.call('ZADD', EXPIRES, expires_at, id)
  for _, sort in ipairs(SORTS) do
    redis.call('PEXPIREAT', OWNER .. ':' .. sort, expires_at)
    if label then redis.call('PEXPIREAT', label_index(label) .. ':' .. sort, expires_at) end
  end
  redis.call('PEXPIREAT', EXPIRES, expires_at)
  redis.call('PEXPIREAT', LABELS, expires_at)
  return horizon
end

-- Lazy cleanup: drops the index entries of the owner's sessions that expired, so that
-- listings and counts never include them. Costs O(log n) plus O(1) per expired session.
local function sweep(now_ms)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', EXPIRES, '-inf', int(now_ms))) do
    if redis.call('EXISTS', session_key(id)) == 0 then
      local label = redis.call('HGET', LABELS, id)
      unindex(id, label or nil)
    end
  end
end

-- Where a page starts in sorted set `zset` (rank in listing order): `offset`, or just
-- past the cursor (`key` = score as text, `id` = member; ties ordered by member).
local function start_of(zset, total, desc, offset, key, id)
  if key == '' then return offset end
  local below = redis.call('ZCOUNT', zset, '-inf', '(' .. key)
  local lt, le = 0, 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', zset, key, key)) do
    if member < id then lt = lt + 1 end
    if member <= id then le = le + 1 end
  end
  if desc then return total - (below + lt) end
  return below + le
end

