--[[ cache_wb_settle.lua: after a write went straight to the store (Redis refused or lost
the queued write, the queue was full, a write-through's cache update failed), forget the
key's cached copy and queued write, unless a write at least as new was queued meanwhile.

KEYS: value (the cached copy), dirty (the partition's dirty index; may not exist).
ARGV: key, ms, rest: the direct write's version, ms * 1000000 + rest (a stream id
      "<ms>-<seq>" is version ms * 1000000 + seq; split because Lua numbers are doubles).
Returns: 1 settled: the copy is deleted and so is a dirty mark naming an older write
         (reads now go to the store, which holds the direct write);
         0 the key's queued write is at least as new as the direct one: it is the value,
         nothing changed.
Needs no memory (HGET, DEL, HDEL): it works while Redis refuses writes with OOM.
--]]

local current = redis.call("HGET", KEYS[2], ARGV[1])
if current then
  local dash = string.find(current, "-", 1, true)
  local ms = tonumber(string.sub(current, 1, dash - 1))
  local seq = tonumber(string.sub(current, dash + 1))
  local direct_ms, direct_rest = tonumber(ARGV[2]), tonumber(ARGV[3])
  if ms > direct_ms or (ms == direct_ms and seq >= direct_rest) then
    return 0
  end
  redis.call("HDEL", KEYS[2], ARGV[1])
end
redis.call("DEL", KEYS[1])
return 1
