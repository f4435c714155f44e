-- Remove up to a batch of a namespace's cache entries (called until it returns 0).
-- KEYS[1] index zset; ARGV[1] entry key prefix, ARGV[2] batch size
-- Returns how many entries went.
local members = redis.pcall('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if type(members) == 'table' and members.err then
  -- Not an index this package wrote: drop it (its entries expire on their own).
  redis.call('DEL', KEYS[1])
  return 0
end
for _, m in ipairs(members) do
  redis.call('DEL', ARGV[1] .. m)
end
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
end
return #members
