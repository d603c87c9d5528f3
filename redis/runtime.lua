-- Records a cluster-wide runtime settings change (`PATCH /v1/runtime?cluster=true`) in
-- K:runtime and publishes its notice on K:ch:control, in one step. Pub/sub is at most once: a node
-- whose subscription was down when the notice went out reads K:runtime when it subscribes again
-- and applies every setting changed after the version it last saw (src/cluster/redis/runtime.rs).
--
-- KEYS[1] K:runtime
-- ARGV[1] the publishing command: PUBLISH, or SPUBLISH on a Redis Cluster (K:ch:control carries
--         the cluster's hash tag, so it is in the slot of KEYS[1])
-- ARGV[2] K:ch:control
-- ARGV[3] the notice (a MessagePack `Runtime`)
-- ARGV[4] the node that made the change
-- ARGV[5] now (unix ms)
-- ARGV[6] a new epoch, kept only if K:runtime does not exist: a K:runtime created again (Redis
--         lost its data, or someone deleted it) starts a history whose versions are not
--         comparable with the old one's
-- ARGV[7..] setting, value, setting, value, ...
--
-- Returns { version, epoch }: the version of this change, and the history it belongs to.
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[6])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
for i = 7, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1], ARGV[i] .. ':version', version)
end
redis.call('HSET', KEYS[1], 'changed_by', ARGV[4], 'changed_at', ARGV[5])
redis.call(ARGV[1], ARGV[2], ARGV[3])
return { version, redis.call('HGET', KEYS[1], 'epoch') }
