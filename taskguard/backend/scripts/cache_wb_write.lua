--[[ cache_wb_write.lua: a write-behind set or delete, in one call (docs/caching.md).

KEYS: value (the cached copy), stream (the partition's write-behind stream), dirty (the
      partition's dirty index: key -> stream id of the key's newest queued write).
ARGV: key, codec, capacity (entries a stream may hold; 0 = unbounded), deleted ("1"/"0"),
      ttl_ms (the cached copy's expiry, milliseconds), header (the cached copy's prefix),
      payload (the encoded value; "" for a delete).
Returns: {1, id}: queued as stream entry id; the cached copy is set (deleted for a delete)
         and the dirty index points at id.
         {0, xlen, dirty_id or false}: refused, nothing changed: the stream holds `capacity`
         entries or more; dirty_id is the key's newest queued write, if any.
--]]

local key, codec, capacity = ARGV[1], ARGV[2], tonumber(ARGV[3])
if capacity > 0 then
  local xlen = redis.call("XLEN", KEYS[2])
  if xlen >= capacity then
    return {0, xlen, redis.call("HGET", KEYS[3], key)}
  end
end

local id
if ARGV[4] == "1" then
  id = redis.call("XADD", KEYS[2], "*", "k", key, "d", "1", "c", codec)
  redis.call("DEL", KEYS[1])
else
  id = redis.call("XADD", KEYS[2], "*", "k", key, "v", ARGV[7], "c", codec)
  redis.call("SET", KEYS[1], ARGV[6] .. ARGV[7], "PX", ARGV[5])
end
redis.call("HSET", KEYS[3], key, id)
return {1, id}
