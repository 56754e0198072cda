--[[ drain_lease.lua: renew or release a partition lease, only while we own it.

KEYS: [1] the partition's lease (drain_lease).
ARGV: [1] "renew" or "release", [2] the owner (the pool's consumer name), [3] ttl in ms
      (renew only).
Returns: 1 done, 0 the lease is not ours (expired, or taken by another pool).
--]]

if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
if ARGV[1] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
