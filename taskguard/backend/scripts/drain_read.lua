--[[ drain_read.lua: the drain's read of new entries from one partition, without blocking.

KEYS: [1] the partition's stream.
ARGV: [1] the consumer group, [2] the consumer, [3] count (most entries to read).
Returns: XREADGROUP GROUP group consumer COUNT count STREAMS stream > : the entries as
         {{id, {field, value, ...}}, ...} (empty when nothing is new). Run as a script so
         the reply reaches the client as plain arrays, with no per-entry parsing.
Touches: the group's pending entries list (the entries are now delivered to consumer).
--]]

local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
if not reply then
  return {}
end
return reply[1][2]
