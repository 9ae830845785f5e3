//! Codecs: how payloads and results become bytes in Redis and back.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Turns payloads and results into bytes and back. Producers and workers of
/// one queue must use the same codec.
///
/// ```
/// use baler_queue::{Codec, Json};
///
/// let bytes = Json.encode(&vec![1, 2, 3]).unwrap();
/// let back: Vec<u32> = Json.decode(&bytes).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// ```
pub trait Codec: Clone + Send + Sync + 'static {
    /// Encodes `value`, or says why it cannot be.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String>;
    /// Decodes `bytes`, or says why they are not a `T`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String>;
}

/// JSON through `serde_json`: readable in `redis-cli`, the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}
