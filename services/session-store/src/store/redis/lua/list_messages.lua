-- A page of a session's messages in (created_at, id) order, or the reverse. ARGV[4] =
-- session id, ARGV[5] = role (optional), ARGV[6] = search text lowercased (optional),
-- ARGV[7] = limit, ARGV[8] = offset, ARGV[9] = cursor key (µs) or '', ARGV[10] = cursor id,
-- ARGV[11] = 'asc' | 'desc'.
-- Returns { 'ok', total, has_more (0/1), message hash... } or { 'not_found' }.
--
-- Without filters a page costs O(log n + limit). With a role or search filter every
-- message of the session is examined (O(n), in one atomic step): search compares the
-- lowercased needle with the lowercased content stored beside each message, as a plain
-- byte substring, which on UTF-8 text is exactly a character substring match.
local session = ARGV[4]
if not owned(session) then return { 'not_found' } end
local role, needle = opt(ARGV[5]), opt(ARGV[6])
local limit, offset = tonumber(ARGV[7]), tonumber(ARGV[8])
local cursor_key, cursor_id = ARGV[9], ARGV[10]
local desc = ARGV[11] == 'desc'
local zset = messages_key(session)
local total, start, page = 0, offset, {}

if not role and not needle then
  total = redis.call('ZCARD', zset)
  start = start_of(zset, total, desc, offset, cursor_key, cursor_id)
  if start < total then
    page = redis.call(desc and 'ZREVRANGE' or 'ZRANGE', zset, int(start), int(start + limit - 1))
  end
else
  local matches = {}
  local after = nil
  if cursor_key ~= '' then after = tonumber(cursor_key) end
  if after then start = nil end
  local all = redis.call(desc and 'ZREVRANGE' or 'ZRANGE', zset, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    local id, score = all[i], tonumber(all[i + 1])
    local fields = redis.call('HMGET', message_key(id), 'role', 'content_lc')
    if (not role or fields[1] == role) and (not needle or (fields[2] and string.find(fields[2], needle, 1, true))) then
      matches[#matches + 1] = id
      if after and not start then
        local past
        if desc then
          past = score < after or (score == after and id < cursor_id)
        else
          past = score > after or (score == after and id > cursor_id)
        end
        if past then start = #matches - 1 end
      end
    end
  end
  total = #matches
  if not start then start = total end
  for i = start + 1, math.min(start + limit, total) do page[#page + 1] = matches[i] end
end

local out = { 'ok', total, (total - start > limit) and 1 or 0 }
for _, id in ipairs(page) do out[#out + 1] = redis.call('HGETALL', message_key(id)) end
return out
