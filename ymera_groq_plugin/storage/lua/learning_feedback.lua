-- Attach a quality score to a kept execution and log the feedback, in one step.
-- KEYS[1] seq counter, KEYS[2] events zset, KEYS[3] executions hash, KEYS[4] qualities hash
-- ARGV[1] execution id, ARGV[2] quality (a JSON number), ARGV[3] timestamp, ARGV[4] origin
-- Returns {execution JSON, previous quality or false}, or false for an unknown id (a kept
-- execution that is not a JSON object counts as unknown and is dropped).
local exec = safe('HGET', KEYS[3], ARGV[1])
if not exec then
  return false
end
local ok, decoded = pcall(cjson.decode, exec)
if not ok or type(decoded) ~= 'table' then
  redis.call('HDEL', KEYS[3], ARGV[1])
  safe('HDEL', KEYS[4], ARGV[1])
  return false
end
local prev = safe('HGET', KEYS[4], ARGV[1])
if prev and not tonumber(prev) then prev = nil end
safe('HSET', KEYS[4], ARGV[1], ARGV[2])
local okc, seq = pcall(redis.call, 'INCR', KEYS[1])
if not okc then
  local last = safe('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  seq = (tonumber(last[2]) or 0) + 1
  redis.call('SET', KEYS[1], seq)
end
-- Both pieces are JSON written by Python; joining them keeps their exact numbers.
local data = '{"execution":' .. exec .. ',"previous":' .. (prev or 'null') .. ',"quality":'
  .. ARGV[2] .. '}'
safe('ZADD', KEYS[2], seq,
  seq .. '\t' .. ARGV[3] .. '\tfeedback\t' .. ARGV[4] .. '\t' .. ARGV[1] .. '\t' .. data)
return {exec, prev or false}
