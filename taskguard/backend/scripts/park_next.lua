--[[ park_next.lua: when the sweeper should look at one tag's parked work again (a spread
key schema on Redis Cluster keeps a lots' index per keyed guard tag; see
taskguard/backend/parking.py).

KEYS: 1. due  2. out  3. meta (of one tag)
ARGV: none
Returns: -1 when nothing is parked or handed back under this tag (the sweeper forgets
it), else the earliest time in ms (server clock) a lot is due or a hand-back's deadline
passes, or the server's now when neither index has an entry.
--]]

if redis.call('HLEN', KEYS[3]) == 0 and redis.call('ZCARD', KEYS[2]) == 0 then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local best = nil
for _, key in ipairs({ KEYS[1], KEYS[2] }) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] and (best == nil or tonumber(first[2]) < best) then best = tonumber(first[2]) end
end
return best or now
