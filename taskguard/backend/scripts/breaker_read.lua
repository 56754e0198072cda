--[[ breaker_read.lua: a breaker's stored state and the server's time, in one call.

A script rather than a pipeline of TIME and HMGET: Redis Cluster clients cannot pipeline
a key-less TIME, and a script runs on the node of the breaker's slot.
KEYS: 1 the breaker's state hash.
ARGV: none.
Returns: {seconds, microseconds, state, until (ms), forced}; a missing field is nil.
--]]

local t = redis.call('TIME')
local f = redis.call('HMGET', KEYS[1], 'state', 'until', 'forced')
return {tonumber(t[1]), tonumber(t[2]), f[1], f[2], f[3]}
