//! The Lua scripts: each step that must be atomic is one script, run once per
//! batch. Every key a script touches arrives in KEYS (Redis Cluster needs to
//! know them, and they all share the queue's hash tag).
//!
//! The fencing token of a claim is the pair (consumer, delivery count) that
//! `XPENDING` reports for the entry. A reclaim by another worker changes the
//! consumer and raises the count, so a worker whose lease lapsed finds a
//! different token and writes nothing.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use redis::Script;

/// Every script made so far, by its SHA1: the source to send with `EVAL`
/// to a node that does not have it cached (see `conn.rs`).
static SOURCES: LazyLock<Mutex<HashMap<String, String>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Makes a script and remembers its source by its hash. A script is made on
/// first use, so any hash a command carries is known here.
fn script(source: &str) -> Script {
    let script = Script::new(source);
    SOURCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(script.get_hash().to_owned(), source.to_owned());
    script
}

/// The source of the script whose SHA1 is `hash`, if it is one of these.
pub(crate) fn source_of(hash: &str) -> Option<String> {
    SOURCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(hash)
        .cloned()
}

/// Adds a batch of jobs, when one of them needs more than an `XADD` (an
/// idempotency key, a resend marker, or a bounded queue); otherwise the
/// producer sends plain `XADD`s.
///
/// KEYS: jobs, the bundled-jobs count, then one marker key per job
/// (`{q}:idem:<key>`, `{q}:sent:<id>`, or the jobs key again when the job
/// has no marker).
/// ARGV: max length (0: none), producer, group, then id, marker TTL in ms
/// (0: no marker), idempotency key (empty: none) and body per job.
///
/// Per job it answers `ok`, `full` or `dup:` and the marker's value:
/// `<producer>\n<id>`, followed by `\n<status>\n<attempts>\n<data>` once
/// the job has finished (the completion writes its result into an
/// idempotency key's marker). A job whose marker exists is not added again,
/// which makes a retry after a lost reply safe: the retry sees its own id
/// and reports it as added. The marker is written and read in one command
/// (`SET .. NX GET`, Redis 7.0), and taken back if the job is refused.
pub(crate) static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{UNFINISHED}{}",
        r#"
local maxlen = tonumber(ARGV[1])
local producer = ARGV[2]
-- The length is read only when the queue is bounded: one command less per call.
local len = 0
if maxlen > 0 then
  local xlen = redis.call('XLEN', KEYS[1])
  -- Jobs, not entries: bundles (from producers of other settings) hold more.
  len = xlen + bundled_count(KEYS[2])
  -- The stream also holds finished entries not yet trimmed: count only
  -- those waiting or being run before refusing anything.
  if len + #KEYS - 2 > maxlen then len = unfinished(KEYS[1], KEYS[2], ARGV[3], xlen) end
end
local out = {}
for i = 1, #KEYS - 2 do
  local b = 3 + (i - 1) * 4
  local id, ttl, key, body = ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4]
  local existing = false
  if ttl > 0 then
    existing = redis.call('SET', KEYS[i + 2], producer .. '\n' .. id, 'NX', 'GET', 'PX', ttl)
  end
  if existing then
    out[i] = 'dup:' .. existing
  elseif maxlen > 0 and len >= maxlen then
    if ttl > 0 then redis.call('DEL', KEYS[i + 2]) end
    out[i] = 'full'
  else
    if key ~= '' then
      redis.call('XADD', KEYS[1], '*', 'id', id, 'p', producer, 'a', '0', 'k', key, 'b', body)
    else
      redis.call('XADD', KEYS[1], '*', 'id', id, 'p', producer, 'a', '0', 'b', body)
    end
    len = len + 1
    out[i] = 'ok'
  end
end
return out
"#
    ))
});

/// Adds the jobs of one enqueue batch as one entry (see [`crate::bundle`])
/// and counts its jobs beyond the first in the bundled-jobs count, so that
/// the queue's length stays a count of jobs.
///
/// KEYS: jobs, bundled-jobs count. ARGV: producer, count, ids, lengths,
/// bodies. Answers the entry id.
pub(crate) static BUNDLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = redis.call('XADD', KEYS[1], '*', 'n', ARGV[2], 'ids', ARGV[3], 'p', ARGV[1], 'a', '0', 'l', ARGV[4], 'b', ARGV[5])
redis.call('INCRBY', KEYS[2], tonumber(ARGV[2]) - 1)
return id
"#,
    )
});

/// Lua functions shared by [`ENQUEUE`] and [`TRIM`]:
/// `group_state(jobs, group)`, the group's fields as `XINFO GROUPS` gives
/// them (`nil` without the stream or the group), `bundled_count(bundled)`,
/// the bundled-jobs count (0 when missing), and
/// `unfinished(jobs, bundled, group, xlen)`, the number of jobs waiting or
/// being run: the group's `lag` plus its pending count (both in entries),
/// plus the jobs that bundles hold beyond their first (see
/// [`crate::bundle`]), which the `bundled` key counts.
///
/// Finished entries (acknowledged) stay in the stream until trimmed, so
/// `XLEN` overcounts. The lag is Redis's count of entries not yet delivered
/// to the group; Redis cannot give it after some deletions (never made by
/// baler), and then `XLEN` stands in for it.
const UNFINISHED: &str = r#"
local function group_state(jobs, group)
  local groups = redis.pcall('XINFO', 'GROUPS', jobs)
  if type(groups) ~= 'table' or groups.err then return nil end
  for _, g in ipairs(groups) do
    local f = {}
    for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
    if f['name'] == group then return f end
  end
  return nil
end
local function bundled_count(bundled)
  return math.max(tonumber(redis.call('GET', bundled) or '0') or 0, 0)
end
local function unfinished(jobs, bundled, group, xlen)
  local extra = bundled_count(bundled)
  local g = group_state(jobs, group)
  if not g then return xlen + extra end
  local lag = g['lag']
  if type(lag) ~= 'number' then return xlen + extra end
  return lag + g['pending'] + extra
end
"#;

/// Removes finished entries from the jobs stream: every entry older than
/// both the oldest pending one and the first not yet delivered has been
/// acknowledged (run to its end, retried as a new entry, handed back or
/// dead-lettered), so `XTRIM MINID` drops exactly those.
///
/// KEYS: jobs. ARGV: group. Answers how many entries were removed.
pub(crate) static TRIM: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{UNFINISHED}{}",
        r#"
local g = group_state(KEYS[1], ARGV[1])
if not g then return 0 end
local last = g['last-delivered-id']
local ms, seq = string.match(last, '^(%d+)-(%d+)$')
if not ms then return 0 end
-- The first id after the last delivered one: entries below it were delivered.
local min = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
if p[2] then min = p[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', min)
"#
    ))
});

/// Takes over entries idle for longer than the lease.
///
/// KEYS: jobs. ARGV: group, consumer, min idle ms, count, start cursor.
/// Answers the cursor to start from next time, then per entry taken
/// `{entry id, fields, delivery count}`. `XAUTOCLAIM` scans a bounded part
/// of the pending list per call, so the cursor must carry over between
/// calls, or entries past the first part would never be looked at.
pub(crate) static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[5], 'COUNT', ARGV[4])
local out = {r[1]}
for _, e in ipairs(r[2]) do
  if e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local count = 0
    if p[1] then count = p[1][4] end
    out[#out + 1] = {e[1], e[2], count}
  end
end
return out
"#,
    )
});

/// Extends leases: per entry, if this worker still holds it with the same
/// delivery count, resets its idle time (`XCLAIM .. JUSTID` does not count a
/// delivery).
///
/// KEYS: jobs. ARGV: group, consumer, then entry id and delivery count per
/// entry. Answers 1 (extended) or 0 (lost) per entry.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
local n = (#ARGV - 2) / 2
for i = 1, n do
  local id = ARGV[1 + 2 * i]
  local count = tonumber(ARGV[2 + 2 * i])
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] and tonumber(p[1][4]) == count then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#,
    )
});

/// Completes the jobs of a batch of entries, each entry only if its claim
/// is still this worker's, and all the jobs of an entry together (a bundle
/// is completed whole, in one call). A finished entry is acknowledged and
/// left for [`TRIM`] to remove.
///
/// KEYS: jobs, delayed, parked, dead, the bundled-jobs count, then the
/// results streams written to (R of them), then the idempotency markers of
/// keyed jobs. ARGV: group, consumer, R, E (the number of entries), then per
/// entry: entry id, delivery count, its number of jobs, and how many of
/// them the bundled-jobs count holds (jobs beyond a bundle's first); then
/// per job, entry by entry: kind (`ok`, `failed`, `dead`, `retry`,
/// `handback`), job id, producer, results index (1 to R; 0: none), attempts,
/// data (output or message), delay ms, marker index (1-based after the
/// results streams; 0: none), idempotency key, body (sent only for kinds
/// that put the job back: `retry`, `handback`, `dead`).
///
/// The results for one producer are written as one entry: a bundle of
/// results when there are several (see [`crate::bundle`]). A final result
/// is also written into the idempotency key's marker, if it still exists,
/// so that enqueuing the key again later gets the result. Answers 1
/// (written) or 0 (stale: written nothing) per entry.
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local group, consumer = ARGV[1], ARGV[2]
local nres, nent = tonumber(ARGV[3]), tonumber(ARGV[4])
-- Redis's clock, read only when a retry is scheduled.
local now = nil
local out = {}
local recs = {}
local acks = {}
local extra = 0
local j = 4 + nent * 4
for e = 1, nent do
  local b = 4 + (e - 1) * 4
  local eid, count, njobs, ex = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local p = redis.call('XPENDING', KEYS[1], group, eid, eid, 1)
  if p[1] and p[1][2] == consumer and tonumber(p[1][4]) == count then
    for _ = 1, njobs do
      local kind, id, producer, ri, attempts = ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], tonumber(ARGV[j + 4]), ARGV[j + 5]
      local data, delay, mi, key, body = ARGV[j + 6], tonumber(ARGV[j + 7]), tonumber(ARGV[j + 8]), ARGV[j + 9], ARGV[j + 10]
      if kind == 'ok' or kind == 'failed' or kind == 'dead' then
        if kind == 'dead' then
          redis.call('XADD', KEYS[4], '*', 'id', id, 'p', producer, 'a', attempts, 'reason', data, 'b', body)
        end
        if ri > 0 then
          local r = recs[ri]
          if not r then
            r = {ids = {}, s = {}, a = {}, l = {}, r = {}}
            recs[ri] = r
          end
          local k = #r.ids + 1
          r.ids[k], r.s[k], r.a[k], r.l[k], r.r[k] = id, kind, attempts, string.len(data), data
        end
        if mi > 0 then
          local marker = KEYS[5 + nres + mi]
          if redis.call('EXISTS', marker) == 1 then
            redis.call('SET', marker, producer .. '\n' .. id .. '\n' .. kind .. '\n' .. attempts .. '\n' .. data, 'KEEPTTL')
          end
        end
      elseif kind == 'retry' then
        if not now then
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        redis.call('HSET', KEYS[3], id, producer .. '\n' .. attempts .. '\n' .. key .. '\n' .. body)
        redis.call('ZADD', KEYS[2], now + delay, id)
      elseif kind == 'handback' then
        if key ~= '' then
          redis.call('XADD', KEYS[1], '*', 'id', id, 'p', producer, 'a', attempts, 'k', key, 'b', body)
        else
          redis.call('XADD', KEYS[1], '*', 'id', id, 'p', producer, 'a', attempts, 'b', body)
        end
      end
      j = j + 10
    end
    acks[#acks + 1] = eid
    extra = extra + ex
    out[e] = 1
  else
    j = j + 10 * njobs
    out[e] = 0
  end
end
for ri = 1, nres do
  local r = recs[ri]
  if r then
    if #r.ids == 1 then
      redis.call('XADD', KEYS[5 + ri], '*', 'id', r.ids[1], 's', r.s[1], 'a', r.a[1], 'r', r.r[1])
    else
      redis.call('XADD', KEYS[5 + ri], '*', 'n', #r.ids, 'ids', table.concat(r.ids, '\n'),
        's', table.concat(r.s, '\n'), 'a', table.concat(r.a, ','), 'l', table.concat(r.l, ','),
        'r', table.concat(r.r))
    end
  end
end
-- Acknowledged, not deleted: TRIM removes finished entries in bulk,
-- one command per worker and second instead of one per entry.
for i = 1, #acks, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(acks, i, math.min(i + 999, #acks)))
end
-- The count stays (at 0 when no bundle is left): deleting it only for the
-- next bundle to make it again would cost a command per bundle.
if extra > 0 then
  if redis.call('DECRBY', KEYS[5], extra) < 0 then redis.call('SET', KEYS[5], 0) end
end
return out
"#,
    )
});

/// Moves delayed jobs whose time has come back to the jobs stream.
///
/// KEYS: jobs, delayed, parked. ARGV: how many at most. Answers how many
/// were moved.
pub(crate) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  local v = redis.call('HGET', KEYS[3], id)
  if v then
    local s1 = string.find(v, '\n', 1, true)
    local s2 = string.find(v, '\n', s1 + 1, true)
    local s3 = string.find(v, '\n', s2 + 1, true)
    local producer, attempts = string.sub(v, 1, s1 - 1), string.sub(v, s1 + 1, s2 - 1)
    local key, body = string.sub(v, s2 + 1, s3 - 1), string.sub(v, s3 + 1)
    if key ~= '' then
      redis.call('XADD', KEYS[1], '*', 'id', id, 'p', producer, 'a', attempts, 'k', key, 'b', body)
    else
      redis.call('XADD', KEYS[1], '*', 'id', id, 'p', producer, 'a', attempts, 'b', body)
    end
    redis.call('HDEL', KEYS[3], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
return #ids
"#,
    )
});

/// Removes a consumer from the group if it holds nothing (removing one that
/// holds entries would drop them from the pending list: they would never be
/// reclaimed).
///
/// KEYS: jobs. ARGV: group, consumer. Answers 1 if removed.
pub(crate) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Removes consumers that hold nothing and have been silent for long:
/// processes that died (their claims were reclaimed already). A live but
/// stalled one is recreated by its next read, holding nothing lost.
///
/// KEYS: jobs. ARGV: group, min idle ms. Answers how many were removed.
pub(crate) static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for j = 1, #c, 2 do f[c[j]] = c[j + 1] end
  if tonumber(f['pending']) == 0 and tonumber(f['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
"#,
    )
});
