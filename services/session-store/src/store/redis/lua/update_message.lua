-- Patches a message and bumps its updated_at. ARGV[4] = ttl (ms), ARGV[5] = message id,
-- ARGV[6] = content, ARGV[7] = content lowercased, ARGV[8] = role, ARGV[9] = metadata
-- JSON, ARGV[10] = tool_calls JSON, ARGV[11] = tool_call_id ('+' alone removes it),
-- ARGV[12] = parent id ('+' alone removes it), ARGV[13] = the expected shape
-- 'role|content|tool_calls|tool_call_id' with 1/0 for set/empty (each optional).
-- Returns { 'ok', message hash }, { 'not_found' }, { 'conflict' } (the shape differs) or
-- { 'invalid_parent' } (not an earlier message of the same session).
local ttl, id = tonumber(ARGV[4]), ARGV[5]
local key = message_key(id)
local session = redis.call('HGET', key, 'session_id')
if not session or not owned(session) then return { 'not_found' } end
local content, lowered, role, metadata = opt(ARGV[6]), opt(ARGV[7]), opt(ARGV[8]), opt(ARGV[9])
local calls, call_id, parent, expect = opt(ARGV[10]), opt(ARGV[11]), opt(ARGV[12]), opt(ARGV[13])

if expect then
  local m = redis.call('HMGET', key, 'role', 'content', 'tool_calls', 'tool_call_id')
  local function flag(set) if set then return '1' end return '0' end
  local shape = m[1] .. '|' .. flag(m[2] ~= '') .. '|' .. flag(m[3] and m[3] ~= '[]') .. '|' .. flag(m[4])
  if shape ~= expect then return { 'conflict' } end
end

local replies = replies_key(session)
if parent and parent ~= '' then
  local here = redis.call('HMGET', key, 'created_at', 'id')
  local there = redis.call('HMGET', message_key(parent), 'session_id', 'created_at', 'id')
  local at, other = tonumber(here[1]), tonumber(there[2])
  local earlier = there[1] == session and (other < at or (other == at and there[3] < here[2]))
  if not earlier then return { 'invalid_parent' } end
end
if parent then
  local old = redis.call('HGET', key, 'parent')
  if old then redis.call('ZREM', replies, old .. ':' .. id) end
  if parent == '' then
    redis.call('HDEL', key, 'parent')
  else
    redis.call('HSET', key, 'parent', parent)
    redis.call('ZADD', replies, 0, parent .. ':' .. id)
  end
end

local now_us, now_ms = clock()
if content then redis.call('HSET', key, 'content', content, 'content_lc', lowered or content) end
if role then redis.call('HSET', key, 'role', role) end
if metadata then redis.call('HSET', key, 'metadata', metadata) end
if calls then redis.call('HSET', key, 'tool_calls', calls) end
if call_id == '' then redis.call('HDEL', key, 'tool_call_id') elseif call_id then
  redis.call('HSET', key, 'tool_call_id', call_id)
end
redis.call('HSET', key, 'updated_at', int(now_us))
touch(session, label_of(session), now_ms, ttl)
return { 'ok', redis.call('HGETALL', key) }
