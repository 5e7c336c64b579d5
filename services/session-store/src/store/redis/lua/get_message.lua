-- Reads a message of the caller. ARGV[4] = message id.
-- Returns { 'ok', message hash } or { 'not_found' }.
local key = message_key(ARGV[4])
local session = redis.call('HGET', key, 'session_id')
if not session or not owned(session) then return { 'not_found' } end
return { 'ok', redis.call('HGETALL', key) }
