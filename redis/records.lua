-- Applies one batch of a node's lifecycle records, exactly once, in one step.
--
-- A batch whose reply did not come back in time (Redis paused, its link black-holed) is sent
-- again, on another connection; when Redis comes back it may run both copies. Each batch carries
-- the writing process's run id and a sequence number, and the last one applied is kept in the
-- node's hash, so the second copy (or a copy held up behind later batches) does nothing: every
-- `opened` and `closed` event reaches K:events once.
--
-- KEYS[1]  K:node:{node} (fields `records_run`, `records_seq`: the last batch applied;
--          `records_reaped`: what it returned)
-- ARGV[1]  K: (the key prefix)
-- ARGV[2]  the node id
-- ARGV[3]  the writing process's run id (random at start: a restarted node starts again at 1)
-- ARGV[4]  the batch's sequence number (1, 2, ... within the run)
-- ARGV[5]  --events-max (K:events is trimmed to about that many entries)
-- Returns the ids of the closed sockets whose `closed` the cluster had recorded already (it reaped
-- them while their node was cut off): their node does not announce them to the upstreams again.
-- A copy already applied returns what the first copy returned.
--
-- ARGV[6…] the records, each a kind and its fields:
--          'o', id, remote, local, connected_at, tls_server_name
--                                                 a socket opened (`tls_server_name` empty: none)
--          'r', id, remote, local, connected_at, tls_server_name
--                                                 a socket the cluster reaped while its node was
--                                                 cut off is announced again (`resumed`)
--          'c', id, reason, at                    a socket closed (no event when the cluster
--                                                 already recorded its `closed`: it was reaped)
--          'l', id, n, name1, value1, …           a socket's labels are now these n pairs
local prefix, node, run, seq, events_max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local applied = redis.call('HMGET', KEYS[1], 'records_run', 'records_seq', 'records_reaped')
if applied[1] == run and tonumber(applied[2] or '0') >= seq then
  -- The answer the first copy got, for the writer that missed it (it retries only its last
  -- batch).
  local again = {}
  if tonumber(applied[2]) == seq and applied[3] then
    for id in string.gmatch(applied[3], '[^,]+') do
      again[#again + 1] = id
    end
  end
  return again
end

local node_sockets = prefix .. 'node:' .. node .. ':sockets'
local reaped = prefix .. 'node:' .. node .. ':reaped'
local function event(kind, socket, at, reason, ...)
  redis.call('XADD', prefix .. 'events', 'MAXLEN', '~', events_max, '*',
    'type', kind, 'socket', socket, 'node', node, 'at', at, 'reason', reason, ...)
end

local already_closed = {}
local i = 6
while i <= #ARGV do
  local kind, id = ARGV[i], ARGV[i + 1]
  local socket = prefix .. 'socket:' .. id
  if kind == 'o' or kind == 'r' then
    local connected_at = ARGV[i + 4]
    redis.call('HSET', socket, 'node', node, 'remote', ARGV[i + 2], 'local', ARGV[i + 3],
      'connected_at', connected_at)
    redis.call('HSETNX', socket, 'last_seen', connected_at)
    if ARGV[i + 5] ~= '' then
      redis.call('HSET', socket, 'tls_server_name', ARGV[i + 5])
    end
    redis.call('SADD', node_sockets, id)
    redis.call('ZADD', prefix .. 'sockets', connected_at, id)
    if kind == 'o' then
      event('opened', id, connected_at, '')
    elseif redis.call('SREM', reaped, id) == 1 then
      event('opened', id, connected_at, '', 'resumed', '1')
    end
    i = i + 6
  elseif kind == 'c' then
    redis.call('DEL', socket)
    redis.call('SREM', node_sockets, id)
    redis.call('ZREM', prefix .. 'sockets', id)
    if redis.call('SREM', reaped, id) == 0 then
      event('closed', id, ARGV[i + 3], ARGV[i + 2])
    else
      already_closed[#already_closed + 1] = id
    end
    i = i + 4
  elseif kind == 'l' then
    -- The complete labels replace the old ones in one step; nothing if the socket is gone.
    local n = tonumber(ARGV[i + 2])
    if redis.call('EXISTS', socket) == 1 then
      for _, f in ipairs(redis.call('HKEYS', socket)) do
        if string.sub(f, 1, 6) == 'label:' then
          redis.call('HDEL', socket, f)
        end
      end
      for j = 0, n - 1 do
        redis.call('HSET', socket, 'label:' .. ARGV[i + 3 + 2 * j], ARGV[i + 4 + 2 * j])
      end
    end
    i = i + 3 + 2 * n
  else
    return redis.error_reply('records.lua: unknown record kind ' .. tostring(kind))
  end
end

redis.call('HSET', KEYS[1], 'records_run', run, 'records_seq', seq,
  'records_reaped', table.concat(already_closed, ','))
return already_closed
