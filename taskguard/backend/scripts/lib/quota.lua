--[[ quota.lua: a calendar quota op (fixed windows that reset at a clock time).

Op arguments (ARGV, after the op's kind, nkeys and argc):
  1. limit   calls per window (integer >= 1)
  2. cost    calls this one takes (integer >= 0; 0 only reads what is left)
  3. nb      how many window starts follow (>= 2)
  4.. nb window starts, epoch milliseconds, ascending: consecutive resets around the
     caller's clock, from its calendar (time zone, DST). The window holding the server's
     TIME is used; before the first start, the first window; from the last start on, a
     window as long as the one before it.
  then, with key 2: this key's field in it ("k:<key>", or "*") and the quota's period
  ("day", "week" or "month")
Op keys: 1, the quota's state: a hash {w = the window start (ms), c = calls used in it}.
  Optional key 2: the quota's allowances set at run time (a hash, `taskguard limit set
  --kind quota`): the entry for the field, else the "*" entry, "<calls> <period>",
  replaces argument 1 when its period is the quota's (an allowance per day is no
  allowance per month), so a change reaches every worker at its next admission.
check: calls used in the current window (0 when the hash holds an older window);
  wait = microseconds until the window ends when used + cost > limit, else 0.
commit: HSET w, c = used + cost and PEXPIREAT the window's end + 60 s (cost 0 writes
  nothing); returns the calls left in the window.
release: only an admission across Cluster slots releases a quota op, to undo it when a
  later slot refused (taskguard/backend/spread.py): the call's cost is given back
  (HINCRBY c -cost, never below 0) if the window holding the server's TIME is still the
  one the key counts; 1 if given back, else 0.
renew: nothing is held (1).
--]]

local QUOTA_GRACE_MS = 60000

local quota = { reservable = false }

function quota.parse(op, argv, i)
  op.limit = tonumber(argv[i])
  op.cost = tonumber(argv[i + 1])
  local nb = tonumber(argv[i + 2])
  op.starts = {}
  for j = 1, nb do op.starts[j] = tonumber(argv[i + 2 + j]) end
  local overrides = op.keys[2]
  if overrides then
    local field, period = argv[i + 3 + nb], argv[i + 4 + nb]
    local set = redis.call('HMGET', overrides, field, '*')
    local spec = set[1] or set[2]
    if spec then
      local calls, per = string.match(spec, '^(%d+) (%a+)$')
      if calls and per == period then op.limit = tonumber(calls) end
    end
  end
end

local function window(starts, t)
  local nb = #starts
  if t < starts[1] then return starts[1], starts[2] end
  for j = 1, nb - 1 do
    if t < starts[j + 1] then return starts[j], starts[j + 1] end
  end
  return starts[nb], starts[nb] + (starts[nb] - starts[nb - 1])
end

function quota.check(op, now)
  local t = math.floor(now / 1000)
  local start, stop = window(op.starts, t)
  local state = redis.call('HMGET', op.key, 'w', 'c')
  local used = 0
  if tonumber(state[1]) == start then used = tonumber(state[2]) or 0 end
  op.used, op.start, op.stop = used, start, stop
  if op.cost > 0 and used + op.cost > op.limit then
    local wait = (stop - t) * 1000
    if wait < 1000 then wait = 1000 end
    return wait, 0
  end
  return 0, 0
end

function quota.commit(op, at, now)
  if op.cost == 0 then return op.limit - op.used end
  local used = op.used + op.cost
  redis.call('HSET', op.key, 'w', string.format('%.0f', op.start), 'c', used)
  redis.call('PEXPIREAT', op.key, op.stop + QUOTA_GRACE_MS)
  return op.limit - used
end

function quota.release(op)
  if op.cost == 0 then return 0 end
  local start = window(op.starts, math.floor(server_time_us() / 1000))
  local state = redis.call('HMGET', op.key, 'w', 'c')
  if tonumber(state[1]) ~= start then return 0 end
  local used = (tonumber(state[2]) or 0) - op.cost
  if used < 0 then used = 0 end
  redis.call('HSET', op.key, 'c', used)
  return 1
end

function quota.renew(op)
  return 1
end

KINDS['quota'] = quota
