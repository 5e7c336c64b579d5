-- Stores the response of a claimed idempotency key. ARGV[4] = idempotency key,
-- ARGV[5] = encoded response, ARGV[6] = retention (ms). A claim that already lapsed is
-- left alone (another request may own the key by now). Returns { 'ok' }.
local key = PREFIX .. 'idempotency:' .. esc(TENANT) .. ':' .. esc(USER) .. ':' .. esc(ARGV[4])
if redis.call('EXISTS', key) == 1 then
  redis.call('HSET', key, 'response', ARGV[5])
  redis.call('PEXPIRE', key, ARGV[6])
end
return { 'ok' }
