--[[ drain_ack.lua: after a batch is committed to the store, forget it in Redis.

KEYS: [1] the partition's stream, [2] its dirty index.
ARGV: [1] the consumer group, [2] sep, [3] the newest id of the batch, then either
      (sep is one byte absent from every key: lists travel as one argument each, so a
      client packs a few arguments per batch rather than 3 per record)
        [4] the keys written, each followed by sep, [5] for each of them, in the same
        order, the stream id of its newest entry in the batch, each followed by sep,
        [6] the ids of every entry of the batch, each followed by sep ("" when they are
        the ids of [5]);
      or (sep is ""): [4] n, then n keys, their n newest ids, then every id of the batch.
Returns: the number of entries acknowledged.
Touches: HDEL dirty[key] only while it still names that id (a newer write of the key keeps
its mark, so a read miss keeps consulting the queue); XACK every id; then removes the
entries: XTRIM MINID just past the newest id when the group has nothing else pending (so
every entry up to it was delivered and acknowledged, i.e. written), otherwise XDEL of the
batch's ids.
--]]

local sep = ARGV[2]
local function split(text)
  local items, pos, n = {}, 1, 0
  while pos <= #text do
    local stop = string.find(text, sep, pos, true)
    n = n + 1
    items[n] = string.sub(text, pos, stop - 1)
    pos = stop + 1
  end
  return items
end

local chunk = 500
local keys, latest, ids
if sep ~= "" then
  keys, latest = split(ARGV[4]), split(ARGV[5])
  ids = latest
  if ARGV[6] ~= "" then
    ids = split(ARGV[6])
  end
else
  local n = tonumber(ARGV[4])
  keys, latest, ids = {}, {}, {}
  for i = 1, n do
    keys[i], latest[i] = ARGV[4 + i], ARGV[4 + n + i]
  end
  for i = 5 + 2 * n, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
end

for i = 1, #keys, chunk do
  local last = math.min(i + chunk - 1, #keys)
  local marks = redis.call('HMGET', KEYS[2], unpack(keys, i, last))
  local gone, g = {}, 0
  for j = 1, #marks do
    if marks[j] == latest[i + j - 1] then
      g = g + 1
      gone[g] = keys[i + j - 1]
    end
  end
  if g > 0 then
    redis.call('HDEL', KEYS[2], unpack(gone, 1, g))
  end
end

local acked = 0
for i = 1, #ids, chunk do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, math.min(i + chunk - 1, #ids)))
end

local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
local dash = string.find(ARGV[3], "-", 1, true)
local seq = dash and tonumber(string.sub(ARGV[3], dash + 1))
if tonumber(pending[1]) == 0 and seq and seq < 2 ^ 53 then
  local ms = string.sub(ARGV[3], 1, dash - 1)
  redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. string.format('%.0f', seq + 1))
else
  for i = 1, #ids, chunk do
    redis.call('XDEL', KEYS[1], unpack(ids, i, math.min(i + chunk - 1, #ids)))
  end
end
return acked
