-- Count one upstream failure of a key; failures further apart than the window start over.
-- KEYS: the key's record hash
-- ARGV: now, window seconds, record ttl ms
-- A record of the wrong type (not written by this package) is dropped and counting starts over.
local now = tonumber(ARGV[1])
local v = redis.pcall('HMGET', KEYS[1], 'failures', 'failure_since')
if type(v) == 'table' and v.err then
  redis.call('DEL', KEYS[1])
  v = {false, false}
end
local n = tonumber(v[1]) or 0
local since = tonumber(v[2]) or 0
if n == 0 or now - since > tonumber(ARGV[2]) then
  n = 1
  since = now
else
  n = n + 1
end
redis.call('HSET', KEYS[1], 'failures', n, 'failure_since', string.format('%.17g', since))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
