-- A page of the caller's sessions. ARGV[4] = user_id filter (optional), ARGV[5] = sort
-- field, ARGV[6] = 'asc' | 'desc', ARGV[7] = limit, ARGV[8] = offset, ARGV[9] = cursor
-- key (µs) or '', ARGV[10] = cursor id.
-- Returns { 'ok', total, has_more (0/1), session hash... }.
local label, sort, desc = opt(ARGV[4]), ARGV[5], ARGV[6] == 'desc'
local limit, offset = tonumber(ARGV[7]), tonumber(ARGV[8])
local _, now_ms = clock()
sweep(now_ms)

local zset = (label and label_index(label) or OWNER) .. ':' .. sort
local total = redis.call('ZCARD', zset)
local start = start_of(zset, total, desc, offset, ARGV[9], ARGV[10])
local ids = {}
if start < total then
  ids = redis.call(desc and 'ZREVRANGE' or 'ZRANGE', zset, int(start), int(start + limit - 1))
end
local out = { 'ok', total, (total - start > limit) and 1 or 0 }
for _, id in ipairs(ids) do out[#out + 1] = redis.call('HGETALL', session_key(id)) end
return out
