#!lua flags=no-writes
-- One atomic read of a topic's stream: its type, its state from XINFO
-- STREAM and, with ARGV[1], a page of entries, so that a page and the state
-- it is judged against are taken at the same instant. Read-only (EVAL_RO):
-- it runs under maxmemory, on replicas and with a read-only ACL user.
--
-- KEYS[1]  the stream key
-- ARGV[1]  "range": XRANGE from ARGV[2] (inclusive) to the end;
--          "rev": the newest entries, newest first; "info": no entries;
--          "held": {ARGV[2]} when the stream holds that entry, else none
--          (its ID alone: a history check does not read payloads)
-- ARGV[2]  the first ID of a range, the ID of "held"
-- ARGV[3]  the number of entries; for "held", the ID just before ARGV[2]
-- ARGV[4]  optional: a byte bound (72 per entry plus its field names and
--          values), so that large entries make short replies. "range": the
--          reply stops at the entry that brings it to this many bytes; an
--          entry larger than the bound is a page alone. "rev": the reply
--          holds the newest entries that fit in the bound whole, none if
--          the newest does not (a ring load takes only what its budget
--          holds). The script still reads ARGV[3] entries (one XRANGE or
--          XREVRANGE): the caller sizes the count by the entries' expected
--          size. 0: no bound.
--
-- Reply: {type} when the key is not a stream ("none" when missing), else
-- {"stream", length, last-generated-id, max-deleted-entry-id,
--  entries-added, first-entry-id or "", entries, cut}, where cut is 1 when
-- the byte bound dropped entries that were read (more follow).
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
if t ~= 'stream' then
  return {t}
end
local xi = redis.call('XINFO', 'STREAM', key)
local info = {}
for i = 1, #xi, 2 do
  info[xi[i]] = xi[i + 1]
end
local first = ''
if info['first-entry'] then
  first = info['first-entry'][1]
end
local entries = {}
local cut = 0
if ARGV[1] == 'range' then
  entries = redis.call('XRANGE', key, ARGV[2], '+', 'COUNT', ARGV[3])
elseif ARGV[1] == 'rev' then
  entries = redis.call('XREVRANGE', key, '+', '-', 'COUNT', ARGV[3])
elseif ARGV[1] == 'held' then
  -- XREAD from the ID before, not XRANGE: replay's reads stay apart in
  -- INFO commandstats.
  local r = redis.call('XREAD', 'COUNT', 1, 'STREAMS', key, ARGV[3])
  if r and r[1][2][1] and r[1][2][1][1] == ARGV[2] then
    entries = {ARGV[2]}
  end
end
local limit = tonumber(ARGV[4] or '0') or 0
if limit > 0 then
  local bytes = 0
  for i, e in ipairs(entries) do
    bytes = bytes + 72
    if type(e[2]) == 'table' then
      for _, s in ipairs(e[2]) do
        bytes = bytes + #s
      end
    end
    -- keep is how many entries the reply keeps, once the bound is reached:
    -- up to the one that reaches it ("range"), up to the last that fits
    -- ("rev").
    local keep = nil
    if ARGV[1] == 'rev' then
      if bytes > limit then
        keep = i - 1
      end
    elseif bytes >= limit and i < #entries then
      keep = i
    end
    if keep then
      for k = #entries, keep + 1, -1 do
        entries[k] = nil
      end
      cut = 1
      break
    end
  end
end
-- Before Redis 7 the last two fields do not exist: nothing is known deleted.
return {t, info['length'], info['last-generated-id'],
  info['max-deleted-entry-id'] or '0-0', info['entries-added'] or 0,
  first, entries, cut}
