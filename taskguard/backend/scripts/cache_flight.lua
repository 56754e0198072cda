--[[ cache_flight.lua: take a key's single-flight lock, unless the value is already cached.

KEYS: value (the cached copy), flight (the key's single-flight lock).
ARGV: token (our owner token), ttl_ms (the lock's lifetime if we die while loading),
      force ("1": take the lock even though a copy is cached: an early refresh).
Returns: {1}: the lock is ours: load the value and cache it with cache_fill.lua.
         {0, cached, pttl_ms}: a copy is cached (not with force).
         {0, false, -2}: another caller holds the lock and is loading.
--]]

if ARGV[3] ~= "1" then
  local cached = redis.call("GET", KEYS[1])
  if cached then
    return {0, cached, redis.call("PTTL", KEYS[1])}
  end
end
if redis.call("SET", KEYS[2], ARGV[1], "NX", "PX", ARGV[2]) then
  return {1}
end
return {0, false, -2}
