//! Rolling upgrades on a shared database: a server of this version starts on a database that a
//! newer server migrated, when the newer migrations declare this schema compatible
//! (`schema_compat`, migration 9), and refuses with a reason when they do not.

use std::borrow::Cow;

use oracle_calls_proto::Did;
use oracle_calls_server::store::{SCHEMA_VERSION, Store};
use oracle_calls_server::{Error, now};
use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use oracle_calls_test_support::PgSchema;

use crate::support::{Db, new_call_id, pending_content, temp_dir};

/// A database of its own for one test: an SQLite file, or a fresh PostgreSQL schema of the
/// stack's database (dropped at the end), so the shared schema never sees a future migration.
struct FreshDb {
    url: String,
    pg: Option<PgSchema>,
    _dir: crate::support::TempDir,
}

impl FreshDb {
    async fn new(db: Db) -> Self {
        let dir = temp_dir();
        match db {
            Db::Sqlite => Self {
                url: format!(
                    "sqlite://{}?mode=rwc",
                    dir.0.join("calls.sqlite3").display()
                ),
                pg: None,
                _dir: dir,
            },
            Db::Postgres => {
                let pg = PgSchema::create("upgrade").await;
                Self {
                    url: pg.url.clone(),
                    pg: Some(pg),
                    _dir: dir,
                }
            }
        }
    }

    async fn drop_schema(self) {
        if let Some(pg) = self.pg {
            pg.drop().await;
        }
    }

    /// What a newer server does when it starts: applies its migration `version` (here a new
    /// table, plus `extra` SQL) and records it, knowing this server's migrations.
    async fn migrate_as_newer_server(&self, version: i64, extra: &str) {
        let pool = sqlx::AnyPool::connect(&self.url).await.unwrap();
        let sql = format!("CREATE TABLE future_{version} (id BIGINT PRIMARY KEY);\n{extra}");
        let mut m = Migrator::with_migrations(vec![Migration::new(
            version,
            Cow::Owned(format!("future {version}")),
            MigrationType::Simple,
            sqlx::AssertSqlSafe(sql).into_sql_str(),
            false,
        )]);
        // Its own list starts with this server's migrations, which it does not repeat here.
        m.set_ignore_missing(true);
        m.run(&pool).await.unwrap();
        pool.close().await;
    }
}

async fn stored_call_survives(store: &Store) {
    // A write and a read through this server's own queries, on the newer schema.
    let call_id = new_call_id();
    let now = now().unix_millis();
    let oracle = Did::parse("did:ixo:oracle-upgrade").unwrap();
    let content = pending_content(&call_id, "session-upgrade-1", &oracle, now);
    store
        .insert_call(
            &call_id,
            "!room:example.org",
            "@u:example.org",
            &content,
            now,
        )
        .await
        .unwrap();
    let rec = store
        .call(&call_id)
        .await
        .unwrap()
        .expect("the call just stored");
    assert_eq!(rec.sender, "@u:example.org");
}

async fn additive_then_breaking(db: Db) {
    let fresh = FreshDb::new(db).await;
    // This server creates the database at its own schema.
    let first = Store::connect(&fresh.url).await.unwrap();
    first.close().await;

    // A newer server adds a table: servers of this schema may still run.
    fresh.migrate_as_newer_server(SCHEMA_VERSION + 1, "").await;
    let store = Store::connect(&fresh.url)
        .await
        .expect("a server starts on a database a newer server migrated additively");
    stored_call_survives(&store).await;
    store.close().await;

    // A later one makes a change older servers cannot live with, and says so.
    let breaking = SCHEMA_VERSION + 2;
    fresh
        .migrate_as_newer_server(
            breaking,
            &format!("UPDATE schema_compat SET oldest_server_schema = {breaking} WHERE id = 1;"),
        )
        .await;
    let err = Store::connect(&fresh.url).await.unwrap_err();
    match &err {
        Error::SchemaTooNew {
            database,
            needs,
            ours,
        } => {
            assert_eq!(
                (*database, *needs, *ours),
                (breaking, breaking, SCHEMA_VERSION)
            );
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("schema is at version {breaking}"))
            && text.contains("upgrade this server"),
        "{text}"
    );
    fresh.drop_schema().await;
}

#[tokio::test]
async fn an_older_server_runs_on_an_additive_newer_schema_and_refuses_a_breaking_one_sqlite() {
    additive_then_breaking(Db::Sqlite).await;
}

#[tokio::test]
async fn an_older_server_runs_on_an_additive_newer_schema_and_refuses_a_breaking_one_postgres() {
    additive_then_breaking(Db::Postgres).await;
}

/// Without `schema_compat` (a database emptied of its row by hand) nothing vouches for this
/// server on a newer database: it refuses.
#[tokio::test]
async fn a_newer_database_without_its_compat_row_is_refused() {
    let fresh = FreshDb::new(Db::Sqlite).await;
    Store::connect(&fresh.url).await.unwrap().close().await;
    fresh
        .migrate_as_newer_server(SCHEMA_VERSION + 1, "DELETE FROM schema_compat;")
        .await;
    let err = Store::connect(&fresh.url).await.unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { database, .. } if database == SCHEMA_VERSION + 1),
        "{err:?}"
    );
}
