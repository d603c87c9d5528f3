-- Refreshes a socket's `last_seen` and counters in K:socket:{id}, only if the hash exists, so a
-- refresh that races the socket's close never brings a dead socket's record back.
-- KEYS[1] = K:socket:{id}; ARGV = field, value, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
end
