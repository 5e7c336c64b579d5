-- Appends a message. ARGV[4] = ttl (ms), ARGV[5] = session id, ARGV[6] = message id,
-- ARGV[7] = role, ARGV[8] = content, ARGV[9] = content lowercased (for search),
-- ARGV[10] = metadata JSON, ARGV[11] = tool_calls JSON, ARGV[12] = parent id (optional),
-- ARGV[13] = tool_call_id (optional).
-- Returns { 'ok', message hash }, { 'not_found' } or { 'invalid_parent' }.
local ttl, session, id = tonumber(ARGV[4]), ARGV[5], ARGV[6]
if not owned(session) then return { 'not_found' } end
local key = message_key(id)

-- The id is chosen by the caller before the first attempt: finding it means this is a
-- retry of an applied attempt, which must not count the message twice.
if redis.call('EXISTS', key) == 1 then
  if redis.call('HGET', key, 'session_id') ~= session then return { 'not_found' } end
  return { 'ok', redis.call('HGETALL', key) }
end

local parent = opt(ARGV[12])
if parent and redis.call('HGET', message_key(parent), 'session_id') ~= session then
  return { 'invalid_parent' }
end

local now_us, now_ms = clock()
local at = int(now_us)
local skey = session_key(session)
local label = label_of(session)
redis.call('HSET', key, 'id', id, 'session_id', session, 'role', ARGV[7], 'content', ARGV[8],
  'content_lc', ARGV[9], 'metadata', ARGV[10], 'tool_calls', ARGV[11], 'created_at', at, 'updated_at', at)
local tool_call_id = opt(ARGV[13])
if tool_call_id then redis.call('HSET', key, 'tool_call_id', tool_call_id) end
if parent then
  redis.call('HSET', key, 'parent', parent)
  redis.call('ZADD', replies_key(session), 0, parent .. ':' .. id)
end
redis.call('ZADD', messages_key(session), at, id)
redis.call('HINCRBY', skey, 'message_count', 1)
-- The latest append wins even if the clock stepped back.
if now_us > tonumber(redis.call('HGET', skey, 'last_activity')) then
  redis.call('HSET', skey, 'last_activity', at)
  index(session, label, 'last_activity', at)
end
local horizon = touch(session, label, now_ms, ttl)
redis.call('PEXPIREAT', key, int(horizon))
return { 'ok', redis.call('HGETALL', key) }
