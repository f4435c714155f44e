-- Note that a worker (one process's quota manager) is alive, and count the live ones.
-- KEYS[1] workers zset (worker id -> last heartbeat)
-- ARGV[1] worker id, ARGV[2] now, ARGV[3] seconds a heartbeat counts, ARGV[4] key ttl ms,
-- ARGV[5] when this worker joined (as this script last answered it), '' if it has not yet
-- Returns {live workers (this one included), when this worker joined, other live workers whose
-- last heartbeat came before it joined}. The count is what each process divides the last known
-- headroom by when the store becomes unreachable; the last number says how many of them may
-- not be counting this worker yet (see storage/resilient/quota.py).
local now = tonumber(ARGV[2])
local cutoff = now - tonumber(ARGV[3])
local joined = tonumber(ARGV[5])
local ok, top = pcall(redis.call, 'ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if not ok then
  redis.call('DEL', KEYS[1])
  top = {}
end
-- Each heartbeat scores above every earlier one (by a millisecond when clocks tie or lag), so
-- scores order heartbeats as this server ran them: "came before it joined" is then exact,
-- whatever the callers' clocks say.
local score = now
if top[2] and tonumber(top[2]) >= score then
  score = tonumber(top[2]) + 0.001
end
-- Gone from the set (never here, expired, or the set was lost): the others stopped counting
-- this worker, so it joins again now.
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not last or tonumber(last) < cutoff or joined == nil then
  joined = score
end
redis.call('ZADD', KEYS[1], string.format('%.17g', score), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.17g', cutoff))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local unaware = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. string.format('%.17g', joined))
return {redis.call('ZCARD', KEYS[1]), string.format('%.17g', joined), unaware}
