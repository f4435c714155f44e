-- Prepended to every script that reads or writes keys under this package's prefix.
-- A key of the wrong type (written by something else under the prefix) is dropped and the
-- command run again, so one foreign key costs that key's contents and is a miss, never an
-- error for every later call. Other errors are raised as they are.
local function safe(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'WRONGTYPE', 1, true) then error(r) end
    redis.call('DEL', key)
    r = redis.call(cmd, key, ...)
  end
  return r
end
