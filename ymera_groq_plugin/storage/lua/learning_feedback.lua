-- Attach a quality score to a kept execution and log the feedback, in one step.
-- KEYS[1] seq counter, KEYS[2] events zset, KEYS[3] executions hash, KEYS[4] qualities hash
-- ARGV[1] execution id, ARGV[2] quality (a JSON number), ARGV[3] timestamp, ARGV[4] origin
-- Returns {execution JSON, previous quality or false}, or false for an unknown id.
local exec = redis.call('HGET', KEYS[3], ARGV[1])
if not exec then
  return false
end
local prev = redis.call('HGET', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
local seq = redis.call('INCR', KEYS[1])
-- Both pieces are JSON written by Python; joining them keeps their exact numbers.
local data = '{"execution":' .. exec .. ',"previous":' .. (prev or 'null') .. ',"quality":'
  .. ARGV[2] .. '}'
redis.call('ZADD', KEYS[2], seq,
  seq .. '\t' .. ARGV[3] .. '\tfeedback\t' .. ARGV[4] .. '\t' .. ARGV[1] .. '\t' .. data)
return {exec, prev or false}
