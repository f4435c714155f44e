-- Count one upstream failure of a key; failures further apart than the window start over.
-- KEYS: the key's record hash
-- ARGV: now, window seconds, record ttl ms
local now = tonumber(ARGV[1])
local n = tonumber(redis.call('HGET', KEYS[1], 'failures')) or 0
local since = tonumber(redis.call('HGET', KEYS[1], 'failure_since')) or 0
if n == 0 or now - since > tonumber(ARGV[2]) then
  n = 1
  since = now
else
  n = n + 1
end
redis.call('HSET', KEYS[1], 'failures', n, 'failure_since', string.format('%.17g', since))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
