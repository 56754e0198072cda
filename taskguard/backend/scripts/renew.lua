--[[ renew.lua: extend every lease a process holds, in one call (the heartbeat).

lib/ops.lua and the op libraries are concatenated before this file.
KEYS: each op's keys, in op order.
ARGV: n, then per op: kind, nkeys, argc, arguments (see lib/ops.lua; lease: owner, ttl_ms).
Returns: one integer per op: 1 renewed, 0 lost (expired or taken by another owner).
--]]

local ops, n = read_ops(1)
local result = {}
for i = 1, n do
  result[i] = ops[i].kind.renew(ops[i])
end
return result
