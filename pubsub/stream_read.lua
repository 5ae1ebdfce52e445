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
--          holds). The script reads by bytes too: one entry, then as many
--          as the bound leaves room for at the largest size seen, so it
--          copies about the bound out of the stream, whatever the count.
--          0: no bound (one read of ARGV[3] entries).
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
local limit = tonumber(ARGV[4] or '0') or 0
local mode = ARGV[1]
if mode == 'range' or mode == 'rev' then
  local count = tonumber(ARGV[3])
  -- read(from, n): n entries from from on, oldest first ("range") or
  -- newest first ("rev"); a from of the form "(id" excludes id.
  local function read(from, n)
    if mode == 'range' then
      return redis.call('XRANGE', key, from, '+', 'COUNT', n)
    end
    return redis.call('XREVRANGE', key, from, '-', 'COUNT', n)
  end
  local from = ARGV[2]
  if mode == 'rev' then
    from = '+'
  end
  if limit <= 0 then
    entries = read(from, count)
  else
    -- Read by bytes, not only by count: one entry first, then as many as
    -- the bound leaves room for at the largest size seen so far. Entries
    -- of one size take two reads and copy about the bound (plus one
    -- entry) out of the stream: a count sized for small entries used to
    -- copy that many large ones first, which blocked Redis for seconds
    -- (30 entries of 20 MB: 11 s). Entries far larger than those read
    -- before them can still make one read copy more than the bound.
    local bytes, largest, want = 0, 0, 1
    local stop = false
    while not stop and #entries < count do
      want = math.min(want, count - #entries)
      local got = read(from, want)
      for i, e in ipairs(got) do
        local size = 72
        if type(e[2]) == 'table' then
          for _, s in ipairs(e[2]) do
            size = size + #s
          end
        end
        bytes = bytes + size
        largest = math.max(largest, size)
        if mode == 'rev' and bytes > limit then
          -- The newest entries that fit whole; none if the newest does not.
          cut, stop = 1, true
          break
        end
        entries[#entries + 1] = e
        if mode == 'range' and bytes >= limit then
          -- Up to the entry that reaches the bound: more follow if this
          -- read had more, or if the stream holds any after it.
          stop = true
          if i < #got or (#entries < count and
              #redis.call('XRANGE', key, '(' .. e[1], '+', 'COUNT', 1) > 0) then
            cut = 1
          end
          break
        end
      end
      if not stop then
        if #got < want then
          break -- the stream has no more
        end
        from = '(' .. got[#got][1]
        want = math.max(1, math.floor((limit - bytes) / largest))
      end
    end
  end
elseif mode == 'held' then
  -- XREAD from the ID before, not XRANGE: replay's reads stay apart in
  -- INFO commandstats.
  local r = redis.call('XREAD', 'COUNT', 1, 'STREAMS', key, ARGV[3])
  if r and r[1][2][1] and r[1][2][1][1] == ARGV[2] then
    entries = {ARGV[2]}
  end
end
-- Before Redis 7 the last two fields do not exist: nothing is known deleted.
return {t, info['length'], info['last-generated-id'],
  info['max-deleted-entry-id'] or '0-0', info['entries-added'] or 0,
  first, entries, cut}
