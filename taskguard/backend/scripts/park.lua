--[[ park.lua: park a refused task's message, or hand it (or the lot's head) back at once.

lib/park.lua is concatenated before this file.
KEYS: 1. lot  2. msgs  3. meta  4. due  5. out  6. the guard's state key
      7. optional: the lot's fair-queuing hash (with ARGV 8 and 9)
      last, optional: the cap's slot counts set at run time (with ARGV 10)
ARGV: 1. ticket  2. seq (FIFO position)  3. payload  4. mode ("slot"|"lease")
      5. limit  6. handoff_ms  7. out_ttl_ms
      8. optional: the task's fair-share group  9. its weight ("": no fair share)
      10. optional: the cap key's field in the run-time slot counts ("k:<key>" or "*"):
          they are kept in the lot's meta, and its free room counted with them
With a group, the position is weighted fair queuing's instead of `seq`:
max(V, the group's last position) + 1 / weight, where V (field `v`) is the position of the
ticket handed back last; the group's last position is kept in field `g:<group>`.
Returns: the payloads to publish now. The guard may have gained room between the
refusal and this call (a release that found no lot yet): then the lot's heads, this
ticket among them if it is first, are handed back here, so no slot stays idle.
--]]

local k = { msgs = KEYS[2], meta = KEYS[3], due = KEYS[4], out = KEYS[5] }
local now = park_now_ms()
local fair, seq, lim, field = nil, ARGV[2], nil, ARGV[10]
if ARGV[9] and ARGV[9] ~= '' then fair = KEYS[7] end
if field then lim = KEYS[#KEYS] end
redis.call('HSET', k.meta, KEYS[1], cjson.encode({
  mode = ARGV[4], key = KEYS[6], limit = tonumber(ARGV[5]), fair = fair, lim = lim, field = field
}))
redis.call('ZREM', k.out, ARGV[1])
redis.call('HSET', k.msgs, ARGV[1], ARGV[3])
if fair then
  local field = 'g:' .. ARGV[8]
  local v = tonumber(redis.call('HGET', fair, 'v') or '0')
  local last = tonumber(redis.call('HGET', fair, field) or '0')
  if last < v then last = v end
  seq = last + 1 / tonumber(ARGV[9])
  redis.call('HSET', fair, field, string.format('%.17g', seq))
end
redis.call('ZADD', KEYS[1], seq, ARGV[1])
return park_take(KEYS[1], k, now, tonumber(ARGV[6]), now + tonumber(ARGV[7]))
