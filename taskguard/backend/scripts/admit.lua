--[[ admit.lua: check a task's guards and commit all of them or none, in one call.

lib/ops.lua and the op libraries (lib/gcra.lua, lib/lease.lua) are concatenated before
this file; each library registers KINDS[kind] with parse(op, argv, i),
check(op, now) -> wait_us, slack_us, commit(op, at, now) -> value, and a `reservable`
flag (rate limits are; leases are not). A kind whose check may already take what it
checks (a free lease, in one command) also has undo(op), called when the admission is
refused, so that nothing of a refused admission stays.

A reservation commits the reservable ops at the future slot `now + wait`. It is made only
when every denial is reservable and the reservable ops' waits agree within the smallest
slack (half a bucket interval): reserving a slot far beyond a bucket's own next free slot
would block that bucket for everyone in between (GCRA keeps one TAT, not a calendar).

KEYS: each op's keys, in op order.
ARGV:
  1. reserve_within_us  reserve when the wait is at most this many microseconds (0: never)
  2. n, then per op: kind, nkeys, argc, arguments (see lib/ops.lua)
Returns: {allowed (0|1), wait_us, denied_index (1-based, 0 if none), reserved (0|1),
          then one value per op when allowed: tokens left (rate limit) or the fencing
          token (lease; 0 without a fence),
          then, only when an op read limits set at run time: how many ops one applied to}
Time: Redis TIME, never the caller's clock.
--]]

local now = server_time_us()
local reserve_within = tonumber(ARGV[1])
local ops, n = read_ops(2)

-- The last element, when any op read limits set at run time: how many of them applied.
local function with_overrides(result)
  local read, applied = false, 0
  for i = 1, n do
    if ops[i].overridden then
      read = true
      applied = applied + ops[i].overridden
    end
  end
  if read then result[#result + 1] = applied end
  return result
end

local function undo_all()
  for i = 1, n do
    local undo = ops[i].kind.undo
    if undo then undo(ops[i]) end
  end
end

local worst, denied, reservable = 0, 0, true
local soonest, slack = nil, nil
-- A check may already take what it checks (a free lock, SET NX). Redis keeps a failed
-- script's writes, so a check that errors (WRONGTYPE: a key of another type where a
-- guard's key should be) first gives back what the checks before it took.
local checked, failure = pcall(function()
  for i = 1, n do
    local kind = ops[i].kind
    local wait, op_slack = kind.check(ops[i], now)
    if wait > 0 then
      if denied == 0 then denied = i end
      if wait > worst then worst = wait end
      reservable = reservable and kind.reservable
    end
    if kind.reservable then
      if soonest == nil or wait < soonest then soonest = wait end
      if slack == nil or op_slack < slack then slack = op_slack end
    end
  end
end)
if not checked then
  undo_all()
  error(failure)
end

if denied == 0 then
  local result = { 1, 0, 0, 0 }
  for i = 1, n do
    result[4 + i] = ops[i].kind.commit(ops[i], now, now)
  end
  return with_overrides(result)
end

undo_all()

local wait_us = math.ceil(worst)
if reservable and reserve_within > 0 and worst <= reserve_within and worst - soonest <= slack then
  for i = 1, n do
    if ops[i].kind.reservable then ops[i].kind.commit(ops[i], now + worst, now) end
  end
  return with_overrides({ 0, wait_us, denied, 1 })
end
return with_overrides({ 0, wait_us, denied, 0 })
