//! The harness against a real server: DATABASE_URL's, or a throwaway cluster.

use blindfold_testkit::TestDatabase;

#[tokio::test]
async fn a_table_written_and_read_back() {
    let db = TestDatabase::new().await.expect("test database");
    sqlx::query("CREATE TABLE scan (id bigint PRIMARY KEY, label text NOT NULL)").execute(db.pool()).await.unwrap();
    for (id, label) in [(1_i64, "nevus"), (2, "melanoma")] {
        sqlx::query("INSERT INTO scan (id, label) VALUES ($1, $2)")
            .bind(id)
            .bind(label)
            .execute(db.pool())
            .await
            .unwrap();
    }
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, label FROM scan ORDER BY id").fetch_all(db.pool()).await.unwrap();
    assert_eq!(rows, vec![(1, "nevus".to_owned()), (2, "melanoma".to_owned())]);
}

#[tokio::test]
async fn every_test_gets_its_own_database() {
    let first = TestDatabase::new().await.expect("test database");
    let second = TestDatabase::new().await.expect("test database");
    assert_ne!(first.name(), second.name());
    sqlx::query("CREATE TABLE only_in_first (x int)").execute(first.pool()).await.unwrap();
    let visible: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('only_in_first')::text").fetch_one(second.pool()).await.unwrap();
    assert_eq!(visible, None, "a table leaked between test databases");
}

#[tokio::test]
async fn migrations_are_applied() {
    let db = TestDatabase::new().await.expect("test database");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(db.pool()).await.unwrap();
    assert_eq!(applied, blindfold_testkit::MIGRATOR.iter().count() as i64);
}
