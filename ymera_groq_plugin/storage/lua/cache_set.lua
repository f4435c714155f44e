-- Store one cache entry and keep its namespace within the bound.
-- KEYS[1] entry string, KEYS[2] index zset (member -> expiry)
-- ARGV[1] value, ARGV[2] member, ARGV[3] now, ARGV[4] expires_at, ARGV[5] ttl in ms,
-- ARGV[6] max entries, ARGV[7] entry key prefix (prefix .. member = entry key)
-- Returns how many entries were evicted for the bound.
local member, prefix = ARGV[2], ARGV[7]
local ttl_ms = tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl_ms)
safe('ZADD', KEYS[2], ARGV[4], member)
-- The index must outlive every entry it lists.
if redis.call('PTTL', KEYS[2]) < ttl_ms then
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
end
-- Entries expired by the caller's clock: drop a bounded batch on every write.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 64)
for _, m in ipairs(dead) do
  redis.call('DEL', prefix .. m)
end
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
end
-- Over the bound: evict the entries that expire soonest (the oldest, under one TTL), never
-- the one just written.
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
local evicted = 0
if excess > 0 then
  local candidates = redis.call('ZRANGE', KEYS[2], 0, excess)
  for _, m in ipairs(candidates) do
    if evicted < excess and m ~= member then
      redis.call('DEL', prefix .. m)
      redis.call('ZREM', KEYS[2], m)
      evicted = evicted + 1
    end
  end
end
return evicted
