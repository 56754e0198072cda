--[[ gcra.lua: the GCRA rate-limit op, used by admit.lua (concatenated before it).

Op arguments (ARGV, after the op's kind, nkeys and argc):
  1. interval_us  emission interval: microseconds per token (may be fractional)
  2. burst        tokens an idle bucket hands out at once (integer >= cost)
  3. cost         tokens this call takes (integer >= 1)
Op keys: 1, the bucket's theoretical arrival time (TAT) in microseconds, as a string.
Keys touched: SET with PX, so a bucket expires once it is full again.
--]]

local gcra = { reservable = true }

-- Microseconds until the op can pass at `now` (0 when it can pass now), and the slack a
-- reservation may leave in this bucket (half an interval).
function gcra.check(op, now)
  local tat = tonumber(redis.call('GET', op.key) or '0')
  if tat < now then tat = now end
  op.tat = tat
  local wait = tat + (op.cost - op.burst) * op.interval - now
  if wait < 0 then wait = 0 end
  return wait, op.interval / 2
end

-- Take the tokens at time `at` (>= now). Returns the tokens left after the take.
function gcra.commit(op, at, now)
  local start = op.tat
  if start < at then start = at end
  local new_tat = start + op.cost * op.interval
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
  redis.call('SET', op.key, string.format('%.3f', new_tat), 'PX', ttl_ms)
  -- (at - start) is exactly 0 for an idle bucket; the epsilon absorbs float noise.
  local left = math.floor((at - start) / op.interval + op.burst - op.cost + 1e-6)
  if left < 0 then left = 0 end
  return left
end

function gcra.parse(op, argv, i)
  op.interval = tonumber(argv[i])
  op.burst = tonumber(argv[i + 1])
  op.cost = tonumber(argv[i + 2])
end

KINDS['rl'] = gcra
