--[[ debounce.lua: a debounce op: of a burst of calls for one key, only the newest runs,
`delay` after the last call.

Op arguments (ARGV, after the op's kind, nkeys and argc):
  1. id         this call's task id
  2. delay_us   how long after the newest call it runs
  3. ttl_ms     how long the newest call's id is kept (longer than the delay)
  4. phase      "arrive": the call was just published; "due": it comes back after its delay
  5. stamp      when the call was published (epoch µs, the publisher's clock; 0 unknown)
Op keys: 1, the newest call for the key: "<stamp> <id>".
check arrive: a call published after ours is registered already (messages can reach the
  workers out of order) -> wait 1: superseded. Else SET key "<stamp> <id>" PX ttl (this
  call is the newest now, and the delay restarts) and wait = delay_us: the caller defers
  it by the delay. The write happens although the check refuses: that is the point.
check due: the key holds our id (or nothing: it expired) -> 0; another id -> wait 1: a
  newer call superseded this one (the caller reads which, and drops this one).
commit: nothing (returns 0). The key keeps the winner until it expires, so a superseded
  call that comes back after the winner ran still finds it, and is dropped; a call
  published later registers over it and starts a new burst.
release / renew: nothing is held.
--]]

local debounce = { reservable = false }

function debounce.parse(op, argv, i)
  op.id = argv[i]
  op.delay = tonumber(argv[i + 1])
  op.ttl = tonumber(argv[i + 2])
  op.phase = argv[i + 3]
  op.stamp = tonumber(argv[i + 4])
end

local function newest_of(key)
  local value = redis.call('GET', key)
  if not value then return nil, nil end
  local stamp, id = string.match(value, '^(%S+) (.*)$')
  return tonumber(stamp), id
end

function debounce.check(op, now)
  local stamp, id = newest_of(op.key)
  if op.phase == 'arrive' then
    if stamp and id ~= op.id and stamp > op.stamp then return 1, 0 end
    redis.call('SET', op.key, string.format('%.0f', op.stamp) .. ' ' .. op.id, 'PX', op.ttl)
    return op.delay, 0
  end
  if not id or id == op.id then return 0, 0 end
  return 1, 0
end

function debounce.commit(op, at, now)
  return 0
end

function debounce.release(op) return 0 end

function debounce.renew(op) return 1 end

KINDS['deb'] = debounce
