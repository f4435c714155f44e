-- Drop up to a batch of the oldest events older than a time (called until it returns 0).
-- KEYS[1] events zset, KEYS[2] executions hash, KEYS[3] qualities hash
-- ARGV[1] before (seconds), ARGV[2] batch size
-- Events are appended in (nearly) time order, so the scan stops at the first newer one.
-- Members this package did not write (no event prefix) are dropped on the way.
-- Returns how many events went.
local before = tonumber(ARGV[1])
local members = redis.pcall('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if type(members) == 'table' and members.err then
  -- Not a sorted set, so nothing this package wrote: drop it so logging can start over.
  redis.call('DEL', KEYS[1])
  return 0
end
local removed = 0
for _, m in ipairs(members) do
  local ts, kind, id = string.match(m, '^%d+\t([^\t]*)\t([^\t]*)\t[^\t]*\t([^\t]*)\t')
  local t = tonumber(ts)
  if t ~= nil and t >= before then
    break
  end
  redis.call('ZREM', KEYS[1], m)
  removed = removed + 1
  if t ~= nil and kind == 'execution' and id ~= '' then
    -- A later record may reuse the id: drop the kept execution only if it is this old one.
    local kept = redis.pcall('HGET', KEYS[2], id)
    if type(kept) == 'string' then
      local ok, decoded = pcall(cjson.decode, kept)
      if ok and type(decoded) == 'table' and tonumber(decoded['timestamp']) ~= nil
          and tonumber(decoded['timestamp']) < before then
        redis.call('HDEL', KEYS[2], id)
        redis.pcall('HDEL', KEYS[3], id)
      end
    end
  end
end
return removed
