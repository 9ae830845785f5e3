//! Where records come from: a synthetic generator, or JSON lines from a file
//! or stdin.
//!
//! A JSON-lines source is read on a thread of its own (reading stdin can
//! block for ever) and hands its records over on a bounded channel, so a
//! producer that is held back by a full buffer holds the reader back too.
//! Lines are read with a size limit: a line longer than the limit is skipped
//! over without being kept in memory, and reported with its line number.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

/// One record: its number in the input and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's number: the line number for JSON lines (from 1), the
    /// sequence number for synthetic records (from 1).
    pub seq: u64,
    /// The record's JSON text, one line.
    pub body: Arc<str>,
}

/// Why an input line was not made into a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    /// The line is not one valid JSON value.
    #[error("line {line}: malformed JSON ({reason})")]
    Malformed {
        /// The line number, from 1.
        line: u64,
        /// What the JSON parser said.
        reason: String,
    },
    /// The line is longer than the record size limit.
    #[error(
        "line {line}: record of {size} bytes is larger than the limit of {limit} bytes; \
         raise --max-record-size or split the record"
    )]
    TooLarge {
        /// The line number, from 1.
        line: u64,
        /// The line's size in bytes.
        size: u64,
        /// The limit.
        limit: usize,
    },
}

impl BadLine {
    /// The line number of the bad line.
    pub fn line(&self) -> u64 {
        match self {
            BadLine::Malformed { line, .. } | BadLine::TooLarge { line, .. } => *line,
        }
    }
}

/// Why the input could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The input file could not be opened.
    #[error("cannot open the input file {path}: {source}; check the path given to --input")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading failed part-way.
    #[error("reading the input failed after line {line}: {source}")]
    Read {
        /// The last line read.
        line: u64,
        /// Why.
        source: io::Error,
    },
    /// Synthetic records cannot be as small as asked.
    #[error(
        "--record-size {size} is too small: a synthetic record's JSON needs at least {min} \
         bytes; raise --record-size to {min} or more"
    )]
    RecordTooSmall {
        /// The size asked for.
        size: usize,
        /// The smallest possible.
        min: usize,
    },
    /// Synthetic records would be larger than the limit.
    #[error(
        "--record-size {size} is larger than --max-record-size {limit}; every record would be \
         refused; lower --record-size or raise --max-record-size"
    )]
    RecordTooLarge {
        /// The size asked for.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// One item from a source.
#[derive(Debug)]
pub enum Item {
    /// A record to write.
    Record(Record),
    /// A line that was refused.
    Bad(BadLine),
    /// Reading failed; nothing more will come.
    Failed(InputError),
}

/// A source of records.
#[derive(Debug)]
pub enum Source {
    /// Generated records.
    Synthetic(Synthetic),
    /// JSON lines read on a thread.
    Lines(mpsc::Receiver<Item>),
}

impl Source {
    /// `count` synthetic records whose bodies are `size` bytes each.
    ///
    /// # Errors
    ///
    /// [`InputError::RecordTooSmall`] or [`InputError::RecordTooLarge`].
    pub fn synthetic(count: u64, size: usize, limit: usize) -> Result<Self, InputError> {
        Ok(Source::Synthetic(Synthetic::new(count, size, limit)?))
    }

    /// JSON lines from `path` (`-` is stdin), read on a thread of its own.
    ///
    /// # Errors
    ///
    /// [`InputError::Open`] if the file cannot be opened.
    pub fn json_lines(path: &Path, limit: usize) -> Result<Self, InputError> {
        let reader: Box<dyn Read + Send> = if path == Path::new("-") {
            Box::new(io::stdin())
        } else {
            Box::new(File::open(path).map_err(|source| InputError::Open {
                path: path.to_owned(),
                source,
            })?)
        };
        Ok(Self::from_reader(reader, limit))
    }

    /// JSON lines from any reader, read on a thread of its own.
    pub fn from_reader(reader: Box<dyn Read + Send>, limit: usize) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        // A plain thread, not tokio's blocking pool: a read of stdin that
        // never returns must not keep the process from exiting.
        std::thread::spawn(move || {
            let mut lines = LineReader::new(BufReader::with_capacity(1 << 16, reader), limit);
            loop {
                let item = match lines.next_item() {
                    Ok(Some(item)) => item,
                    Ok(None) => return,
                    Err(source) => Item::Failed(InputError::Read {
                        line: lines.line,
                        source,
                    }),
                };
                let last = matches!(item, Item::Failed(_));
                if tx.blocking_send(item).is_err() || last {
                    return;
                }
            }
        });
        Source::Lines(rx)
    }

    /// The next item, or `None` at the end of the input.
    pub async fn next(&mut self) -> Option<Item> {
        match self {
            Source::Synthetic(s) => s.next().map(Item::Record),
            Source::Lines(rx) => rx.recv().await,
        }
    }

    /// How many records the source holds, when that is known.
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            Source::Synthetic(s) => Some(s.count),
            Source::Lines(_) => None,
        }
    }
}

/// A generator of `count` records like `{"id":7,"payload":"hijk…"}`, each
/// exactly `size` bytes long.
#[derive(Debug)]
pub struct Synthetic {
    count: u64,
    size: usize,
    next: u64,
}

/// The skeleton of a synthetic record around its id and payload.
const SKELETON: usize = r#"{"id":,"payload":""}"#.len();

impl Synthetic {
    fn new(count: u64, size: usize, limit: usize) -> Result<Self, InputError> {
        let min = SKELETON + count.max(1).to_string().len();
        if size < min {
            return Err(InputError::RecordTooSmall { size, min });
        }
        if size > limit {
            return Err(InputError::RecordTooLarge { size, limit });
        }
        Ok(Synthetic {
            count,
            size,
            next: 1,
        })
    }

    fn next(&mut self) -> Option<Record> {
        if self.next > self.count {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        let id = seq.to_string();
        let fill = self.size - SKELETON - id.len();
        let mut body = String::with_capacity(self.size);
        body.push_str(r#"{"id":"#);
        body.push_str(&id);
        body.push_str(r#","payload":""#);
        body.extend((0..fill).map(|i| char::from(b'a' + ((seq as usize + i) % 26) as u8)));
        body.push_str(r#""}"#);
        Some(Record {
            seq,
            body: body.into(),
        })
    }
}

/// Reads lines of at most `limit` bytes, skipping over longer ones without
/// keeping them.
struct LineReader<R> {
    inner: R,
    limit: usize,
    line: u64,
}

impl<R: BufRead> LineReader<R> {
    fn new(inner: R, limit: usize) -> Self {
        LineReader {
            inner,
            limit,
            line: 0,
        }
    }

    /// The next record or bad line; blank lines are passed over.
    fn next_item(&mut self) -> io::Result<Option<Item>> {
        loop {
            let mut buf = Vec::new();
            let mut size: u64 = 0;
            let mut ended = false;
            loop {
                let chunk = self.inner.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                let (take, newline) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (i, true),
                    None => (chunk.len(), false),
                };
                size += take as u64;
                if size <= self.limit as u64 + 1 {
                    // Keep one byte past the limit, for a trailing '\r'.
                    buf.extend_from_slice(&chunk[..take]);
                }
                self.inner.consume(take + usize::from(newline));
                if newline {
                    ended = true;
                    break;
                }
            }
            if !ended && size == 0 {
                return Ok(None);
            }
            self.line += 1;
            let line = self.line;
            if buf.len() as u64 == size && buf.last() == Some(&b'\r') {
                buf.pop();
                size -= 1;
            }
            if size > self.limit as u64 {
                return Ok(Some(Item::Bad(BadLine::TooLarge {
                    line,
                    size,
                    limit: self.limit,
                })));
            }
            let text = match String::from_utf8(buf) {
                Ok(text) => text,
                Err(e) => {
                    return Ok(Some(Item::Bad(BadLine::Malformed {
                        line,
                        reason: format!("not UTF-8: {}", e.utf8_error()),
                    })))
                }
            };
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            return Ok(Some(
                match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                    Ok(_) => Item::Record(Record {
                        seq: line,
                        body: text.into(),
                    }),
                    Err(e) => Item::Bad(BadLine::Malformed {
                        line,
                        reason: json_reason(&e),
                    }),
                },
            ));
        }
    }
}

/// The JSON parser's message, with the position given as a column of the
/// line (the parser sees each line on its own, so its "line 1" means nothing).
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) => format!("{message} at column {}", e.column()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str, limit: usize) -> Vec<Result<(u64, String), BadLine>> {
        let mut reader = LineReader::new(text.as_bytes(), limit);
        let mut out = Vec::new();
        while let Some(item) = reader.next_item().unwrap() {
            out.push(match item {
                Item::Record(r) => Ok((r.seq, r.body.to_string())),
                Item::Bad(b) => Err(b),
                Item::Failed(e) => panic!("{e}"),
            });
        }
        out
    }

    #[test]
    fn json_lines_become_records_numbered_by_line_and_blank_lines_are_passed_over() {
        let got = items("{\"a\":1}\n\n  [2]  \r\n\"three\"", 100);
        assert_eq!(
            got,
            vec![
                Ok((1, "{\"a\":1}".to_owned())),
                Ok((3, "[2]".to_owned())),
                Ok((4, "\"three\"".to_owned())),
            ]
        );
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_line_number_and_reading_goes_on() {
        let got = items("{\"a\":1}\n{\"a\":\n{\"b\":2} trailing\n7\n", 100);
        assert!(matches!(got[1], Err(BadLine::Malformed { line: 2, .. })));
        let Err(BadLine::Malformed { reason, .. }) = &got[2] else {
            panic!("{:?}", got[2])
        };
        assert_eq!(reason, "trailing characters at column 9");
        assert!(matches!(got[2], Err(BadLine::Malformed { line: 3, .. })));
        assert_eq!(got[3], Ok((4, "7".to_owned())));
    }

    #[test]
    fn a_line_over_the_limit_is_refused_with_its_size_and_the_next_line_is_read() {
        let long = format!("\"{}\"", "x".repeat(98)); // 100 bytes
        let got = items(&format!("{long}\n[1]\n"), 99);
        assert_eq!(
            got[0],
            Err(BadLine::TooLarge {
                line: 1,
                size: 100,
                limit: 99
            })
        );
        assert_eq!(got[1], Ok((2, "[1]".to_owned())));
        // Exactly at the limit is fine, with or without a '\r'.
        let got = items(&format!("{long}\r\n"), 100);
        assert_eq!(got, vec![Ok((1, long))]);
    }

    #[test]
    fn synthetic_records_are_valid_json_of_exactly_the_size_asked() {
        let mut s = Synthetic::new(1000, 64, 1 << 20).unwrap();
        let mut n = 0;
        while let Some(r) = s.next() {
            n += 1;
            assert_eq!(r.seq, n);
            assert_eq!(r.body.len(), 64);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["id"], serde_json::json!(n));
        }
        assert_eq!(n, 1000);
    }

    #[test]
    fn synthetic_records_too_small_or_over_the_limit_are_refused_up_front() {
        assert!(matches!(
            Synthetic::new(100, 10, 1000),
            Err(InputError::RecordTooSmall { size: 10, .. })
        ));
        assert!(matches!(
            Synthetic::new(100, 2000, 1000),
            Err(InputError::RecordTooLarge {
                size: 2000,
                limit: 1000
            })
        ));
    }
}
