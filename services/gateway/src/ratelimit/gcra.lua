-- GCRA rate-limit check of the agentmesh gateway: one atomic step for one key.
-- The same arithmetic as Gcra::step in gcra.rs (see ratelimit/mod.rs); keep them identical.
--
-- KEYS[1]  the key; holds its theoretical arrival time (TAT), integer microseconds on
--          this server's clock, and expires when the TAT is reached (the key is idle then)
-- ARGV[1]  emission interval I = floor(window / limit), microseconds, >= 1
-- ARGV[2]  burst tolerance = I * (limit - 1), microseconds
-- Returns  {allowed (1 | 0), now, tat}: the server's time and the key's TAT afterwards,
--          both integer microseconds (exact: every value stays below 2^53).
--
-- Time comes from Redis, never from the caller, so gateway replicas with skewed clocks
-- share one timeline. TIME is non-deterministic, so before Redis 5 the script must opt in
-- to effects replication; later versions always replicate effects and accept the call.
if redis.replicate_commands then
  redis.replicate_commands()
end

local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

-- A missing (or unreadable) key is an idle one.
local tat = tonumber(redis.call('GET', KEYS[1]) or '')
if tat == nil or tat < now then
  tat = now
end

if tat - now > tolerance then
  return {0, now, tat}
end

tat = tat + interval
-- %d: tostring would print 16-digit numbers in exponent form and lose digits.
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
return {1, now, tat}
