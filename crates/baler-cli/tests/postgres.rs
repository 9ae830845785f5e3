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

/// A name no other test, or run, uses: `prefix`, the process and the time.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Connects to the test server and runs `f` with the client.
fn on_server<T, Fut>(f: impl FnOnce(tokio_postgres::Client) -> Fut) -> T
where
    Fut: std::future::Future<Output = T>,
{
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
        f(client).await
    })
}

/// Runs `sql` on the test server and returns the first column of the first row.
fn query_i64(sql: &str) -> Option<i64> {
    on_server(|client| async move {
        let rows = client.query(sql, &[]).await.unwrap();
        rows.first().map(|r| r.get::<_, i64>(0))
    })
}

/// Runs `sql` (one or more statements) on the test server.
fn execute(sql: &str) {
    on_server(|client| async move {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
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
    let table = Table(unique("baler_it"));
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

/// A login role of its own that may hold at most `limit` connections at
/// once, dropped (with everything it owns) at the end.
struct LimitedRole {
    name: String,
    url: String,
}

impl LimitedRole {
    fn create(limit: u32) -> LimitedRole {
        let name = unique("baler_it_role");
        let config: tokio_postgres::Config = url().parse().expect("the test server's URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config.get_dbname().unwrap_or("test").to_owned();
        // The password serves where the server asks for one; with trust
        // authentication it is ignored.
        execute(&format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'baler-test' CONNECTION LIMIT {limit}; \
             GRANT USAGE, CREATE ON SCHEMA public TO {name}"
        ));
        let url = format!("postgres://{name}:baler-test@{host}:{port}/{db}");
        LimitedRole { name, url }
    }
}

impl Drop for LimitedRole {
    fn drop(&mut self) {
        let sql = format!("DROP OWNED BY {0}; DROP ROLE {0}", self.name);
        let _ = std::panic::catch_unwind(|| execute(&sql));
    }
}

#[test]
fn a_server_that_refuses_some_of_the_connections_says_what_to_lower_max_in_flight_to() {
    let role = LimitedRole::create(2);
    // The role owns the table it creates; dropping the role drops it.
    let table = unique("baler_it_limited");
    let dir = TempDir::new("postgres-limit");
    let ingest = |max_in_flight: &str| {
        run(
            &dir.0,
            &[
                "ingest",
                "--records",
                "100",
                "--sink",
                &role.url,
                "--table",
                &table,
                "--max-in-flight",
                max_in_flight,
                "--json",
            ],
            "",
        )
    };

    let out = ingest("4");
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("accepted 2 of the 4 connections --max-in-flight 4 asks for"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("lower --max-in-flight to 2 or less"),
        "{}",
        out.stderr
    );

    // Within the limit, the same role writes every record.
    let out = ingest("2");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.json()["written"], 100);
}
