-- Drops an unfinished claim of an idempotency key; a completed response stays.
-- ARGV[4] = idempotency key. Returns { 'ok' }.
local key = PREFIX .. 'idempotency:' .. esc(TENANT) .. ':' .. esc(USER) .. ':' .. esc(ARGV[4])
if redis.call('EXISTS', key) == 1 and redis.call('HEXISTS', key, 'response') == 0 then
  redis.call('DEL', key)
end
return { 'ok' }
