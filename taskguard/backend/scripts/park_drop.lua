--[[ park_drop.lua: a handed-back message was discarded unrun (revoked, expired): drop
its ticket, give back the room held for it, and hand the lot's next task back.

lib/park.lua is concatenated before this file.
KEYS: 1. lot  2. msgs  3. meta  4. due  5. out  6. the guard's state key
ARGV: 1. ticket  2. handoff_ms  3. out_ttl_ms
Returns: {1 if the ticket was still out (else 0), then the payloads to publish: the next
parked tasks the guard has room for}.
--]]

local k = { msgs = KEYS[2], meta = KEYS[3], due = KEYS[4], out = KEYS[5] }
local ticket, token = ARGV[1], ARGV[1] .. ':parked'
local removed = redis.call('ZREM', k.out, ticket)
redis.call('HDEL', k.msgs, ticket)
local kind = redis.call('TYPE', KEYS[6])['ok']
if kind == 'zset' then
  redis.call('ZREM', KEYS[6], token)
elseif kind == 'string' and redis.call('GET', KEYS[6]) == token then
  redis.call('DEL', KEYS[6])
end
local now = park_now_ms()
local reply = { removed }
for _, payload in ipairs(park_take(KEYS[1], k, now, tonumber(ARGV[2]), now + tonumber(ARGV[3]))) do
  reply[#reply + 1] = payload
end
return reply
