--[[ breaker_flush.lua: fold one process's aggregated breaker outcomes (hot-path mode).

lib/ops.lua and lib/breaker.lua are concatenated before this file.
KEYS: the breaker op's keys (state hash, window, probes).
ARGV: 1 calls, 2 failures, 3 slow calls, 4 trailing failures, 5 all failed (0/1),
  6 codes of the last calls (count window), 7 channel, 8 breaker name,
  9 the command announcing a trip on the channel (PUBLISH, or SPUBLISH on Redis Cluster:
  the channel then carries the breaker keys' hash tag), then from 10 the op list (one breaker op, mode "flush"; see lib/ops.lua).
A flush of no calls only reads the state. Returns lib/breaker.lua's flush reply.
--]]

local ops = read_ops(10)
return ops[1].kind.flush(ops[1], {
  calls = tonumber(ARGV[1]), failures = tonumber(ARGV[2]), slows = tonumber(ARGV[3]),
  tail = tonumber(ARGV[4]), all_failed = ARGV[5] == '1', codes = ARGV[6],
  channel = ARGV[7], name = ARGV[8], publish = ARGV[9],
})
