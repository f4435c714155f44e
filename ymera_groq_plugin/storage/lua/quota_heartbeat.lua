-- Note that a worker (one process's quota manager) is alive, and count the live ones.
-- KEYS[1] workers zset (worker id -> last heartbeat)
-- ARGV[1] worker id, ARGV[2] now, ARGV[3] seconds a heartbeat counts, ARGV[4] key ttl ms
-- Returns the number of workers seen within the last ARGV[3] seconds (this one included).
-- The count is what each process divides the last known headroom by when the store becomes
-- unreachable (see storage/resilient/quota.py).
local now = tonumber(ARGV[2])
local r = redis.pcall('ZADD', KEYS[1], ARGV[2], ARGV[1])
if type(r) == 'table' and r.err then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.17g', now - tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
