//! Shared Key authorization: the request's canonical form, signed with
//! HMAC-SHA256 under the account key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The standard headers that the string to sign holds, in its order.
pub(crate) const STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// The string a Shared Key signature signs:
///
/// ```text
/// VERB \n standard headers, one a line (Content-Length empty when 0) \n
/// x-ms-* headers, lowercased and sorted, "name:value\n" each
/// /account/path, then "\nname:value" for each query parameter, sorted
/// ```
///
/// `headers` are every header sent (names in any case); `path` is the URL's
/// path as sent; `query` the query parameters, decoded.
pub(crate) fn string_to_sign(
    method: &str,
    account: &str,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    };
    let mut s = String::with_capacity(256);
    s.push_str(method);
    s.push('\n');
    for name in STANDARD_HEADERS {
        let value = header(name);
        // Since version 2015-02-21 a zero length is signed as empty.
        if !(name == "content-length" && value == "0") {
            s.push_str(value);
        }
        s.push('\n');
    }
    let mut ms: Vec<(String, &str)> = headers
        .iter()
        .filter(|(n, _)| n.len() > 5 && n[..5].eq_ignore_ascii_case("x-ms-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim()))
        .collect();
    ms.sort();
    for (name, value) in ms {
        s.push_str(&name);
        s.push(':');
        s.push_str(value);
        s.push('\n');
    }
    s.push('/');
    s.push_str(account);
    s.push_str(path);
    let mut params: Vec<(String, &str)> = query
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), *v))
        .collect();
    params.sort();
    for (name, value) in params {
        s.push('\n');
        s.push_str(&name);
        s.push(':');
        s.push_str(value);
    }
    s
}

/// The `Authorization` header's value for `string_to_sign`.
pub(crate) fn authorization(account: &str, key: &[u8], string_to_sign: &str) -> String {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(string_to_sign.as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    format!("SharedKey {account}:{signature}")
}

/// The lease id an owner token proposes: a GUID made from the token's
/// SHA-256, so that every call of one owner proposes the same id and two
/// owners never do.
pub(crate) fn lease_id(owner: &str) -> String {
    let hash = Sha256::digest(owner.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    // A version-4, RFC 4122 variant GUID in form.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_to_sign_has_every_part_in_its_place() {
        let s = string_to_sign(
            "PUT",
            "acme",
            "/acme/orders/partition-3",
            &[("comp", "lease")],
            &[
                ("x-ms-version", "2021-12-02"),
                ("Content-Length", "0"),
                ("x-ms-date", "Tue, 01 Jan 2030 00:00:00 GMT"),
                ("X-MS-Lease-Action", " acquire "),
                ("If-None-Match", "*"),
            ],
        );
        assert_eq!(
            s,
            "PUT\n\n\n\n\n\n\n\n\n*\n\n\n\
             x-ms-date:Tue, 01 Jan 2030 00:00:00 GMT\n\
             x-ms-lease-action:acquire\n\
             x-ms-version:2021-12-02\n\
             /acme/acme/orders/partition-3\ncomp:lease"
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_string_under_the_key() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
        // = f7bc83f4...d8, base64 below.
        let auth = authorization(
            "acme",
            b"key",
            "The quick brown fox jumps over the lazy dog",
        );
        assert_eq!(
            auth,
            "SharedKey acme:97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg="
        );
    }

    #[test]
    fn lease_ids_are_guids_one_per_owner() {
        let a = lease_id("1234-abcdef");
        assert_eq!(a, lease_id("1234-abcdef"));
        assert_ne!(a, lease_id("1234-abcdee"));
        assert_eq!(a.len(), 36);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(a.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert_eq!(&a[14..15], "4");
    }
}
