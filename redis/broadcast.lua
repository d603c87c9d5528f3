-- Publishes a broadcast on the bus and reads, at the same instant, who should have received it
-- (DESIGN §3: a broadcast is OK once handed to every node).
--
-- KEYS[1] K:nodes
-- ARGV[1] the publishing command: PUBLISH, or SPUBLISH on a Redis Cluster (K:ch:broadcast
--         carries the cluster's hash tag, so it is in the slot of KEYS[1] and this script runs
--         on the primary that serves both)
-- ARGV[2] K:ch:broadcast
-- ARGV[3] the payload (a MessagePack `Broadcast`)
--
-- Returns { receivers, { member, ... } }: how many subscriptions received the message (each node
-- has exactly one on this channel), and the members of K:nodes when it was sent. One
-- script, so no node joins or leaves between the two: a node that leaves removes itself from
-- K:nodes before it unsubscribes, and a node joins K:nodes only once it is subscribed.
local receivers = redis.call(ARGV[1], ARGV[2], ARGV[3])
return { receivers, redis.call('ZRANGE', KEYS[1], 0, -1) }
