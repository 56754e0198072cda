--[[ admit.lua: check a task's guards and commit all of them or none, in one call.

The op libraries (lib/*.lua) are concatenated before this file; each registers itself in
KINDS[kind] with parse(op, argv, i), check(op, now) -> wait_us, slack_us,
commit(op, at, now) -> value, and a `reservable` flag (rate limits are; locks are not).

A reservation commits the reservable ops at the future slot `now + wait`. It is made only
when every denial is reservable and the reservable ops' waits agree within the smallest
slack (half a bucket interval): reserving a slot far beyond a bucket's own next free slot
would block that bucket for everyone in between (GCRA keeps one TAT, not a calendar).

KEYS: one per op, in op order.
ARGV:
  1. reserve_within_us  a denial whose wait is at most this many microseconds reserves
                        the future slot for every op (0: never reserve)
  2. n                  number of ops
  then per op: kind, argc, argc arguments
Returns: {allowed (0|1), wait_us (integer), denied_index (1-based, 0 if none),
          reserved (0|1), remaining (tokens left in the tightest bucket, -1 if no bucket)}
Time: Redis TIME, never the caller's clock.
--]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local reserve_within = tonumber(ARGV[1])
local n = tonumber(ARGV[2])

local ops = {}
local a = 3
for i = 1, n do
  local kind = KINDS[ARGV[a]]
  if not kind then return redis.error_reply('taskguard: unknown op kind ' .. ARGV[a]) end
  local op = { kind = kind, key = KEYS[i] }
  kind.parse(op, ARGV, a + 2)
  ops[i] = op
  a = a + 2 + tonumber(ARGV[a + 1])
end

local worst, denied, reservable = 0, 0, true
local soonest, slack = nil, nil
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

local function commit_all(at, reservation)
  local remaining = -1
  for i = 1, n do
    if not reservation or ops[i].kind.reservable then
      local left = ops[i].kind.commit(ops[i], at, now)
      if left ~= nil and (remaining < 0 or left < remaining) then remaining = left end
    end
  end
  return remaining
end

if denied == 0 then
  return { 1, 0, 0, 0, commit_all(now, false) }
end
local wait_us = math.ceil(worst)
if reservable and reserve_within > 0 and worst <= reserve_within and worst - soonest <= slack then
  commit_all(now + worst, true)
  return { 0, wait_us, denied, 1, 0 }
end
return { 0, wait_us, denied, 0, 0 }
