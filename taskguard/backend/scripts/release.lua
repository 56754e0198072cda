--[[ release.lua: give back what a task held, all ops in one call.

lib/ops.lua and the op libraries are concatenated before this file.
KEYS: each op's keys, in op order.
ARGV: n, then per op: kind, nkeys, argc, arguments (see lib/ops.lua).
Returns: one integer per op: 1 released, 0 the lease was no longer ours.
--]]

local ops, n = read_ops(1)
local result = {}
for i = 1, n do
  result[i] = ops[i].kind.release(ops[i])
end
return result
