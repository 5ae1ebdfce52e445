#!lua flags=no-writes
-- The continuity check of a reader's XREAD: pipelined right after the
-- blocking XREAD on the reader's own connection, so Redis runs it as soon
-- as the XREAD has replied, with no extra round trip. Read-only (EVALSHA_RO).
--
-- KEYS     the keys the XREAD read (one hash slot in Cluster mode)
-- ARGV[i]  the position KEYS[i] was read after
--
-- Reply: one item per key: {"idle"} when the stream holds nothing after
-- the position (the XREAD returned nothing for it, or the entries it
-- returned are gone, or the key is missing), {type} when the key is not a
-- stream (and, when one key is not, "none" for a missing key), else the
-- stream_read.lua state {"stream", length,
-- last-generated-id, max-deleted-entry-id, entries-added, first-entry-id
-- or "", {position} when the stream holds the position's entry (else
-- empty), 0}.
--
-- The keys with something after their position are found with one
-- non-blocking XREAD per batch of keys rather than an XRANGE per key: a
-- reader may read thousands of keys and most are idle in any one read. A
-- key that holds nothing after its position is idle, a missing one too (a
-- key the blocking XREAD read from and that was deleted since: the
-- entries read are not delivered, and the reader's history check resets
-- the topic). A key of another type fails the XREAD; then every key is
-- looked at alone.
local n = #KEYS
local news, fast = {}, true
local batch = 1000
for s = 1, n, batch do
  local e = math.min(n, s + batch - 1)
  local args = {'XREAD', 'COUNT', 1, 'STREAMS'}
  for i = s, e do
    args[#args + 1] = KEYS[i]
  end
  for i = s, e do
    args[#args + 1] = ARGV[i]
  end
  local r = redis.pcall(unpack(args))
  if type(r) == 'table' and r['err'] then
    fast = false
    break
  end
  if r then
    for _, kv in ipairs(r) do
      news[kv[1]] = true
    end
  end
end

local out = {}
for i, key in ipairs(KEYS) do
  local pos = ARGV[i]
  local t = 'stream'
  if not fast then
    t = redis.call('TYPE', key)['ok']
  end
  if t ~= 'stream' then
    out[i] = {t}
  elseif (fast and not news[key]) or
      (not fast and #redis.call('XRANGE', key, '(' .. pos, '+', 'COUNT', 1) == 0) then
    out[i] = {'idle'}
  else
    local xi = redis.call('XINFO', 'STREAM', key)
    local info = {}
    for j = 1, #xi, 2 do
      info[xi[j]] = xi[j + 1]
    end
    local first = ''
    if info['first-entry'] then
      first = info['first-entry'][1]
    end
    -- The position's ID alone, not its entry: a big payload is not sent
    -- again with every read that follows it.
    local held = {}
    if pos ~= '0-0' and #redis.call('XRANGE', key, pos, pos) > 0 then
      held = {pos}
    end
    -- Before Redis 7 the last two fields do not exist: -1, unknown.
    out[i] = {t, info['length'], info['last-generated-id'],
      info['max-deleted-entry-id'] or '0-0', info['entries-added'] or -1,
      first, held, 0}
  end
end
return out
