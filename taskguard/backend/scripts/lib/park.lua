--[[ park.lua: parked task messages, handed back when their guard has room.

A task refused by a concurrency slot or a lock is parked here instead of being deferred
by time, and handed back (its message re-published by the caller) the moment the guard
has room: on a release, or when a holder's lease expired. Keys, all under the guard
keys' hash tag:

  lot   <head>:park:<rest of the guard key>  ZSET ticket -> seq: FIFO by first denial
  msgs  <head>:parkmsg   HASH ticket -> payload (the message, opaque here)
  meta  <head>:parkmeta  HASH lot -> JSON {mode = "slot"|"lease", key, limit, fair,
                         lim, field}: with `lim` (a cap's slot counts set at run time,
                         under the same hash tag) its entry `field`, else "*", replaces
                         `limit` when the lot counts its guard's free room
  fair  <head>:parkfair:<rest>  HASH, for a cap with fair shares: v (the position of the
        ticket handed back last) and g:<group> (each group's last position); a lot is
        then ordered by weighted fair queuing, not FIFO (see park.lua)
  due   <head>:parkdue   ZSET lot -> ms: when a sweep looks at the lot again (the
                         earliest holder's expiry: the fallback when no release comes)
  out   <head>:parkout   ZSET ticket -> deadline ms: handed back, not yet arrived

A ticket is the task id. Handing one back reserves its room for `handoff` ms under the
owner token `<ticket>:parked` (a slot holder, or the lock's value), so no newcomer takes
it first; the arriving message admits with that token. A ticket stays in `out` (with its
payload) until its message arrives and claims it, so a hand-back lost between this script
and the broker is published again by a sweep after the deadline: each copy claims, only
the first one runs.
--]]

local PARK_MIN_RECHECK_MS = 250

local function park_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Free room of the guard behind a lot (expired holders pruned first).
local function park_free(info, now_ms)
  if info.mode == 'slot' then
    redis.call('ZREMRANGEBYSCORE', info.key, '-inf', now_ms)
    local limit = info.limit
    if info.lim then
      local set = redis.call('HMGET', info.lim, info.field, '*')
      limit = tonumber(set[1] or set[2] or '') or limit
    end
    return limit - redis.call('ZCARD', info.key)
  end
  if redis.call('EXISTS', info.key) == 1 then return 0 end
  return 1
end

local function park_reserve(info, token, now_ms, handoff)
  if info.mode == 'slot' then
    redis.call('ZADD', info.key, now_ms + handoff, token)
    if redis.call('PTTL', info.key) < handoff then redis.call('PEXPIRE', info.key, handoff) end
  else
    redis.call('SET', info.key, token, 'PX', handoff)
  end
end

-- When to look at a lot again if no release comes: when its first holder expires.
local function park_recheck_at(info, now_ms)
  local at
  if info.mode == 'slot' then
    local first = redis.call('ZRANGE', info.key, 0, 0, 'WITHSCORES')
    if first[2] then at = tonumber(first[2]) end
  else
    local pttl = redis.call('PTTL', info.key)
    if pttl > 0 then at = now_ms + pttl end
  end
  if at == nil or at < now_ms + PARK_MIN_RECHECK_MS then at = now_ms + PARK_MIN_RECHECK_MS end
  return at
end

-- Hand back as many heads of `lot` as its guard has room for; returns their payloads.
local function park_take(lot, k, now_ms, handoff, deadline)
  local raw = redis.call('HGET', k.meta, lot)
  if not raw then
    redis.call('ZREM', k.due, lot)
    return {}
  end
  local info = cjson.decode(raw)
  local payloads = {}
  local free = park_free(info, now_ms)
  if free > 0 then
    local heads = redis.call('ZRANGE', lot, 0, free - 1, 'WITHSCORES')
    for i = 1, #heads, 2 do
      local ticket = heads[i]
      if info.fair then redis.call('HSET', info.fair, 'v', heads[i + 1]) end
      redis.call('ZREM', lot, ticket)
      local payload = redis.call('HGET', k.msgs, ticket)
      if payload then
        park_reserve(info, ticket .. ':parked', now_ms, handoff)
        redis.call('ZADD', k.out, deadline, ticket)
        payloads[#payloads + 1] = payload
      end
    end
  end
  if redis.call('EXISTS', lot) == 0 then
    redis.call('ZREM', k.due, lot)
    redis.call('HDEL', k.meta, lot)
    if info.fair then redis.call('DEL', info.fair) end
  else
    redis.call('ZADD', k.due, park_recheck_at(info, now_ms), lot)
  end
  return payloads
end
