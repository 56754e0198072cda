--[[ ops.lua: the op list every taskguard script reads, concatenated first.

ARGV from `first` on: n, then per op: kind, nkeys, argc, argc arguments.
KEYS: each op's nkeys keys, in op order.
Each op becomes a table {kind = KINDS[kind], key = its first key, keys = all its keys,
argc = its argument count, so a kind can tell whether an optional trailing argument was
sent}, filled in by the kind's parse(op, argv, i).
--]]

local function read_ops(first)
  local n = tonumber(ARGV[first])
  local ops, a, k = {}, first + 1, 1
  for i = 1, n do
    local kind = KINDS[ARGV[a]]
    if not kind then error('taskguard: unknown op kind ' .. tostring(ARGV[a])) end
    local nkeys, argc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local op = { kind = kind, key = KEYS[k], keys = {}, argc = argc }
    for j = 1, nkeys do op.keys[j] = KEYS[k + j - 1] end
    kind.parse(op, ARGV, a + 3)
    ops[i] = op
    a = a + 3 + argc
    k = k + nkeys
  end
  return ops, n
end

local function server_time_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
