//! `baler ingest` into a real PostgreSQL server.
//!
//! The server is the machine's (`./scripts/test` starts it when it is not
//! running): `postgres://postgres@127.0.0.1:5432/test` with trust
//! authentication, or the URL in `BALER_TEST_POSTGRES_URL`. Each test writes
//! into a table of its own and drops it at the end.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{run, TempDir};

fn url() -> String {
    std::env::var("BALER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `sql` on the test server and returns the first column of the first row.
fn query_i64(sql: &str) -> Option<i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the PostgreSQL test server at {} cannot be reached ({e}); start it \
                     (./scripts/test does) or set BALER_TEST_POSTGRES_URL",
                    url()
                )
            });
        tokio::spawn(conn);
        let rows = client.query(sql, &[]).await.unwrap();
        rows.first().map(|r| r.get::<_, i64>(0))
    })
}

struct Table(String);

impl Drop for Table {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| query_i64(&format!("DROP TABLE IF EXISTS {}", self.0)));
    }
}

#[test]
fn the_postgres_sink_writes_every_record_into_a_real_server() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let table = Table(format!("baler_it_{}_{nanos}", std::process::id()));
    let dir = TempDir::new("postgres");
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--records",
            "5000",
            "--batch-size",
            "250",
            "--sink",
            &url(),
            "--table",
            &table.0,
            "--json",
        ],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["produced"], 5000);
    assert_eq!(s["written"], 5000);
    assert_eq!(s["table_rows"], 5000);
    let sql = format!(
        "SELECT count(DISTINCT (body::json->>'id')::bigint) FROM {} WHERE seq = (body::json->>'id')::bigint",
        table.0
    );
    assert_eq!(query_i64(&sql), Some(5000));
    assert_eq!(
        query_i64(&format!("SELECT count(*) FROM {}", table.0)),
        Some(5000)
    );
}
