--[[ fenced_resource.lua: the chaos tests' model of a fencing-aware resource.

A write is accepted only with a fencing token at least the last one accepted for its key,
as a store that checks tokens would. Every write offered is logged, accepted or not, in
the resource's own order, for the auditor.

KEYS: 1. the last accepted token per resource key (a hash)
      2. the resource's log (a list of JSON entries)
ARGV: 1. resource key  2. fencing token (an integer, as text)  3. the writer (task id)
Returns: 1 if the write was accepted, 0 if refused (a stale token).
--]]

local last = redis.call('HGET', KEYS[1], ARGV[1])
local accepted = 0
if not last or tonumber(ARGV[2]) >= tonumber(last) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  accepted = 1
end
-- The token stays text: cjson would print a 16-digit number with 14 significant digits.
redis.call('RPUSH', KEYS[2], cjson.encode({key = ARGV[1], token = ARGV[2], holder = ARGV[3],
  accepted = accepted}))
return accepted
