-- Reaps a dead node, atomically and exactly once (DESIGN §4, "Heartbeat").
--
-- KEYS[1] K:nodes
-- ARGV[1] key base "K:" (prefix:cluster:)
-- ARGV[2] the dead node's id
-- ARGV[3] the heartbeat deadline (unix ms): the node is dead only if its score is older
-- ARGV[4] now (unix ms)
-- ARGV[5] the reaping node's id
-- ARGV[6] --events-max (approximate stream length)
--
-- Returns the number of sockets reaped, or -1 when the node was not dead (any more), or already
-- reaped by another node: only the first caller whose check passes removes it, so every socket
-- gets exactly one `closed` event with reason `node_lost`.
local base, dead, deadline, now, reaper, max = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local score = redis.call('ZSCORE', KEYS[1], dead)
if not score or tonumber(score) >= deadline then
  return -1
end
redis.call('ZREM', KEYS[1], dead)
local set = base .. 'node:' .. dead .. ':sockets'
local sockets = redis.call('SMEMBERS', set)
for _, id in ipairs(sockets) do
  redis.call('DEL', base .. 'socket:' .. id)
  redis.call('ZREM', base .. 'sockets', id)
  redis.call('XADD', base .. 'events', 'MAXLEN', '~', max, '*',
    'type', 'closed', 'socket', id, 'node', dead, 'at', now, 'reason', 'node_lost')
end
redis.call('DEL', set, base .. 'node:' .. dead)
redis.call('XADD', base .. 'events', 'MAXLEN', '~', max, '*',
  'type', 'node_down', 'socket', '', 'node', dead, 'at', now, 'reason', 'reaped by ' .. reaper)
return #sockets
