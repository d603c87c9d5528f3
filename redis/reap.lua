-- Reaps a dead node, atomically and exactly once (DESIGN §4, "Heartbeat").
--
-- KEYS[1] K:nodes
-- ARGV[1] key base "K:" (prefix:cluster:)
-- ARGV[2] the dead node's id
-- ARGV[3] the heartbeat the reaper watched stay unchanged for --node-ttl by its own clock (unix
--         ms, as the dead node wrote it); '' to reap whatever it is (a node restarted with the
--         same id reaping its own previous run)
-- ARGV[4] the run id to reap ('' for any): a restarted node reaps only its previous run
-- ARGV[5] now (unix ms, the reaper's clock: only the events' `at`)
-- ARGV[6] the reaping node's id
-- ARGV[7] --events-max (approximate stream length)
-- ARGV[8] a unique job id: the dead node's sockets still to be announced `closed` to the
--         upstreams wait in the list K:reap:{job}, listed in the sorted set K:reaps
--
-- Returns the number of sockets reaped, or -1 when the node was not dead (its heartbeat moved,
-- or it is another run), or was reaped by another node already: only the first caller whose
-- check passes removes it, so every socket gets exactly one `closed` event with reason
-- `node_lost`, in K:events here and, through the job, at the upstreams. The ids also go to
-- K:node:{dead}:reaped (kept a day), so that the node, if it was only cut off, announces the
-- sockets it still holds again (`opened` with `resumed`) and does not record a second `closed`
-- for those that closed meanwhile.
local base, dead, watched, want_run = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, reaper, max, job = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local node_key = base .. 'node:' .. dead
local set = base .. 'node:' .. dead .. ':sockets'
local score = redis.call('ZSCORE', KEYS[1], dead)
if watched ~= '' and (not score or tonumber(score) ~= tonumber(watched)) then
  return -1
end
local run = redis.call('HGET', node_key, 'run_id') or ''
if want_run ~= '' and run ~= want_run then
  return -1
end
if not score and redis.call('EXISTS', node_key) == 0 and redis.call('EXISTS', set) == 0 then
  return -1
end
redis.call('ZREM', KEYS[1], dead)
local sockets = redis.call('SMEMBERS', set)
local reaped = base .. 'node:' .. dead .. ':reaped'
for _, id in ipairs(sockets) do
  redis.call('DEL', base .. 'socket:' .. id)
  redis.call('ZREM', base .. 'sockets', id)
  redis.call('XADD', base .. 'events', 'MAXLEN', '~', max, '*',
    'type', 'closed', 'socket', id, 'node', dead, 'at', now, 'reason', 'node_lost')
  redis.call('SADD', reaped, id)
  redis.call('RPUSH', base .. 'reap:' .. job, id)
end
if #sockets > 0 then
  redis.call('EXPIRE', reaped, 86400)
  redis.call('ZADD', base .. 'reaps', now, job)
end
redis.call('DEL', set, node_key)
redis.call('XADD', base .. 'events', 'MAXLEN', '~', max, '*',
  'type', 'node_down', 'socket', '', 'node', dead, 'at', now, 'reason', 'reaped by ' .. reaper)
return #sockets
