--[[ drain_ack.lua: after a batch is committed to the store, forget it in Redis.

KEYS: [1] the partition's stream, [2] its dirty index.
ARGV: [1] the consumer group, [2] n (keys written), then n pairs (key, stream id: the
      newest entry of that key in the batch), then the ids of every entry of the batch.
Returns: the number of entries acknowledged.
Touches: HDEL dirty[key] only while it still names that id (a newer write of the key keeps
its mark, so a read miss keeps consulting the queue); XACK and XDEL every id.
--]]

local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local key, id = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  if redis.call('HGET', KEYS[2], key) == id then
    redis.call('HDEL', KEYS[2], key)
  end
end
local acked = 0
local first = 3 + 2 * n
local chunk = 500
for i = first, #ARGV, chunk do
  local last = math.min(i + chunk - 1, #ARGV)
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, i, last))
end
return acked
