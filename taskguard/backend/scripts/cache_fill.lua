--[[ cache_fill.lua: cache a loaded value, and release the single-flight lock we hold.

KEYS: value (the cached copy), dirty (the partition's dirty index), flight (the key's
      single-flight lock).
ARGV: key, cached (the new cached copy; "" = store nothing, only release the lock),
      ttl_ms (milliseconds), only_if_absent ("1": keep an existing cached copy),
      check_dirty ("1": store nothing while a write of the key is queued: the loaded row
      is older than that write), token (our flight lock's owner token; "" = none held).
Returns: 1 if the copy was stored, 0 if not. The flight lock is deleted only if its owner
         is still `token`.
--]]

local stored = 0
if ARGV[2] ~= "" then
  local keep = ARGV[4] == "1" and redis.call("EXISTS", KEYS[1]) == 1
  local dirty = ARGV[5] == "1" and redis.call("HEXISTS", KEYS[2], ARGV[1]) == 1
  if not keep and not dirty then
    redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
    stored = 1
  end
end
if ARGV[6] ~= "" and redis.call("GET", KEYS[3]) == ARGV[6] then
  redis.call("DEL", KEYS[3])
end
return stored
