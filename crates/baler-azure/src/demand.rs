//! Demands for fair sharing: one blob per owner whose metadata says how many
//! partitions it wants, expiring by the storage service's clock.

use std::time::{Duration, SystemTime};

use baler::shared::{Demand, LeaseStoreError};
use reqwest::{Method, StatusCode};

use crate::sign;
use crate::store::{unexpected, xml_value, AzureLeaseStore, DEMAND_PREFIX};

/// Writes (or, for 0, deletes) `owner`'s demand blob, then lists every
/// demand blob and returns those whose announcement has not expired by the
/// service's clock: its `Last-Modified` plus its time to live is not before
/// the listing's `Date`. Expired ones are deleted on the way (unless they
/// changed meanwhile).
pub(crate) async fn announce(
    store: &AzureLeaseStore,
    owner: &str,
    wanted: u32,
    ttl: Duration,
) -> Result<Vec<Demand>, LeaseStoreError> {
    let blob = format!("{DEMAND_PREFIX}{}", sign::lease_id(owner));
    if wanted == 0 {
        let reply = store.send(Method::DELETE, Some(&blob), &[], &[]).await?;
        if !(reply.status.is_success() || reply.status == StatusCode::NOT_FOUND) {
            return Err(unexpected("withdrawing this instance's demand", &reply));
        }
    } else {
        let wanted = wanted.to_string();
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX)
            .to_string();
        let owner_meta = encode(owner);
        let headers = [
            ("x-ms-blob-type", "BlockBlob"),
            ("x-ms-meta-wanted", wanted.as_str()),
            ("x-ms-meta-ttlms", ttl_ms.as_str()),
            ("x-ms-meta-owner", owner_meta.as_str()),
        ];
        let mut written = false;
        for _ in 0..2 {
            let reply = store.send(Method::PUT, Some(&blob), &[], &headers).await?;
            match (reply.status, reply.code.as_str()) {
                (StatusCode::CREATED, _) => {
                    written = true;
                    break;
                }
                (StatusCode::NOT_FOUND, "ContainerNotFound") => store.create_container().await?,
                _ => return Err(unexpected("announcing this instance's demand", &reply)),
            }
        }
        if !written {
            return Err(LeaseStoreError::protocol(
                "the container was created, but the storage service still says it is not found",
            ));
        }
    }

    let reply = store
        .send(
            Method::GET,
            None,
            &[
                ("restype", "container"),
                ("comp", "list"),
                ("prefix", DEMAND_PREFIX),
                ("include", "metadata"),
            ],
            &[],
        )
        .await?;
    match (reply.status, reply.code.as_str()) {
        (StatusCode::OK, _) => {}
        (StatusCode::NOT_FOUND, "ContainerNotFound") => return Ok(Vec::new()),
        _ => return Err(unexpected("listing the demands", &reply)),
    }
    let now = reply
        .header("date")
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .ok_or_else(|| LeaseStoreError::protocol("the demand listing has no valid Date header"))?;
    let mut demands = Vec::new();
    let mut expired = Vec::new();
    for entry in reply.body.split("<Blob>").skip(1) {
        let Some(parsed) = parse_entry(entry) else {
            continue; // a blob of the prefix that is not a demand
        };
        if parsed.until < now {
            expired.push((parsed.name, parsed.etag));
        } else if parsed.wanted > 0 {
            // Both dates count whole seconds: the announcement may live up
            // to a second past `until`, and saying so never sends the
            // others to look before it has run out.
            let left = parsed.until.duration_since(now).unwrap_or_default();
            demands.push(
                Demand::new(parsed.owner, parsed.wanted).expires_in(left + Duration::from_secs(1)),
            );
        }
    }
    for (name, etag) in expired {
        // Best effort: If-Match keeps an announcement made meanwhile.
        let _ = store
            .send(
                Method::DELETE,
                Some(&name),
                &[],
                &[("if-match", etag.as_str())],
            )
            .await;
    }
    Ok(demands)
}

struct Entry {
    name: String,
    etag: String,
    owner: String,
    wanted: u32,
    until: SystemTime,
}

fn parse_entry(entry: &str) -> Option<Entry> {
    let name = xml_value(entry, "Name")?;
    let modified = httpdate::parse_http_date(xml_value(entry, "Last-Modified")?).ok()?;
    let etag = xml_value(entry, "Etag")
        .unwrap_or("*")
        .replace("&quot;", "\"");
    let metadata = xml_value(entry, "Metadata")?;
    let wanted = xml_value(metadata, "wanted")?.trim().parse().ok()?;
    let ttl = Duration::from_millis(xml_value(metadata, "ttlms")?.trim().parse().ok()?);
    let owner = decode(xml_value(metadata, "owner")?.trim())?;
    Some(Entry {
        name: name.to_owned(),
        etag,
        owner,
        wanted,
        until: modified.checked_add(ttl)?,
    })
}

/// An owner token as a metadata value (visible ASCII, percent-encoded).
fn encode(owner: &str) -> String {
    percent_encoding::utf8_percent_encode(owner, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn decode(value: &str) -> Option<String> {
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_demand_is_read_from_its_metadata() {
        let xml = "<Name>demand-x</Name><Properties><Last-Modified>Tue, 01 Jan 2030 00:00:00 GMT</Last-Modified>\
                   <Etag>&quot;0x8D1&quot;</Etag></Properties><Metadata><wanted>7</wanted>\
                   <ttlms>15000</ttlms><owner>12-ab%2Fc</owner></Metadata></Blob>";
        let e = parse_entry(xml).unwrap();
        assert_eq!(
            (e.name.as_str(), e.owner.as_str(), e.wanted),
            ("demand-x", "12-ab/c", 7)
        );
        assert_eq!(e.etag, "\"0x8D1\"");
        let start = httpdate::parse_http_date("Tue, 01 Jan 2030 00:00:00 GMT").unwrap();
        assert_eq!(e.until, start + Duration::from_secs(15));
        assert!(parse_entry("<Name>demand-y</Name><Metadata></Metadata>").is_none());
    }
}
