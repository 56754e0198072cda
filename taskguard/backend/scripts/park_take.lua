--[[ park_take.lua: after a release, hand back the heads of a lot its guard has room for.

lib/park.lua is concatenated before this file.
KEYS: 1. lot  2. msgs  3. meta  4. due  5. out
ARGV: 1. handoff_ms  2. out_ttl_ms
Returns: the payloads to publish.
--]]

local k = { msgs = KEYS[2], meta = KEYS[3], due = KEYS[4], out = KEYS[5] }
local now = park_now_ms()
return park_take(KEYS[1], k, now, tonumber(ARGV[1]), now + tonumber(ARGV[2]))
