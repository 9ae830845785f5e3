//! The bounds every setting is checked against, shared by every builder
//! (batcher, loader, processor, shared capacity) so that each refuses the
//! same mistakes with the same error.

use std::time::Duration;

use crate::error::ConfigError;

/// The longest duration a setting takes: a day. Anything longer is almost
/// certainly a mix-up of units, and waits that long would look like a hang.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// The most events a listener may fall behind: tokio's broadcast channel
/// allocates a slot for each up front.
pub(crate) const MAX_EVENT_CAPACITY: usize = 1 << 20;

/// Refuses a duration above [`MAX_DURATION`], naming the setting (whose name
/// ends in "(milliseconds)", the unit of the error's numbers).
pub(crate) fn check_duration(setting: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value > MAX_DURATION {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        return Err(ConfigError::TooLarge {
            setting,
            value: millis(value),
            max: millis(MAX_DURATION),
        });
    }
    Ok(())
}

/// Refuses an event capacity above [`MAX_EVENT_CAPACITY`].
pub(crate) fn check_event_capacity(setting: &'static str, n: usize) -> Result<(), ConfigError> {
    if n > MAX_EVENT_CAPACITY {
        return Err(ConfigError::TooLarge {
            setting,
            value: u64::try_from(n).unwrap_or(u64::MAX),
            max: MAX_EVENT_CAPACITY as u64,
        });
    }
    Ok(())
}
