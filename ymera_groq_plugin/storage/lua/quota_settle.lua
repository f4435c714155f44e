-- Take back a reservation, charge what was used, fold in what Groq reported.
-- KEYS: state hash, reservations hash, expiry zset
-- ARGV[1]: reservation id ('' for none)
-- ARGV[2]: now used_requests used_tokens key_ttl_ms              [1..4]
--          rpm rpd tpm tpd (catalog limits)                      [5..8]
--          learned rpm rpd tpm tpd (limits Groq reported)        [9..12]
--          floor rpm rpd tpm tpd (used as Groq counts it)        [13..16]
--          remaining_requests remaining_tokens report            [17..19]
--          cool_until                                            [20]
--          charge rpm rpd tpm tpd (added after the floors)       [21..24]
--          ('-' for none; report 1: store the remaining counts)
local a = numbers(ARGV[2])
local now, key_ttl = a[1], a[4]
local s = load(KEYS[1], now, {a[5], a[6], a[7], a[8]})
expire(s, KEYS[2], KEYS[3], fmt(now))
drain(s, now)
local found = '0'
if ARGV[1] ~= '' then
  local r = safe('HGET', KEYS[2], ARGV[1])
  if r then
    local rr, rt = amounts(r)
    if rr then
      s.pr = math.max(0, s.pr - rr)
      s.pt = math.max(0, s.pt - rt)
      found = '1'
    end
    s.n = math.max(0, s.n - 1)
    redis.call('HDEL', KEYS[2], ARGV[1])
    safe('ZREM', KEYS[3], ARGV[1])
  end
end
-- A kind without a limit is not tracked: with no refill rate its level could only grow.
local ur, ut = a[2], a[3]
if ur ~= 0 then
  if s.lim[1] and s.lim[1] ~= 0 then s.lv[1] = s.lv[1] + ur end
  if s.lim[2] and s.lim[2] ~= 0 then s.lv[2] = s.lv[2] + ur end
end
if ut ~= 0 then
  if s.lim[3] and s.lim[3] ~= 0 then s.lv[3] = s.lv[3] + ut end
  if s.lim[4] and s.lim[4] ~= 0 then s.lv[4] = s.lv[4] + ut end
end
-- Learned limits first: the floors are measured against the limit in force.
for i = 1, 4 do
  local m = a[8 + i]
  if m and m > 0 then
    s.learned[i] = m
    s.lim[i] = m
    redis.call('HSET', KEYS[1], 'm' .. i, fmt(m))
  end
end
for i = 1, 4 do
  local f = a[12 + i]
  if f and s.lim[i] and s.lim[i] ~= 0 then
    local pending = s.pr
    if i > 2 then pending = s.pt end
    local gap = f - (s.lv[i] + pending)
    if gap > 0 then s.lv[i] = s.lv[i] + gap end
  end
end
for i = 1, 4 do
  local ch = a[20 + i]
  if ch and ch > 0 and s.lim[i] and s.lim[i] ~= 0 then s.lv[i] = s.lv[i] + ch end
end
if a[19] == 1 then
  s.rr = a[17] and fmt(a[17]) or '-'
  s.rt = a[18] and fmt(a[18]) or '-'
  s.ra = fmt(now)
  redis.call('HSET', KEYS[1], 'rr', s.rr, 'rt', s.rt, 'ra', s.ra)
end
local c = a[20]
if c and c > s.cool then
  s.cool = c
  redis.call('HSET', KEYS[1], 'cool', fmt(c))
end
save(s, KEYS[1], key_ttl)
return result(s, found, '0')
