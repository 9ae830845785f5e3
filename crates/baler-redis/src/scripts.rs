//! The Lua scripts: each lease operation is one atomic script. KEYS[1] is
//! the partition's key, ARGV[1] the owner token, ARGV[2] the lease time in
//! milliseconds. Expiry is Redis's (PX, PEXPIRE), never the client's.

use std::sync::LazyLock;

use redis::Script;

/// Takes the partition if it is free (or expired, which Redis makes free) or
/// already the owner's; 1 if the owner holds it now, 0 if someone else does.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
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
