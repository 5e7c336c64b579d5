-- Deletes a message: its replies lose their parent, the session's count drops by one.
-- ARGV[4] = ttl (ms), ARGV[5] = message id.
-- Returns { 'ok', message hash as it was } or { 'not_found' }.
local ttl, id = tonumber(ARGV[4]), ARGV[5]
local key = message_key(id)
local session = redis.call('HGET', key, 'session_id')
if not session or not owned(session) then return { 'not_found' } end
local record = redis.call('HGETALL', key)
local replies = replies_key(session)

-- Reply index members are 'parent:child'; this message's replies share the prefix 'id:'.
local parent = redis.call('HGET', key, 'parent')
if parent then redis.call('ZREM', replies, parent .. ':' .. id) end
local first, last = '[' .. id .. ':', '(' .. id .. ';'
for _, member in ipairs(redis.call('ZRANGEBYLEX', replies, first, last)) do
  redis.call('HDEL', message_key(string.sub(member, #id + 2)), 'parent')
end
redis.call('ZREMRANGEBYLEX', replies, first, last)

redis.call('DEL', key)
redis.call('ZREM', messages_key(session), id)
redis.call('HINCRBY', session_key(session), 'message_count', -1)
local _, now_ms = clock()
touch(session, label_of(session), now_ms, ttl)
return { 'ok', record }
