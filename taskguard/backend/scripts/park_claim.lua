--[[ park_claim.lua: a handed-back message arrived: it runs only if its ticket is out.

KEYS: 1. out  2. msgs
ARGV: 1. ticket
Returns: 1 if this copy claimed the hand-back (run it), 0 if another copy did, or the
ticket was parked again since (drop this copy).
--]]

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
