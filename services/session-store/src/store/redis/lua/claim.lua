-- Claims an idempotency key for a request. ARGV[4] = idempotency key, ARGV[5] = request
-- fingerprint (32 bytes), ARGV[6] = lease (ms).
-- Returns { 'acquired' }, { 'replay', response }, { 'mismatch' } or { 'in_progress' }.
local key = PREFIX .. 'idempotency:' .. esc(TENANT) .. ':' .. esc(USER) .. ':' .. esc(ARGV[4])
local entry = redis.call('HMGET', key, 'fingerprint', 'response')
if entry[1] then
  if entry[1] ~= ARGV[5] then return { 'mismatch' } end
  if entry[2] then return { 'replay', entry[2] } end
  return { 'in_progress' }
end
redis.call('HSET', key, 'fingerprint', ARGV[5])
redis.call('PEXPIRE', key, ARGV[6])
return { 'acquired' }
