--[[ park.lua: park a refused task's message, or hand it (or the lot's head) back at once.

lib/park.lua is concatenated before this file.
KEYS: 1. lot  2. msgs  3. meta  4. due  5. out  6. the guard's state key
ARGV: 1. ticket  2. seq (FIFO position)  3. payload  4. mode ("slot"|"lease")
      5. limit  6. handoff_ms  7. out_ttl_ms
Returns: the payloads to publish now. The guard may have gained room between the
refusal and this call (a release that found no lot yet): then the lot's heads, this
ticket among them if it is first, are handed back here, so no slot stays idle.
--]]

local k = { msgs = KEYS[2], meta = KEYS[3], due = KEYS[4], out = KEYS[5] }
local now = park_now_ms()
redis.call('HSET', k.meta, KEYS[1],
  cjson.encode({ mode = ARGV[4], key = KEYS[6], limit = tonumber(ARGV[5]) }))
redis.call('ZREM', k.out, ARGV[1])
redis.call('HSET', k.msgs, ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return park_take(KEYS[1], k, now, tonumber(ARGV[6]), now + tonumber(ARGV[7]))
