-- Deletes the caller's sessions among ARGV[4..], with their messages and index entries.
-- Returns { 'ok', deleted id... }; ids of missing or foreign sessions are left out.
local out = { 'ok' }
for i = 4, #ARGV do
  local id = ARGV[i]
  if owned(id) then
    local label = label_of(id)
    for _, message in ipairs(redis.call('ZRANGE', messages_key(id), 0, -1)) do
      redis.call('DEL', message_key(message))
    end
    redis.call('DEL', session_key(id), messages_key(id), replies_key(id))
    unindex(id, label)
    out[#out + 1] = id
  end
end
return out
