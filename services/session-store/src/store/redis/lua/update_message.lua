-- Patches a message and bumps its updated_at. ARGV[4] = ttl (ms), ARGV[5] = message id,
-- ARGV[6] = content, ARGV[7] = content lowercased, ARGV[8] = role, ARGV[9] = metadata
-- JSON (each optional). Returns { 'ok', message hash } or { 'not_found' }.
local ttl, id = tonumber(ARGV[4]), ARGV[5]
local key = message_key(id)
local session = redis.call('HGET', key, 'session_id')
if not session or not owned(session) then return { 'not_found' } end
local content, lowered, role, metadata = opt(ARGV[6]), opt(ARGV[7]), opt(ARGV[8]), opt(ARGV[9])
local now_us, now_ms = clock()
if content then redis.call('HSET', key, 'content', content, 'content_lc', lowered or content) end
if role then redis.call('HSET', key, 'role', role) end
if metadata then redis.call('HSET', key, 'metadata', metadata) end
redis.call('HSET', key, 'updated_at', int(now_us))
touch(session, label_of(session), now_ms, ttl)
return { 'ok', redis.call('HGETALL', key) }
