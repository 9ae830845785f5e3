//! Bundles: several jobs, or several results, in one stream entry.
//!
//! A producer sends the jobs of one enqueue batch (without idempotency keys)
//! as one entry of the jobs stream, and a worker writes the results of one
//! completion for one producer as one entry of that producer's results
//! stream. Redis then handles one entry, one claim, one acknowledgement and
//! one read per batch instead of per job, which is most of the cost of a
//! busy queue. A lone job or result keeps the plain one-entry form.
//!
//! A bundle's fields:
//!
//! | field | jobs | results |
//! |---|---|---|
//! | `n` | how many | how many |
//! | `ids` | the job ids, joined by `\n` | the job ids, joined by `\n` |
//! | `p`, `a` | the producer; attempts made (`0`) | – |
//! | `s` | – | the statuses (`ok`, `failed`, `dead`), joined by `\n` |
//! | `a` | – | the attempts, joined by `,` |
//! | `l` | the bodies' lengths, joined by `,` | the data's lengths, joined by `,` |
//! | `b` / `r` | the bodies, one after the other | the data, one after the other |
//!
//! Job ids and producer names never hold a newline (names are checked), so
//! `\n` can join them.
//!
//! What a bundle costs, against an entry per job:
//!
//! - It is claimed, fenced and completed as one: its results are written
//!   together, once its last job has its outcome, so a slow job holds back
//!   its bundle-mates' results (never their runs).
//! - A worker that dies holding a bundle loses the runs of all its jobs;
//!   the worker that reclaims it does not run it as a bundle again but
//!   hands each job back as an entry of its own, so that a job that stops
//!   its worker every time is dead-lettered alone after `max_deliveries`.
//! - Consumer-group counts (pending, lag) count entries; the queue keeps
//!   `{q}:bundled`, the jobs that bundles hold beyond their first, so that
//!   its length still counts jobs.
//!
//! A queue with a maximum length, or a resend window, checks every job as
//! it is added, so its producers never bundle;
//! [`ProducerBuilder::bundles`](crate::ProducerBuilder::bundles) turns
//! bundles off for any producer.

use std::fmt::Write as _;

/// Joins byte lengths as a bundle's `l` field.
pub(crate) fn lengths(lens: impl IntoIterator<Item = usize>) -> String {
    let mut out = String::new();
    for (i, len) in lens.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{len}");
    }
    out
}

/// Splits `text` at every `sep`: exactly `n` parts, or why not.
pub(crate) fn split(text: &[u8], sep: u8, n: usize) -> Result<Vec<&[u8]>, String> {
    let parts: Vec<&[u8]> = if n == 0 {
        Vec::new()
    } else {
        text.split(|b| *b == sep).collect()
    };
    if parts.len() != n {
        return Err(format!("{} parts where the bundle says {n}", parts.len()));
    }
    Ok(parts)
}

/// Cuts `data` into `n` pieces of the lengths that `lengths` lists, or says
/// why they do not fit.
pub(crate) fn frames<'a>(
    lengths: &[u8],
    data: &'a [u8],
    n: usize,
) -> Result<Vec<&'a [u8]>, String> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0usize;
    for len in split(lengths, b',', n)? {
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "the length {:?} is not a number",
                    String::from_utf8_lossy(len)
                )
            })?;
        let end = at
            .checked_add(len)
            .filter(|end| *end <= data.len())
            .ok_or_else(|| {
                format!(
                    "the lengths add up to more than the {} bytes given",
                    data.len()
                )
            })?;
        out.push(&data[at..end]);
        at = end;
    }
    if at != data.len() {
        return Err(format!(
            "the lengths add up to {at} bytes, the data has {}",
            data.len()
        ));
    }
    Ok(out)
}

/// The `n` field: a count, or why it is not one.
pub(crate) fn count(n: &[u8]) -> Result<usize, String> {
    std::str::from_utf8(n)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the count {:?} is not a number", String::from_utf8_lossy(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cut_what_lengths_joined() {
        let bodies: [&[u8]; 3] = [b"ab", b"", b"cde"];
        let l = lengths(bodies.iter().map(|b| b.len()));
        assert_eq!(l, "2,0,3");
        let data = bodies.concat();
        assert_eq!(frames(l.as_bytes(), &data, 3).unwrap(), bodies);
    }

    #[test]
    fn lengths_that_do_not_fit_are_refused_with_the_reason() {
        assert!(frames(b"2,9", b"abcde", 2)
            .unwrap_err()
            .contains("more than"));
        assert!(frames(b"2,2", b"abcde", 2).unwrap_err().contains("4 bytes"));
        assert!(frames(b"2,x", b"abcde", 2)
            .unwrap_err()
            .contains("not a number"));
        assert!(frames(b"2,3", b"abcde", 3).unwrap_err().contains("2 parts"));
        assert_eq!(frames(b"", b"", 0).unwrap(), Vec::<&[u8]>::new());
    }

    #[test]
    fn split_wants_exactly_the_count() {
        assert_eq!(split(b"a\nb", b'\n', 2).unwrap(), [b"a", b"b"]);
        assert!(split(b"a\nb", b'\n', 3).is_err());
        assert!(count(b"12").is_ok_and(|n| n == 12));
        assert!(count(b"-1").is_err());
    }
}
