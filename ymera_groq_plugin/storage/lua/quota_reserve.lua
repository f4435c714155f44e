-- Reserve one request's amounts on all four buckets of one (organisation, model), or nothing.
-- KEYS: state hash, reservations hash (id -> "requests tokens"), expiry zset (id -> expires)
-- ARGV[1]: reservation id
-- ARGV[2]: now requests tokens ttl key_ttl_ms rpm rpd tpm tpd peek
--          (catalog limits, '-' for none; peek 1: only drain, expire and report)
local a = numbers(ARGV[2])
local now, req, tok, ttl, key_ttl = a[1], a[2], a[3], a[4], a[5]
local s = load(KEYS[1], now, {a[6], a[7], a[8], a[9]})
local peek = a[10] == 1
if s.fresh and peek then
  return result(s, '0', '0')
end
expire(s, KEYS[2], KEYS[3], fmt(now))
drain(s, now)
local wait = room_wait(s, req, tok, now)
local ok = '0'
if not peek and wait <= 0 then
  if safe('HSETNX', KEYS[2], ARGV[1], fmt(req) .. ' ' .. fmt(tok)) == 0 then
    return redis.error_reply('reservation id already in use')
  end
  safe('ZADD', KEYS[3], fmt(now + ttl), ARGV[1])
  -- Kept as long as the state hash: a busy pair may never empty them.
  redis.call('PEXPIRE', KEYS[2], key_ttl)
  redis.call('PEXPIRE', KEYS[3], key_ttl)
  s.pr = s.pr + req
  s.pt = s.pt + tok
  s.n = s.n + 1
  ok = '1'
  wait = 0
end
save(s, KEYS[1], key_ttl)
return result(s, ok, fmt(wait))
