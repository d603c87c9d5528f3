-- A reap job's `closed` announcements to the upstreams, exactly once across the cluster, in
-- batches (DESIGN §3, "Lifecycle, exactly once"). One live node at a time owns a job (a lease);
-- when its owner dies, the lease runs out and another node carries on where it stopped. The
-- owner takes batch after batch (at growing offsets) and hands them out, then, once they had the
-- time to be confirmed, drops what it handed out from the list.
--
-- KEYS[1] K:reap:{job}        list: the reaped sockets not yet announced
-- KEYS[2] K:reap:{job}:owner  string: the node announcing them, with the lease as its expiry
-- KEYS[3] K:reap:{job}:sent   integer: how many at the head of the list an owner may have
--                             handed out already (written before it hands them out)
-- KEYS[4] K:reaps             sorted set: the jobs
-- ARGV[1] 'take' or 'done'
-- ARGV[2] the calling node's id
-- ARGV[3] the lease (ms)
-- ARGV[4] take: the batch size; done: how many at the head were handed out and confirmed
-- ARGV[5] the job id
-- ARGV[6] take: the offset of the batch in the list
--
-- take: returns false when another node owns the job; {-1} when the job is finished (the list
--       is empty at offset 0; it removes the job); else {sent, id1, id2, ...}: the batch at the
--       offset (empty past the end), and how many at the head of the list may have been
--       announced before this call (by a previous owner: they go out flagged `redelivered`).
-- done: drops that many from the head of the list; returns 0 when the lease was lost (another
--       node owns the job now and announces them again, flagged), 1 otherwise.
local mode, me, lease, n, job = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local offset = tonumber(ARGV[6] or '0')
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= me then
  if mode == 'take' then return false end
  return 0
end
redis.call('SET', KEYS[2], me, 'PX', lease)
local sent = tonumber(redis.call('GET', KEYS[3]) or '0')
if mode == 'done' then
  redis.call('LTRIM', KEYS[1], n, -1)
  redis.call('SET', KEYS[3], math.max(0, sent - n))
  return 1
end
local ids = redis.call('LRANGE', KEYS[1], offset, offset + n - 1)
if #ids == 0 and offset == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], job)
  return {-1}
end
redis.call('SET', KEYS[3], math.max(sent, offset + #ids))
local reply = {sent}
for _, id in ipairs(ids) do
  reply[#reply + 1] = id
end
return reply
