-- Read one cache entry, dropping it if it expired by the caller's clock.
-- KEYS[1] entry string, KEYS[2] index zset (member -> expiry)
-- ARGV[1] member (the entry's key), ARGV[2] now
-- Returns the value, or false.
-- A key of the wrong type (something else wrote under this prefix) is dropped, so a foreign
-- entry is a miss and never an error for every later call.
local function safe(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'WRONGTYPE', 1, true) then error(r) end
    redis.call('DEL', key)
    r = redis.call(cmd, key, ...)
  end
  return r
end

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
