--[[ cache_wb_settle.lua: after a write-behind write went straight to the store (queue full),
forget the key's cached copy and queued write, unless a newer write was queued meanwhile.

KEYS: value (the cached copy), dirty (the partition's dirty index).
ARGV: key, seen_id (the key's queued write seen when the queue refused the write; "" = none).
Returns: 1 settled (reads now go to the store, which holds the newer direct write);
         0 a newer write was queued since: it is the value, nothing changed.
--]]

local current = redis.call("HGET", KEYS[2], ARGV[1]) or ""
if current ~= ARGV[2] then
  return 0
end
redis.call("DEL", KEYS[1])
if current ~= "" then
  redis.call("HDEL", KEYS[2], ARGV[1])
end
return 1
