-- Remove up to a batch of a namespace's cache entries (called until it returns 0).
-- KEYS[1] index zset; ARGV[1] entry key prefix, ARGV[2] batch size
-- Returns how many entries went.
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, m in ipairs(members) do
  redis.call('DEL', ARGV[1] .. m)
end
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
end
return #members
