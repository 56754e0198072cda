--[[ slot.lua: a concurrency slot, a lease in a sorted set of holders scored by expiry.

Op arguments: 1. owner (token)  2. ttl_ms  3. limit (slots; may change between calls)
              4. "1" when the op's last two keys are its parking lot and the lots' due index
                 (lib/park.lua), else "0"
              5. optional: this key's field in the cap's slot counts set at run time
                 ("k:<key>", or "*"; `taskguard limit set --kind cap`)
Op keys: 1. the holders' sorted set (member: owner, score: expiry in server ms)
         for release: 2. optional: the notify list that wakes one blocked waiter
         with argument 5: the cap's run-time slot counts (a hash), before the lot
         last two, with argument 4: the parking lot of tasks refused a slot here
With argument 5, the hash's entry for the field, else its "*" entry, replaces `limit`
(argument 3): an operator's change reaches every worker at its next admission.
check: prune expired holders, then: ours already -> 0; tasks parked -> wait (they come
  first: FIFO); fewer than `limit` holders -> 0; else wait = until the earliest holder's
  lease would expire (an upper bound: holders renew, and most release long before).
  Lowering `limit` live admits no one new until the count falls below it.
commit: ZADD owner with expiry now + ttl; the set expires with its last lease.
release: ZREM ours, push a wake-up (at most `limit` kept); 1, or 0 if our lease was gone;
  2 when released and tasks are parked (the caller hands them back).
renew: move our expiry to now + ttl; 1, or 0 if gone.
--]]

local slot = { reservable = false }

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function keep_alive(key, ms)
  -- The set lives as long as its longest lease.
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- The run-time slot count of a cap (`field`, else "*") in hash `overrides`, or nil.
local function slot_override(overrides, field)
  local set = redis.call('HMGET', overrides, field, '*')
  return tonumber(set[1] or set[2] or '')
end

function slot.parse(op, argv, i)
  op.owner = argv[i]
  op.ttl = tonumber(argv[i + 1])
  op.limit = tonumber(argv[i + 2])
  local last = #op.keys
  if argv[i + 3] == '1' then
    op.lot, op.due = op.keys[last - 1], op.keys[last]
    last = last - 2
  end
  if op.argc >= 5 then
    op.overrides = op.keys[last]
    op.limit = slot_override(op.overrides, argv[i + 4]) or op.limit
  end
end

function slot.check(op, now)
  local ms = math.floor(now / 1000)
  redis.call('ZREMRANGEBYSCORE', op.key, '-inf', ms)
  -- A free slot first: the common case needs no ZSCORE (ours passes either way).
  local parked = op.lot and redis.call('EXISTS', op.lot) == 1
  if not parked and redis.call('ZCARD', op.key) < op.limit then return 0, 0 end
  if redis.call('ZSCORE', op.key, op.owner) then return 0, 0 end
  local first = redis.call('ZRANGE', op.key, 0, 0, 'WITHSCORES')
  local wait = 1000000
  if first[2] then wait = (tonumber(first[2]) - ms) * 1000 end
  if wait < 1000 then wait = 1000 end
  return wait, 0
end

function slot.commit(op, at, now)
  local ms = math.floor(now / 1000)
  redis.call('ZADD', op.key, ms + op.ttl, op.owner)
  keep_alive(op.key, op.ttl)
  return 0
end

function slot.release(op)
  if redis.call('ZREM', op.key, op.owner) == 0 then return 0 end
  local notify = op.keys[2]
  if notify and notify ~= op.lot and notify ~= op.overrides then
    -- Up to `limit` wake-ups pending: enough for every slot freed at once. With them all
    -- pending already (nobody waits), only their TTL is refreshed: two commands.
    local pending = redis.call('PEXPIRE', notify, 10000) == 1
    if not pending or redis.call('LLEN', notify) < op.limit then
      redis.call('LPUSH', notify, '1')
      if not pending then redis.call('PEXPIRE', notify, 10000) end
    end
  end
  if op.lot and redis.call('EXISTS', op.lot) == 1 then
    -- The caller hands the lot's head back; if it cannot, the next sweep does.
    redis.call('ZADD', op.due, 0, op.lot)
    return 2
  end
  return 1
end

function slot.renew(op)
  local ms = now_ms()
  local score = redis.call('ZSCORE', op.key, op.owner)
  if not score or tonumber(score) <= ms then return 0 end
  redis.call('ZADD', op.key, 'XX', ms + op.ttl, op.owner)
  keep_alive(op.key, op.ttl)
  return 1
end

KINDS['slot'] = slot
