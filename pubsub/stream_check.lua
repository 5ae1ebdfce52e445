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
-- returned are gone), {type} when the key is not a stream ("none" when
-- missing), else the stream_read.lua state {"stream", length,
-- last-generated-id, max-deleted-entry-id, entries-added, first-entry-id
-- or "", {position} when the stream holds the position's entry (else
-- empty), 0}.
local out = {}
for i, key in ipairs(KEYS) do
  local pos = ARGV[i]
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'stream' then
    out[i] = {t}
  elseif #redis.call('XRANGE', key, '(' .. pos, '+', 'COUNT', 1) == 0 then
    -- Cheap for the many keys a reply does not concern.
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
