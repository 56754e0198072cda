--[[ fast/breaker_admit.lua: in front of admit.lua for a lone breaker op ('cb'), the
commonest breaker admission, a closed (or disabled) breaker, answered before anything
else of the script runs: no libraries defined, no op table, no TIME.

A closed breaker that is not forced open admits with nothing written (lib/breaker.lua:
check returns no wait, commit returns 0 for a call that is no probe), and so does a
disabled one; admit.lua's reply for that is {1, 0, 0, 0, 0}. Any other state falls
through to admit.lua. tests/contract/test_breaker_fast.py holds both to the same replies
and the same stored state.
ARGV: reserve_within_us, n, kind, ... (admit.lua's); KEYS[1]: the breaker's state hash.
--]]
if ARGV[2] == '1' and ARGV[3] == 'cb' then
  local f = redis.call('HMGET', KEYS[1], 'state', 'forced')
  local forced = f[2] or ''
  if forced == 'disabled' or (forced == '' and (not f[1] or f[1] == 'closed')) then
    return { 1, 0, 0, 0, 0 }
  end
end
