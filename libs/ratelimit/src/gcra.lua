-- agentmesh GCRA rate limiter: one atomic step for one key, a check or an adjustment.
-- The same arithmetic as Gcra::step in gcra.rs (see the crate docs); keep them identical.
--
-- KEYS[1]  the key; holds its theoretical arrival time (TAT), integer microseconds on
--          this server's clock, and expires when the TAT is reached (the key is idle then)
-- ARGV[1]  increment, microseconds: cost * window / quota; negative only for a refund
-- ARGV[2]  window, microseconds: the most budget a key may have in use
-- ARGV[3]  1: adjust unconditionally (debit or refund); 0: check (admit only if it fits)
-- Returns  {admitted (1 | 0), now, tat}: the server's time and the key's TAT afterwards,
--          both integer microseconds (exact: every value stays below 2^53).
--
-- Time comes from Redis, never from the caller, so replicas with skewed clocks share one
-- timeline. TIME is non-deterministic, so before Redis 5 the script must opt in to effects
-- replication; later versions always replicate effects and accept the call.
if redis.replicate_commands then
  redis.replicate_commands()
end

local increment = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local forced = ARGV[3] == '1'

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

-- A missing (or unreadable) key is an idle one.
local tat = tonumber(redis.call('GET', KEYS[1]) or '')
if tat == nil or tat < now then
  tat = now
end

local next_tat = tat + increment
if forced then
  -- A refund never goes below idle; a debit overdraws by one window at most.
  if next_tat < now then
    next_tat = now
  end
  if next_tat - now > 2 * window then
    next_tat = now + 2 * window
  end
elseif next_tat - now > window then
  return {0, now, tat}
end

if next_tat > now then
  -- %d: tostring would print 16-digit numbers in exponent form and lose digits.
  redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
else
  redis.call('DEL', KEYS[1])
end
return {1, now, next_tat}
