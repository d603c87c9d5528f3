-- Sets a socket's labels in its hash: removes every `label:*` field, then writes the given ones,
-- in one step, so readers never see half of a change. Does nothing if the socket is gone.
--
-- KEYS[1] K:socket:{id}
-- ARGV    name, value, name, value, ... (the socket's complete labels)
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do
  if string.sub(f, 1, 6) == 'label:' then
    redis.call('HDEL', KEYS[1], f)
  end
end
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'label:' .. ARGV[i], ARGV[i + 1])
end
return 1
