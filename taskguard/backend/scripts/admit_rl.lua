--[[ admit_rl.lua: admit.lua for the commonest admission, one GCRA rate limit ('rl').

The same KEYS, ARGV and reply as admit.lua with one 'rl' op (see lib/gcra.lua), so the
client encodes and reads it alike; it is chosen for a lone rate-limit op by
wire.script_for. It computes the same decision as admit.lua over lib/gcra.lua, without
the op framework: no op tables, no kind registry, no libraries defined per call (about a
third of admit.lua's server time for this op; docs/performance.md, "Hot paths").
tests/contract/test_admit_rl.py holds both scripts to the same replies.

KEYS: 1. the bucket's TAT; 2. (optional) the limiter's limits set at run time.
ARGV: reserve_within_us, 1, 'rl', nkeys, argc, interval_us, burst, cost[, field]
Returns: {1, 0, 0, 0, tokens left[, applied]} or {0, wait_us, 1, reserved[, applied]},
where `applied` (0|1, only when KEYS[2] was sent) says whether a run-time limit applied.
--]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst, cost = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local applied = nil
if KEYS[2] then
  local set = redis.call('HMGET', KEYS[2], ARGV[9], '*')
  local spec = set[1] or set[2]
  applied = 0
  if spec then
    applied = 1
    local i, b = string.match(spec, '^(%S+) (%S+)$')
    if i then
      interval = tonumber(i)
      burst = math.max(tonumber(b), cost)
    end
  end
end

local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat + (cost - burst) * interval - now

local function take(at)
  local start = tat
  if start < at then start = at end
  local new_tat = start + cost * interval
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  local left = math.floor((at - start) / interval + burst - cost + 1e-6)
  if left < 0 then left = 0 end
  return left
end

local result
if wait <= 0 then
  result = { 1, 0, 0, 0, take(now) }
else
  local reserve_within = tonumber(ARGV[1])
  if reserve_within > 0 and wait <= reserve_within then
    take(now + wait)
    result = { 0, math.ceil(wait), 1, 1 }
  else
    result = { 0, math.ceil(wait), 1, 0 }
  end
end
if applied then result[#result + 1] = applied end
return result
