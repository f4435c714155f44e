-- Append one learning event; for an execution, also keep it by id (for later feedback).
-- KEYS[1] seq counter, KEYS[2] events zset (score = seq), KEYS[3] executions hash,
-- KEYS[4] qualities hash
-- ARGV[1] kind, ARGV[2] timestamp, ARGV[3] origin, ARGV[4] execution id ('' if none),
-- ARGV[5] event data (JSON), ARGV[6] execution (JSON, '' if none), ARGV[7] quality ('' if none)
-- Member: "seq\tts\tkind\torigin\tid\tdata" (unique through seq; the prefix lets prune read it).
-- Returns the event's sequence number.
local seq = redis.call('INCR', KEYS[1])
local member = seq .. '\t' .. ARGV[2] .. '\t' .. ARGV[1] .. '\t' .. ARGV[3] .. '\t' .. ARGV[4]
  .. '\t' .. ARGV[5]
redis.call('ZADD', KEYS[2], seq, member)
if ARGV[4] ~= '' and ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[6])
  if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[4], ARGV[4], ARGV[7])
  else
    redis.call('HDEL', KEYS[4], ARGV[4])
  end
end
return seq
