--[[ gcra.lua: the GCRA rate-limit ops, used by admit.lua (concatenated before it).

Kind 'rl', take tokens. Op arguments (ARGV, after the op's kind, nkeys and argc):
  1. interval_us  emission interval: microseconds per token (may be fractional)
  2. burst        tokens an idle bucket hands out at once (integer >= cost)
  3. cost         tokens this call takes (integer >= 1)
  4. with a second key: this bucket's field in it ("k:<bucket>", or "*")
  Optional key 2: the limiter's limits set at run time (a hash, `taskguard limit set`):
  the entry for the bucket's field, else the "*" entry, "<interval_us> <burst>",
  replaces arguments 1 and 2 (burst at least cost), within the same script; op.overridden
  says whether one did (admit.lua reports it, so a client may leave the key out for a
  while when none applies: see RedisBackend.admit).
Kind 'rlp', pause the bucket (feedback from the service the limit protects). Arguments:
  1. pause_us      microseconds from now during which no call may pass
  2. tolerance_us  the bucket's (burst - 1) x interval_us: a bucket admits a call while its
                   TAT is at most this far ahead, so the TAT must go this much further
  check: never refuses (wait 0). commit: TAT = max(TAT, now + pause_us + tolerance_us),
  so a pause never shortens a longer backlog; returns the microseconds until a call of
  cost 1 passes again (>= pause_us). Calls refused meanwhile reserve their slots from
  the end of the pause on, one interval apart.
Release of an 'rl' op (only an admission across Cluster slots releases one, to undo it
when a later slot refused: taskguard/backend/spread.py): the TAT moves back by exactly
cost x interval (the interval after limits set at run time, as parse reads them), so
the bucket is as if this call had not come; a TAT no longer ahead of now is deleted (a
full bucket). Returns 1, or 0 when the bucket had expired (full already).
Op keys (both kinds): 1, the bucket's theoretical arrival time (TAT) in microseconds, as
a string.
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
  local overrides = op.keys[2]
  if overrides then
    local set = redis.call('HMGET', overrides, argv[i + 3], '*')
    local spec = set[1] or set[2]
    op.overridden = spec and 1 or 0
    if spec then
      local interval, burst = string.match(spec, '^(%S+) (%S+)$')
      if interval then
        op.interval = tonumber(interval)
        op.burst = math.max(tonumber(burst), op.cost)
      end
    end
  end
end

function gcra.release(op)
  local tat = tonumber(redis.call('GET', op.key) or '')
  if not tat then return 0 end
  local now = server_time_us()
  tat = tat - op.cost * op.interval
  if tat <= now then
    redis.call('DEL', op.key)
  else
    redis.call('SET', op.key, string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  return 1
end

KINDS['rl'] = gcra

local gcra_pause = { reservable = false }

function gcra_pause.parse(op, argv, i)
  op.pause = tonumber(argv[i])
  op.tolerance = tonumber(argv[i + 1])
end

function gcra_pause.check(op, now)
  return 0, 0
end

function gcra_pause.commit(op, at, now)
  local tat = tonumber(redis.call('GET', op.key) or '0')
  local target = now + op.pause + op.tolerance
  if tat < target then
    tat = target
    local ttl_ms = math.ceil((tat - now) / 1000) + 1
    redis.call('SET', op.key, string.format('%.3f', tat), 'PX', ttl_ms)
  end
  local left = math.floor(tat - op.tolerance - now + 0.5)
  if left < 0 then left = 0 end
  return left
end

KINDS['rlp'] = gcra_pause
