-- Read one cache entry, dropping it if it expired by the caller's clock.
-- KEYS[1] entry string, KEYS[2] index zset (member -> expiry)
-- ARGV[1] member (the entry's key), ARGV[2] now
-- Returns the value, or false.
local value = safe('GET', KEYS[1])
if not value then
  -- Redis expired the entry on its own (PX): forget it in the index too.
  safe('ZREM', KEYS[2], ARGV[1])
  return false
end
local expires = safe('ZSCORE', KEYS[2], ARGV[1])
if expires and tonumber(expires) <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  safe('ZREM', KEYS[2], ARGV[1])
  return false
end
return value
