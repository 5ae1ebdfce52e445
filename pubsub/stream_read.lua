#!lua flags=no-writes
-- One atomic read of a topic's stream: its type, its state from XINFO
-- STREAM and, with ARGV[1], a page of entries, so that a page and the state
-- it is judged against are taken at the same instant. Read-only (EVAL_RO):
-- it runs under maxmemory, on replicas and with a read-only ACL user.
--
-- KEYS[1]  the stream key
-- ARGV[1]  "range": XRANGE from ARGV[2] (inclusive) to the end;
--          "rev": the newest entries, newest first; "info": no entries
-- ARGV[2]  the first ID of a range
-- ARGV[3]  the number of entries
--
-- Reply: {type} when the key is not a stream ("none" when missing), else
-- {"stream", length, last-generated-id, max-deleted-entry-id,
--  entries-added, first-entry-id or "", entries}.
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
if ARGV[1] == 'range' then
  entries = redis.call('XRANGE', key, ARGV[2], '+', 'COUNT', ARGV[3])
elseif ARGV[1] == 'rev' then
  entries = redis.call('XREVRANGE', key, '+', '-', 'COUNT', ARGV[3])
end
-- Before Redis 7 the last two fields do not exist: nothing is known deleted.
return {t, info['length'], info['last-generated-id'],
  info['max-deleted-entry-id'] or '0-0', info['entries-added'] or 0,
  first, entries}
