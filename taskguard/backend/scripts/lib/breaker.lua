--[[ breaker.lua: a circuit breaker shared by every process, all transitions in Lua.

Op arguments:
   1. owner (the call's token)
   2. mode: admission "check"; release: the outcome "s" success, "S" slow success,
      "f" failure, "F" slow failure, "i" ignored (counts for nothing, frees a probe)
   3. window type "count" (last N calls) or "time" (last N seconds, 1 s buckets)
   4. window size N          5. minimum calls before rates count
   6. failure rate to trip (0..1; above 1 disables)
   7. slow-call rate to trip (0..1; above 1 disables)
   8. consecutive failures to trip (0 disables)
   9. open_for_ms            10. growth factor per repeated open (1: none)
  11. max_open_ms            12. probes admitted in half-open (fleet-wide)
  13. successes to close     14. probe lease ttl_ms
Op keys: 1. the state hash  2. the window (list or hash)  3. the probes' sorted set
State hash fields: state (closed | open | half_open), until (ms, end of open), opens
  (consecutive opens, for growth), ok (probe successes), consec (consecutive failures),
  forced ("" | open | disabled), wc/wf/ws (count window: calls, failures, slow).
  flushed (calls folded in by hot-path flushes, in total: see breaker.flush).
An open breaker whose time is up is half-open: the first probe admitted stores it.
commit returns 0 (an ordinary call), 1 (a half-open probe) or 2 (a probe that moved the
  breaker from open to half-open). release returns the transition it made: 0 none,
  1 closed>open, 2 half_open>open, 3 half_open>closed.
Every key expires: the window after N s (time) or with the state; the state after a day
  idle (a closed breaker with no calls has nothing worth keeping).
--]]

local breaker = { reservable = false }
local IDLE_MS = 86400000

function breaker.parse(op, argv, i)
  op.owner = argv[i]
  op.mode = argv[i + 1]
  op.wtype = argv[i + 2]
  op.wsize = tonumber(argv[i + 3])
  op.min_calls = tonumber(argv[i + 4])
  op.failure_rate = tonumber(argv[i + 5])
  op.slow_rate = tonumber(argv[i + 6])
  op.consecutive = tonumber(argv[i + 7])
  op.open_for = tonumber(argv[i + 8])
  op.growth = tonumber(argv[i + 9])
  op.max_open = tonumber(argv[i + 10])
  op.probes = tonumber(argv[i + 11])
  op.to_close = tonumber(argv[i + 12])
  op.probe_ttl = tonumber(argv[i + 13])
end

local function load(op, ms)
  local f = redis.call('HMGET', op.key, 'state', 'until', 'forced')
  local state, forced = f[1] or 'closed', f[3] or ''
  if state == 'open' and ms >= tonumber(f[2] or '0') then state = 'half_open_due' end
  return state, tonumber(f[2] or '0'), forced
end

local function touch(op)
  redis.call('PEXPIRE', op.key, IDLE_MS)
end

local function trip(op, ms, from)
  ms = ms or math.floor(server_time_us() / 1000)  -- a closed release reads TIME only now
  local opens = tonumber(redis.call('HGET', op.key, 'opens') or '0') + 1
  local open_for = op.open_for * (op.growth ^ (opens - 1))
  if open_for > op.max_open then open_for = op.max_open end
  redis.call('HSET', op.key, 'state', 'open', 'until', ms + math.floor(open_for),
             'opens', opens, 'ok', 0, 'consec', 0, 'wc', 0, 'wf', 0, 'ws', 0)
  redis.call('DEL', op.keys[2], op.keys[3])
  touch(op)
  if from == 'closed' then return 1 end
  return 2
end

function breaker.check(op, now)
  local ms = math.floor(now / 1000)
  local state, until_ms, forced = load(op, ms)
  if forced == 'disabled' then return 0, 0 end
  if forced == 'open' then return op.open_for * 1000, 0 end
  if state == 'closed' then return 0, 0 end
  if state == 'open' then return (until_ms - ms) * 1000, 0 end
  -- half-open (stored, or due): admit up to `probes` live probe leases fleet-wide
  redis.call('ZREMRANGEBYSCORE', op.keys[3], '-inf', ms)
  if redis.call('ZSCORE', op.keys[3], op.owner) then return 0, 0 end
  if redis.call('ZCARD', op.keys[3]) < op.probes then
    op.probe = true
    return 0, 0
  end
  -- Every probe permit is out: ask again soon (probes usually end long before their
  -- leases would expire), at most a second from now.
  local first = redis.call('ZRANGE', op.keys[3], 0, 0, 'WITHSCORES')
  local wait = tonumber(first[2]) - ms
  if wait > 1000 then wait = 1000 end
  if wait < 1 then wait = 1 end
  return wait * 1000, 0
end

function breaker.commit(op, at, now)
  if not op.probe then return 0 end
  local ms = math.floor(now / 1000)
  local result = 1
  if redis.call('HGET', op.key, 'state') ~= 'half_open' then
    redis.call('HSET', op.key, 'state', 'half_open', 'ok', 0)
    result = 2
  end
  redis.call('ZADD', op.keys[3], ms + op.probe_ttl, op.owner)
  redis.call('PEXPIRE', op.keys[3], op.probe_ttl)
  touch(op)
  return result
end

local function record_count(op, code, failed, slow)
  local window = op.keys[2]
  redis.call('RPUSH', window, code)
  redis.call('HINCRBY', op.key, 'wc', 1)
  if failed then redis.call('HINCRBY', op.key, 'wf', 1) end
  if slow then redis.call('HINCRBY', op.key, 'ws', 1) end
  if redis.call('LLEN', window) > op.wsize then
    local old = redis.call('LPOP', window)
    redis.call('HINCRBY', op.key, 'wc', -1)
    if old == 'f' or old == 'F' then redis.call('HINCRBY', op.key, 'wf', -1) end
    if old == 'S' or old == 'F' then redis.call('HINCRBY', op.key, 'ws', -1) end
  end
  redis.call('PEXPIRE', window, IDLE_MS)
  local c = redis.call('HMGET', op.key, 'wc', 'wf', 'ws')
  return tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0')
end

-- Adds n calls, nf failures and ns slow calls to the current second's bucket.
local function record_time(op, ms, n, nf, ns)
  local window = op.keys[2]
  local sec = math.floor(ms / 1000)
  redis.call('HINCRBY', window, sec .. ':c', n)
  if nf > 0 then redis.call('HINCRBY', window, sec .. ':f', nf) end
  if ns > 0 then redis.call('HINCRBY', window, sec .. ':s', ns) end
  redis.call('PEXPIRE', window, (op.wsize + 1) * 1000)
  local calls, failures, slows = 0, 0, 0
  local all = redis.call('HGETALL', window)
  for j = 1, #all, 2 do
    local bucket, kind = string.match(all[j], '^(%d+):(%a)$')
    local n = tonumber(all[j + 1])
    if tonumber(bucket) <= sec - op.wsize then
      redis.call('HDEL', window, all[j])
    elseif kind == 'c' then calls = calls + n
    elseif kind == 'f' then failures = failures + n
    else slows = slows + n end
  end
  return calls, failures, slows
end

local function tripped(op, ms, consec, calls, failures, slows)
  if op.consecutive > 0 and consec >= op.consecutive then return trip(op, ms, 'closed') end
  if calls >= op.min_calls and calls > 0 then
    if failures / calls >= op.failure_rate or slows / calls >= op.slow_rate then
      return trip(op, ms, 'closed')
    end
  end
  return 0
end

local function record(op, ms, state, probe, code)
  local failed = code == 'f' or code == 'F'
  local slow = code == 'S' or code == 'F'
  if probe and (state == 'half_open' or state == 'half_open_due') then
    -- A slow probe fails only when slow calls are tracked at all.
    if failed or (slow and op.slow_rate <= 1) then return trip(op, ms, 'half_open') end
    local ok = redis.call('HINCRBY', op.key, 'ok', 1)
    if ok >= op.to_close then
      redis.call('HSET', op.key, 'state', 'closed', 'opens', 0, 'ok', 0, 'consec', 0,
                 'wc', 0, 'wf', 0, 'ws', 0)
      redis.call('DEL', op.keys[2], op.keys[3])
      return 3
    end
    return 0
  end
  if state ~= 'closed' then return 0 end  -- admitted before the trip: not counted
  local consec = 0
  if failed then consec = redis.call('HINCRBY', op.key, 'consec', 1)
  else redis.call('HSET', op.key, 'consec', 0) end
  local calls, failures, slows
  if op.wtype == 'time' then
    calls, failures, slows = record_time(op, ms, 1, failed and 1 or 0, slow and 1 or 0)
  else
    calls, failures, slows = record_count(op, code, failed, slow)
  end
  return tripped(op, ms, consec, calls, failures, slows)
end

-- The closed state's outcome on a count window, in as few commands as it takes: the
-- counts come with the state (one HMGET), the window's length from RPUSH, and the counts
-- are written back only when they changed (a success into a window of successes changes
-- nothing but the window itself).
local function record_closed_count(op, code, f)
  local failed = code == 'f' or code == 'F'
  local slow = code == 'S' or code == 'F'
  local consec, old_consec = 0, tonumber(f[4] or '0')
  if failed then consec = old_consec + 1 end
  local wc, wf, ws = tonumber(f[5] or '0'), tonumber(f[6] or '0'), tonumber(f[7] or '0')
  local calls, failures, slows = wc + 1, wf, ws
  if failed then failures = failures + 1 end
  if slow then slows = slows + 1 end
  local window = op.keys[2]
  if redis.call('RPUSH', window, code) > op.wsize then
    local old = redis.call('LPOP', window)
    calls = calls - 1
    if old == 'f' or old == 'F' then failures = failures - 1 end
    if old == 'S' or old == 'F' then slows = slows - 1 end
  end
  redis.call('PEXPIRE', window, IDLE_MS)
  if calls ~= wc or failures ~= wf or slows ~= ws or consec ~= old_consec then
    redis.call('HSET', op.key, 'consec', consec, 'wc', calls, 'wf', failures, 'ws', slows)
  end
  return tripped(op, nil, consec, calls, failures, slows)  -- TIME only if it trips
end

function breaker.release(op)
  local f = redis.call('HMGET', op.key, 'state', 'until', 'forced', 'consec', 'wc', 'wf', 'ws')
  local state, forced = f[1] or 'closed', f[3] or ''
  local ms, probe = nil, false
  if state ~= 'closed' then
    ms = math.floor(server_time_us() / 1000)
    if state == 'open' and ms >= tonumber(f[2] or '0') then state = 'half_open_due' end
    -- Probe leases exist only while not closed (closing and tripping delete them). An
    -- expired probe lease is no probe any more: its permit was already given away.
    redis.call('ZREMRANGEBYSCORE', op.keys[3], '-inf', ms)
    probe = redis.call('ZREM', op.keys[3], op.owner) == 1
  end
  if forced ~= '' or op.mode == 'i' then return 0 end
  local result
  if state == 'closed' and op.wtype ~= 'time' then
    result = record_closed_count(op, op.mode, f)
  else
    result = record(op, ms or math.floor(server_time_us() / 1000), state, probe, op.mode)
  end
  touch(op)  -- after the writes, so a breaker's first record has its TTL too
  return result
end

--[[ flush: fold one process's aggregated outcomes into a closed breaker (hot-path mode).
  c: ARGV of breaker_flush.lua, read by the script: calls, failures, slow calls, the
  batch's trailing failures, 1 if every call of the batch failed, the codes of its last
  (at most window) calls in order, the channel to announce a trip on, the breaker's name,
  the command to announce it with (PUBLISH or SPUBLISH).
  Counts are folded only while closed and not forced (as a release would: outcomes of calls
  admitted before a trip are not counted); the window is evaluated once, after the fold.
  Returns {transition (0 or 1), effective state, ms left open, calls flushed in total}. ]]
function breaker.flush(op, c)
  local ms = math.floor(server_time_us() / 1000)
  local state, _, forced = load(op, ms)
  local result = 0
  if c.calls > 0 then
    redis.call('HINCRBY', op.key, 'flushed', c.calls)
    if forced == '' and state == 'closed' then
      local consec
      if c.all_failed then consec = redis.call('HINCRBY', op.key, 'consec', c.failures)
      else
        consec = c.tail
        redis.call('HSET', op.key, 'consec', consec)
      end
      local calls, failures, slows = 0, 0, 0
      if op.wtype == 'time' then
        calls, failures, slows = record_time(op, ms, c.calls, c.failures, c.slows)
      else
        for j = 1, #c.codes do
          local code = string.sub(c.codes, j, j)
          calls, failures, slows = record_count(op, code, code == 'f' or code == 'F',
                                                code == 'S' or code == 'F')
        end
      end
      result = tripped(op, ms, consec, calls, failures, slows)
    end
    touch(op)
  end
  local f = redis.call('HMGET', op.key, 'state', 'until', 'forced', 'flushed')
  local now_state, until_ms = f[1] or 'closed', tonumber(f[2] or '0')
  local left = 0
  if f[3] == 'open' then now_state = 'forced_open'
  elseif f[3] == 'disabled' then now_state = 'disabled'
  elseif now_state == 'open' then
    left = until_ms - ms
    if left <= 0 then now_state, left = 'half_open', 0 end
  end
  if result == 1 then
    redis.call(c.publish, c.channel, c.name .. '|open|' .. left)
  end
  return {result, now_state, left, tonumber(f[4] or '0')}
end

function breaker.renew(op)
  local ms = math.floor(server_time_us() / 1000)
  if not redis.call('ZSCORE', op.keys[3], op.owner) then return 1 end  -- not a probe
  redis.call('ZADD', op.keys[3], 'XX', ms + op.probe_ttl, op.owner)
  redis.call('PEXPIRE', op.keys[3], op.probe_ttl)
  return 1
end

KINDS['cb'] = breaker
