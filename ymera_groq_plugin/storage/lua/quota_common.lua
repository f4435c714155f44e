-- Shared prelude of quota_reserve.lua and quota_settle.lua: one (organisation, model)'s
-- four buckets.
-- The formulas are those of ymera_groq_plugin/storage/buckets.py (drain, room_wait,
-- settle_bucket, apply_observation), in the same order of operations, so both backends compute
-- the same numbers. `now` always comes from the caller: the scripts never read a clock.
--
-- Arguments: ARGV[1] is the reservation id; ARGV[2] packs every number into one
-- space-separated string ('-' for "none"), because each extra argument costs the client more
-- to encode than the script costs to split.
--
-- State hash fields: l1..l4 levels (rpm, rpd, tpm, tpd), t updated, pr/pt pending requests and
-- tokens, n outstanding reservations, cool cooldown end, m1..m4 learned limits, rr/rt/ra last
-- reported remaining requests/tokens and when.
local W = {60, 86400, 60, 86400}
local MARGIN = 1e-3  -- quota.MARGIN: seconds of refill a drained level is counted short
local FIELDS = {'l1', 'l2', 'l3', 'l4', 't', 'pr', 'pt', 'cool', 'm1', 'm2', 'm3', 'm4',
                'rr', 'rt', 'ra', 'n'}

local function fmt(x)
  return string.format('%.17g', x)
end

local function numbers(packed)
  local t = {}
  for w in string.gmatch(packed, '%S+') do
    if w == '-' then t[#t + 1] = false else t[#t + 1] = tonumber(w) end
  end
  return t
end

-- A reservation's stored amounts, "requests tokens"; nil for a malformed entry.
local function amounts(text)
  if type(text) ~= 'string' then return nil end
  local sp = string.find(text, ' ', 1, true)
  if not sp then return nil end
  local r, t = tonumber(string.sub(text, 1, sp - 1)), tonumber(string.sub(text, sp + 1))
  if not r or not t then return nil end
  return r, t
end

local function load(key, now, defaults)
  local v = safe('HMGET', key, unpack(FIELDS))
  local s = {lv = {}, learned = {}, lim = {}}
  for i = 1, 4 do s.lv[i] = tonumber(v[i]) or 0 end
  s.fresh = not v[5]
  s.t = tonumber(v[5]) or now
  s.pr = tonumber(v[6]) or 0
  s.pt = tonumber(v[7]) or 0
  s.cool = tonumber(v[8]) or 0
  for i = 1, 4 do
    s.learned[i] = tonumber(v[8 + i]) or false
    if s.learned[i] then s.lim[i] = s.learned[i] else s.lim[i] = defaults[i] end
  end
  s.rr = v[13] or '-'
  s.rt = v[14] or '-'
  s.ra = v[15] or '-'
  s.n = tonumber(v[16]) or 0
  return s
end

-- Give back reservations whose process never settled them.
local function expire(s, kres, kexp, now_s)
  if s.n == 0 then return end
  local ids = safe('ZRANGEBYSCORE', kexp, '-inf', now_s, 'LIMIT', 0, 100)
  for _, rid in ipairs(ids) do
    local a = safe('HGET', kres, rid)
    if a then
      local r, t = amounts(a)
      if r then
        s.pr = math.max(0, s.pr - r)
        s.pt = math.max(0, s.pt - t)
      end
      s.n = math.max(0, s.n - 1)
      redis.call('HDEL', kres, rid)
    end
    redis.call('ZREM', kexp, rid)
  end
end

local function drain(s, now)
  local dt = now - s.t
  if dt > 0 then
    for i = 1, 4 do
      local lim = s.lim[i]
      if s.lv[i] > 0 and lim and lim ~= 0 then
        local lv = s.lv[i] - dt * lim / W[i]
        if lv > 0 then s.lv[i] = lv else s.lv[i] = 0 end
      end
    end
    s.t = now
  end
end

local function room_wait(s, req, tok, now)
  local wait = 0
  if s.cool > now then wait = s.cool - now + MARGIN end
  for i = 1, 4 do
    local lim = s.lim[i]
    if lim then
      local amount, pending = req, s.pr
      if i > 2 then amount, pending = tok, s.pt end
      if amount > lim then return math.huge end
      local level = s.lv[i]
      if level > 0 then level = level + lim * MARGIN / W[i] end
      local excess = level + pending + amount - lim
      if excess > 0 then
        local w = excess * W[i] / lim + MARGIN
        if w > wait then wait = w end
      end
    end
  end
  return wait
end

-- The numbers both `save` and `result` write, formatted once (formatting dominates the cost).
local function texts(s)
  return {fmt(s.lv[1]), fmt(s.lv[2]), fmt(s.lv[3]), fmt(s.lv[4]), fmt(s.pr), fmt(s.pt),
          fmt(s.t)}
end

local function save(s, key, key_ttl_ms)
  local f = texts(s)
  s.texts = f
  redis.call('HSET', key, 'l1', f[1], 'l2', f[2], 'l3', f[3], 'l4', f[4], 't', f[7],
             'pr', f[5], 'pt', f[6], 'n', s.n)
  redis.call('PEXPIRE', key, key_ttl_ms)
end

local function opt(x)
  if x then return tostring(x) end
  return '-'
end

-- One space-separated string (a single bulk reply parses far faster than an array):
-- head1 head2 l1..l4 pr pt cool t lim1..4 learned1..4 rr rt ra n, '-' for "none".
-- Limits are whole numbers, so `tostring` is exact for them.
local function result(s, head1, head2)
  local f = s.texts or texts(s)
  return table.concat({head1, head2, f[1], f[2], f[3], f[4], f[5], f[6], fmt(s.cool), f[7],
                       opt(s.lim[1]), opt(s.lim[2]), opt(s.lim[3]), opt(s.lim[4]),
                       opt(s.learned[1]), opt(s.learned[2]), opt(s.learned[3]),
                       opt(s.learned[4]), s.rr, s.rt, s.ra, tostring(s.n)}, ' ')
end
