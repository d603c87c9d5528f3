-- A reap job's `closed` announcements to the upstreams, exactly once across the cluster, in
-- batches (DESIGN §3, "Lifecycle, exactly once"). One live node at a time owns a job (a lease);
-- when its owner dies, the lease runs out and another node carries on where it stopped.
--
-- KEYS[1] K:reap:{job}        list: the reaped sockets not yet announced
-- KEYS[2] K:reap:{job}:owner  string: the node announcing them, with the lease as its expiry
-- KEYS[3] K:reap:{job}:sent   integer: how many at the head of the list an owner may have
--                             handed out already (written before it hands them out)
-- KEYS[4] K:reaps             sorted set: the jobs
-- ARGV[1] 'take' or 'done'
-- ARGV[2] the calling node's id
-- ARGV[3] the lease (ms)
-- ARGV[4] take: the batch size; done: how many of the batch were handed out
-- ARGV[5] the job id
--
-- take: returns false when another node owns the job; {-1} when the job is finished (and
--       removes it); else {sent, id1, id2, ...}: the next batch, of which the first `sent` may
--       have been announced by a previous owner (they go out flagged `redelivered`).
-- done: drops the batch from the list; returns 0 when the lease was lost (another node owns
--       the job now and announces the batch again, flagged), 1 otherwise.
local mode, me, lease, n, job = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= me then
  if mode == 'take' then return false end
  return 0
end
redis.call('SET', KEYS[2], me, 'PX', lease)
if mode == 'done' then
  redis.call('LTRIM', KEYS[1], n, -1)
  redis.call('SET', KEYS[3], 0)
  return 1
end
local ids = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #ids == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], job)
  return {-1}
end
local sent = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('SET', KEYS[3], #ids)
local reply = {sent}
for _, id in ipairs(ids) do
  reply[#reply + 1] = id
end
return reply
