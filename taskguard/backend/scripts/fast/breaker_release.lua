--[[ fast/breaker_release.lua: in front of release.lua for a lone breaker op ('cb'), the
commonest breaker release, a success into a closed breaker's count window that holds
only successes, done before anything else of the script runs.

lib/breaker.lua's record_closed_count for that case: consecutive failures stay 0, the
window takes an 's' (and drops its oldest entry once full: an 's' too, as the window
counts no failure and no slow call, so a full window is left as it is), the call count is written only when it changed, both
keys' idle expiry is pushed back, and nothing trips (no failure, no slow call, and both
trip rates above 0). Reply {0}: no transition. Any other case falls through to
release.lua. tests/contract/test_breaker_fast.py holds both to the same replies and the
same stored state.
ARGV: n, kind, nkeys, argc, owner, mode, window type, window size, minimum calls,
  failure rate, slow-call rate, ... (release.lua's); KEYS: state hash, window, probes.
--]]
if ARGV[1] == '1' and ARGV[2] == 'cb' and ARGV[6] == 's' and ARGV[7] == 'count'
    and tonumber(ARGV[10]) > 0 and tonumber(ARGV[11]) > 0 then
  local f = redis.call('HMGET', KEYS[1], 'state', 'forced', 'consec', 'wc', 'wf', 'ws')
  if (not f[1] or f[1] == 'closed') and (not f[2] or f[2] == '')
      and (f[3] or '0') == '0' and (f[5] or '0') == '0' and (f[6] or '0') == '0' then
    local wc = tonumber(f[4] or '0')
    local calls = wc
    -- A full window of successes that takes a success and drops its oldest is the same
    -- list: it is left as it is.
    if wc < tonumber(ARGV[8]) then
      calls = wc + 1
      if redis.call('RPUSH', KEYS[2], 's') > tonumber(ARGV[8]) then
        redis.call('LPOP', KEYS[2])
        calls = calls - 1
      end
    end
    redis.call('PEXPIRE', KEYS[2], 86400000)
    if calls ~= wc then
      redis.call('HSET', KEYS[1], 'consec', 0, 'wc', calls, 'wf', 0, 'ws', 0)
    end
    redis.call('PEXPIRE', KEYS[1], 86400000)
    return { 0 }
  end
end
