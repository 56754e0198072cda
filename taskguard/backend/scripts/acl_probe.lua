--[[ acl_probe.lua: can this connection's Redis user run what taskguard runs? (worker start)

A command called from a script is checked against the caller's ACL, so one call tries
every command taskguard's scripts and its Python code send (redis.pcall: a refusal is
collected, not raised). The KEYS themselves are checked when EVALSHA is called: a user
whose key pattern does not cover them gets NOPERM for the EVALSHA.

KEYS: [1] a string, [2] a hash, [3] a sorted set, [4] a list, [5] a stream; all under
      the prefix, made here and deleted again (the list keeps one element for BLPOP,
      which is checked outside: blocking commands cannot run in scripts; it expires).
ARGV: [1] "1" to also try the stream commands of write-behind and the drain pool,
      [2] a pub/sub channel under the prefix (nobody listens), [3] a SCAN pattern,
      [4] PUBLISH, or SPUBLISH on Redis Cluster (the channel is then in KEYS' slot).
Returns: one "COMMAND<tab>error" string per refused command (empty: all allowed).
Touches: only its KEYS, each gone (or expiring within 10 s) when it returns.
--]]

local refused = {}
local function try(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    refused[#refused + 1] = select(1, ...) .. '\t' .. reply.err
  end
  return reply
end

local s, h, z, l, x = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
try('TIME')
try('SET', s, '1', 'NX', 'PX', 10000)
try('GET', s)
try('GETEX', s, 'PX', 10000)
try('EXISTS', s)
try('TYPE', s)
try('PTTL', s)
try('PEXPIRE', s, 10000)
try('PEXPIREAT', s, 9999999999999)
try('HSET', h, 'f', '1')
try('HSETNX', h, 'g', '1')
try('HGET', h, 'f')
try('HMGET', h, 'f', 'g')
try('HLEN', h)
try('HGETALL', h)
try('HEXISTS', h, 'f')
try('HINCRBY', h, 'f', 1)
try('HDEL', h, 'g')
try('ZADD', z, 1, 'm')
try('ZSCORE', z, 'm')
try('ZCARD', z)
try('ZRANGE', z, 0, -1, 'WITHSCORES')
try('ZRANGEBYSCORE', z, '-inf', 0, 'LIMIT', 0, 1)
try('ZREMRANGEBYSCORE', z, '-inf', 0)
try('ZREM', z, 'm')
try('RPUSH', l, '1')
try('LPUSH', l, '1')
try('LLEN', l)
try('LTRIM', l, 0, 0)
try('LPOP', l)
try('LPUSH', l, '1')  -- left for the BLPOP checked next, outside the script
try('PEXPIRE', l, 10000)
try(ARGV[4] or 'PUBLISH', ARGV[2], '')
try('SCAN', '0', 'MATCH', ARGV[3], 'COUNT', 1)
if ARGV[1] == '1' then
  local id = try('XADD', x, 'MAXLEN', '~', 10, '*', 'probe', '1')
  try('XLEN', x)
  try('XRANGE', x, '-', '+', 'COUNT', 1)
  try('XGROUP', 'CREATE', x, 'probe', '0', 'MKSTREAM')
  try('XREADGROUP', 'GROUP', 'probe', 'probe', 'COUNT', 1, 'STREAMS', x, '>')
  try('XPENDING', x, 'probe')
  try('XPENDING', x, 'probe', '-', '+', 1)
  try('XCLAIM', x, 'probe', 'probe', 0, type(id) == 'string' and id or '0-1')
  try('XACK', x, 'probe', type(id) == 'string' and id or '0-1')
  try('XDEL', x, type(id) == 'string' and id or '0-1')
  try('XTRIM', x, 'MINID', '0-1')
end
try('DEL', s, h, z, x)
return refused
