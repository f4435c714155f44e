-- Remove one cache entry and its index member.
-- KEYS[1] entry string, KEYS[2] index zset; ARGV[1] member
redis.call('DEL', KEYS[1])
redis.pcall('ZREM', KEYS[2], ARGV[1])
return 1
