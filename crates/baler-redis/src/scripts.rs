//! The Lua scripts: each lease operation is one atomic script. KEYS[1] is
//! the partition's key, ARGV[1] the owner token, ARGV[2] the lease time in
//! milliseconds. Expiry is Redis's (PX, PEXPIRE), never the client's.

use std::sync::LazyLock;

use redis::Script;

/// Takes the partition if it is free (or expired, which Redis makes free) or
/// already the owner's: -1 if the owner holds it now; if someone else does,
/// the milliseconds its lease still runs (`PTTL`, at least 0).
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return -1
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
    return 0
end
return left
",
    )
});

/// Extends the owner's lease; 0 if the owner no longer holds it.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
",
    )
});

/// Deletes the key if the owner holds it; 1 if it did.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
",
    )
});

/// Records how many partitions an owner wants until `now + ttl` by Redis's
/// `TIME`, drops the announcements that expired, and returns the live ones as
/// a flat list: owner, wanted, milliseconds left, owner, wanted, milliseconds
/// left... KEYS[1] is the capacity's
/// demand hash, ARGV[1] the owner, ARGV[2] what it wants, ARGV[3] the time to
/// live in milliseconds. The hash itself expires when nobody announces.
pub(crate) static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + ttl))
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
    local sep = string.find(all[i + 1], ':', 1, true)
    local expires = sep and tonumber(string.sub(all[i + 1], sep + 1))
    if expires == nil or expires <= now then
        redis.call('HDEL', KEYS[1], all[i])
    else
        table.insert(live, all[i])
        table.insert(live, string.sub(all[i + 1], 1, sep - 1))
        table.insert(live, tostring(expires - now))
    end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return live
",
    )
});
