-- Drop up to a batch of the oldest events older than a time (called until it returns 0).
-- KEYS[1] events zset, KEYS[2] executions hash, KEYS[3] qualities hash
-- ARGV[1] before (seconds), ARGV[2] batch size
-- Events are appended in (nearly) time order, so the scan stops at the first newer one.
-- Returns how many events went.
local before = tonumber(ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local removed = 0
for _, m in ipairs(members) do
  local ts, kind, id = string.match(m, '^%d+\t([^\t]*)\t([^\t]*)\t[^\t]*\t([^\t]*)\t')
  if tonumber(ts) == nil or tonumber(ts) >= before then
    break
  end
  redis.call('ZREM', KEYS[1], m)
  removed = removed + 1
  if kind == 'execution' and id ~= '' then
    -- A later record may reuse the id: drop the kept execution only if it is this old one.
    local kept = redis.call('HGET', KEYS[2], id)
    if kept then
      local ok, decoded = pcall(cjson.decode, kept)
      if ok and tonumber(decoded['timestamp']) ~= nil and tonumber(decoded['timestamp']) < before then
        redis.call('HDEL', KEYS[2], id)
        redis.call('HDEL', KEYS[3], id)
      end
    end
  end
end
return removed
