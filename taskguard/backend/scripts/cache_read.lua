--[[ cache_read.lua: look a key up in the cache, then (write-behind) in its queue.

KEYS: value (the cached copy); for a write-behind namespace also dirty (the partition's
      dirty index) and stream (the partition's write-behind stream).
ARGV: key.
Returns: {1, cached, pttl_ms}: the cached copy and its remaining time to live.
         {2, payload or false, deleted (1/0), codec}: no cached copy, but the key's newest
         write is still queued (not yet in the store): that write is the value.
         {0}: a miss; only now may the caller read the store.
--]]

local cached = redis.call("GET", KEYS[1])
if cached then
  return {1, cached, redis.call("PTTL", KEYS[1])}
end
if #KEYS < 3 then
  return {0}
end
local id = redis.call("HGET", KEYS[2], ARGV[1])
if not id then
  return {0}
end
local entries = redis.call("XRANGE", KEYS[3], id, id)
if #entries == 0 then
  return {0}  -- drained and deleted: the store has it
end
local fields = entries[1][2]
local payload, deleted, codec = false, 0, "json"
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == "v" then
    payload = fields[i + 1]
  elseif name == "d" and fields[i + 1] == "1" then
    deleted = 1
  elseif name == "c" then
    codec = fields[i + 1]
  end
end
return {2, payload, deleted, codec}
