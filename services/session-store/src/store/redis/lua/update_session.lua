-- Patches a session and bumps its updated_at. ARGV[4] = ttl (ms), ARGV[5] = session id,
-- ARGV[6] = user_id, ARGV[7] = title, ARGV[8] = metadata JSON (each optional).
-- Returns { 'ok', session hash } or { 'not_found' }.
local ttl, id = tonumber(ARGV[4]), ARGV[5]
if not owned(id) then return { 'not_found' } end
local key = session_key(id)
local label = label_of(id)
local new_label, title, metadata = opt(ARGV[6]), opt(ARGV[7]), opt(ARGV[8])
local now_us, now_ms = clock()
local at = int(now_us)

if new_label and new_label ~= label then
  local keys = redis.call('HMGET', key, 'created_at', 'updated_at', 'last_activity')
  for i, sort in ipairs(SORTS) do
    if label then redis.call('ZREM', label_index(label) .. ':' .. sort, id) end
    redis.call('ZADD', label_index(new_label) .. ':' .. sort, keys[i], id)
  end
  redis.call('HSET', key, 'user_id', new_label)
  redis.call('HSET', LABELS, id, new_label)
  label = new_label
end
if title then redis.call('HSET', key, 'title', title) end
if metadata then redis.call('HSET', key, 'metadata', metadata) end
redis.call('HSET', key, 'updated_at', at)
index(id, label, 'updated_at', at)
touch(id, label, now_ms, ttl)
return { 'ok', redis.call('HGETALL', key) }
