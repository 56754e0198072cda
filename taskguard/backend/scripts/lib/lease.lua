--[[ lease.lua: an owner-checked lease on one key: locks and uniqueness claims.

Op arguments: 1. owner (token)  2. ttl_ms  3. mode: "take" or "drop"
              4. "1" when the op's last two keys are its parking lot and the lots' due index
                 (lib/park.lua), else "0"
Op keys: 1. the lease key (a string holding the owner)
         2. take, optional: the fence key (the last fencing token handed out)
         for release: 2. optional: the notify list that wakes one blocked waiter
         last two, with argument 4: the parking lot of tasks refused here
check: another owner holds the key -> wait = its PTTL; our own -> 0; none, but tasks are
  parked -> wait (they come first: FIFO); none -> 0. A free key without a parking lot is
  taken in the check itself (SET NX: one command where GET then SET are two); undo gives
  it back if another op of the admission refuses.
commit take: SET key owner PX ttl (unless the check took it); with a fence key, the fencing
  token max(last + 1, now_us) is stored and returned: strictly increasing per key, and
  still increasing after the fence key expires, because it never falls behind server time.
  One SET ... GET stores now_us and reads the last token; a second SET only when the last
  one was not below now_us (a clock that stepped back).
commit drop: delete the key if we (or nobody) hold it; returns 0.
release: delete the key if we own it, make sure one wake-up is pending on the notify list
  (at most one, expiring 10 s after the last release); 1, or 0 if the lease was lost (expired, or taken by someone else); 2 when released and tasks are
  parked (the caller hands the first one back).
  Release of a "drop" op is the undo of an admission across Cluster slots that dropped
  the claim (taskguard/backend/spread.py): SET key owner PX ttl NX, the
  claim restored unless someone took the key meanwhile; 1 if restored, else 0.
renew: PEXPIRE the key if we own it; 1, or 0 if lost.
--]]

local FENCE_TTL_MS = 2592000000  -- 30 days; tokens stay monotonic after expiry anyway

local lease = { reservable = false }

function lease.parse(op, argv, i)
  op.owner = argv[i]
  op.ttl = tonumber(argv[i + 1])
  op.mode = argv[i + 2]
  if argv[i + 3] == '1' then
    op.lot, op.due = op.keys[#op.keys - 1], op.keys[#op.keys]
  end
end

function lease.check(op, now)
  if op.mode == 'take' and not op.lot
     and redis.call('SET', op.key, op.owner, 'NX', 'PX', op.ttl) then
    op.taken = true
    return 0, 0
  end
  local current = redis.call('GET', op.key)
  op.current = current
  if current and current ~= op.owner then
    local pttl = redis.call('PTTL', op.key)
    if pttl < 1 then pttl = 1 end
    return pttl * 1000, 0
  end
  if not current and op.lot and redis.call('EXISTS', op.lot) == 1 then return 1000000, 0 end
  return 0, 0
end

function lease.commit(op, at, now)
  if op.mode == 'drop' then
    if op.current then redis.call('DEL', op.key) end
    return 0
  end
  if not op.taken then redis.call('SET', op.key, op.owner, 'PX', op.ttl) end
  local fence = op.keys[2]
  if not fence or fence == op.lot then return 0 end
  local last = redis.call('SET', fence, string.format('%.0f', now), 'PX', FENCE_TTL_MS, 'GET')
  local token = now
  if last and tonumber(last) >= now then
    token = tonumber(last) + 1
    redis.call('SET', fence, string.format('%.0f', token), 'PX', FENCE_TTL_MS)
  end
  return token
end

-- Give back a key the check took, when another op of the admission refused.
function lease.undo(op)
  if op.taken then redis.call('DEL', op.key) end
end

function lease.release(op)
  if op.mode == 'drop' then
    if redis.call('SET', op.key, op.owner, 'NX', 'PX', op.ttl) then return 1 end
    return 0
  end
  if redis.call('GET', op.key) ~= op.owner then return 0 end
  redis.call('DEL', op.key)
  local notify = op.keys[2]
  if notify and notify ~= op.lot and redis.call('PEXPIRE', notify, 10000) == 0 then
    -- No wake-up pending (one already pending keeps, with a fresh TTL: one command):
    -- push one. A blocked waiter takes it at once; else the next waiter to come does.
    redis.call('LPUSH', notify, '1')
    redis.call('PEXPIRE', notify, 10000)
  end
  if op.lot and redis.call('EXISTS', op.lot) == 1 then
    -- The caller hands the lot's head back; if it cannot, the next sweep does.
    redis.call('ZADD', op.due, 0, op.lot)
    return 2
  end
  return 1
end

function lease.renew(op)
  if redis.call('GET', op.key) ~= op.owner then return 0 end
  redis.call('PEXPIRE', op.key, op.ttl)
  return 1
end

KINDS['lease'] = lease
