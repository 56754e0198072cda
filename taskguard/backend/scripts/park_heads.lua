--[[ park_heads.lua: the tags with parked work whose time to be swept came (a spread key
schema on Redis Cluster; see taskguard/backend/parking.py).

KEYS: 1. heads (a sorted set: a tag's due key -> when to sweep it next, ms)
ARGV: 1. batch (at most this many)  2. lease_ms  3. ttl_ms
Returns: the due keys whose time came. Each is pushed lease_ms ahead as it is handed out,
so sweepers of other workers leave it alone meanwhile, and one whose sweeper died is
picked up again after lease_ms. The set lives ttl_ms after the last time one was due
(a listed tag is due at least every lease_ms, so it lives while anything is listed).
--]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, head in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), head)
end
if #due > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3])) end
return due
