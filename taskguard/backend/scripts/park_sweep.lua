--[[ park_sweep.lua: what no release handed back: lots whose recheck time came (a holder
died, its lease expired), and hand-backs whose message never arrived (the publisher died
between taking and publishing, or the message was lost).

lib/park.lua is concatenated before this file.
KEYS: 1. msgs  2. meta  3. due  4. out
ARGV: 1. handoff_ms  2. out_ttl_ms  3. batch (lots and late tickets looked at, each)
Returns: the payloads to publish (late ones again: their first copy to arrive runs).
--]]

local k = { msgs = KEYS[1], meta = KEYS[2], due = KEYS[3], out = KEYS[4] }
local now = park_now_ms()
local handoff, deadline, batch = tonumber(ARGV[1]), now + tonumber(ARGV[2]), tonumber(ARGV[3])
local payloads = {}
for _, lot in ipairs(redis.call('ZRANGEBYSCORE', k.due, '-inf', now, 'LIMIT', 0, batch)) do
  for _, payload in ipairs(park_take(lot, k, now, handoff, deadline)) do
    payloads[#payloads + 1] = payload
  end
end
for _, ticket in ipairs(redis.call('ZRANGEBYSCORE', k.out, '-inf', now, 'LIMIT', 0, batch)) do
  local payload = redis.call('HGET', k.msgs, ticket)
  if payload then
    redis.call('ZADD', k.out, deadline, ticket)
    payloads[#payloads + 1] = payload
  else
    redis.call('ZREM', k.out, ticket)
  end
end
return payloads
