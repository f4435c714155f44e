-- Append one learning event; for an execution, also keep it by id (for later feedback).
-- KEYS[1] seq counter, KEYS[2] events zset (score = seq), KEYS[3] executions hash,
-- KEYS[4] qualities hash
-- ARGV[1] kind, ARGV[2] timestamp, ARGV[3] origin, ARGV[4] execution id ('' if none),
-- ARGV[5] event data (JSON), ARGV[6] execution (JSON, '' if none), ARGV[7] quality ('' if none)
-- Member: "seq\tts\tkind\torigin\tid\tdata" (unique through seq; the prefix lets prune read it).
-- Returns the event's sequence number (for an execution already kept exactly as given, the
-- last sequence number, and nothing is appended: a writer retrying after a lost reply must not
-- count one execution twice).

if ARGV[4] ~= '' and ARGV[6] ~= '' then
  local kept = safe('HGET', KEYS[3], ARGV[4])
  if kept == ARGV[6] and (safe('HGET', KEYS[4], ARGV[4]) or '') == ARGV[7] then
    return tonumber(redis.pcall('GET', KEYS[1])) or 0
  end
end
local ok, seq = pcall(redis.call, 'INCR', KEYS[1])
if not ok then
  -- Not a counter (foreign, or not a number): continue after the last logged event.
  local last = safe('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  seq = (tonumber(last[2]) or 0) + 1
  redis.call('SET', KEYS[1], seq)
end
local member = seq .. '\t' .. ARGV[2] .. '\t' .. ARGV[1] .. '\t' .. ARGV[3] .. '\t' .. ARGV[4]
  .. '\t' .. ARGV[5]
safe('ZADD', KEYS[2], seq, member)
if ARGV[4] ~= '' and ARGV[6] ~= '' then
  safe('HSET', KEYS[3], ARGV[4], ARGV[6])
  if ARGV[7] ~= '' then
    safe('HSET', KEYS[4], ARGV[4], ARGV[7])
  else
    safe('HDEL', KEYS[4], ARGV[4])
  end
end
return seq
