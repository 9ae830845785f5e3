//! Instants the engine and its neighbours compute with, made safe: a wait
//! as long as a caller likes never overflows an `Instant`, and times kept
//! as plain nanoseconds are cheap to subtract.

use std::time::Duration;

use tokio::time::Instant;

/// The longest wait the engine arms a deadline for: 30 years, as tokio's own
/// "far future". A longer wait (a linger, backoff, audit interval or caller's
/// deadline of `Duration::MAX`, say) is the same as never.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `t + d`, saturating at [`FAR_FUTURE`] past `t` instead of panicking on an
/// `Instant` overflow.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t + d.min(FAR_FUTURE)
}

/// Nanoseconds from `origin` to `t` (0 if `t` is earlier).
pub(crate) fn nanos_since(origin: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}
