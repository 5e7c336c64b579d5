-- Creates sessions, all or none. ARGV[4] = ttl (ms), ARGV[5] = count, then per session:
-- id, user_id (optional), title (optional), metadata (JSON text).
-- Returns { 'ok', session hash... } in request order.
local ttl, count = tonumber(ARGV[4]), tonumber(ARGV[5])
local FIRST, WIDTH = 6, 4
local out = { 'ok' }

-- The ids are chosen by the caller before the first attempt, so finding the first one
-- means this is a retry of an attempt that was applied but whose reply was lost.
if redis.call('EXISTS', session_key(ARGV[FIRST])) == 1 then
  for i = 0, count - 1 do
    local id = ARGV[FIRST + i * WIDTH]
    if owned(id) then out[#out + 1] = redis.call('HGETALL', session_key(id)) end
  end
  return out
end

local now_us, now_ms = clock()
local at = int(now_us)
for i = 0, count - 1 do
  local base = FIRST + i * WIDTH
  local id, label, title = ARGV[base], opt(ARGV[base + 1]), opt(ARGV[base + 2])
  local key = session_key(id)
  redis.call('HSET', key, 'id', id, 'tenant', TENANT, 'owner', USER, 'metadata', ARGV[base + 3],
    'message_count', '0', 'created_at', at, 'updated_at', at, 'last_activity', at)
  if label then
    redis.call('HSET', key, 'user_id', label)
    redis.call('HSET', LABELS, id, label)
  end
  if title then redis.call('HSET', key, 'title', title) end
  for _, sort in ipairs(SORTS) do index(id, label, sort, at) end
  touch(id, label, now_ms, ttl)
  out[#out + 1] = redis.call('HGETALL', key)
end
return out
