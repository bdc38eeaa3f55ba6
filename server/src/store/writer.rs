//! Group commit: one task owns SQLite's single write connection, drains every write queued while the
//! previous batch ran, executes them in one transaction, and only after COMMIT answers each caller.
//! Under load a batch carries dozens of writes for the price of one commit; alone, a write waits for
//! nobody. An answer is never sent for a write that was not committed.
//!
//! Each write is atomic on its own, by construction. [`Writer::run`] hands its closure a [`One`],
//! which executes exactly one statement (each of its methods consumes it), and a statement is
//! atomic by SQLite's own rule (a failing statement undoes itself). A write of several statements
//! must use [`Writer::run_many`], whose closure gets the connection under a SAVEPOINT: one that
//! fails half-way is rolled back to it, so its earlier statements never reach the batch's commit.
//! (Hot writes are single statements: a savepoint costs two more round trips to SQLite's thread
//! per write.) When the transaction cannot even begin (the file locked by another process past the
//! busy timeout), no write of the batch runs, and each caller gets `NotCommitted`.
use futures::future::BoxFuture;
use sqlx::query::QueryScalar;
use sqlx::query::{Map, Query};
use sqlx::sqlite::{SqliteQueryResult, SqliteRow};
use sqlx::{Connection, FromRow, IntoArguments, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// Largest batch: bounds the time one transaction holds the write lock.
const MAX_BATCH: usize = 512;

type Reply = Box<dyn FnOnce(bool) + Send>;
/// One queued write. Called with `run = false` it does nothing and only makes its reply (the batch
/// could not begin); with `true` it runs and says whether it succeeded.
type OpFn =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection, bool) -> BoxFuture<'c, (bool, Reply)> + Send>;

struct Op {
    run: OpFn,
    /// Several statements: isolate them under a savepoint.
    many: bool,
}

#[derive(Clone, Debug)]
pub struct Writer {
    ops: mpsc::Sender<Op>,
}

/// State kept beside SQLite by the writes themselves (early stopping's ordered values): told when
/// each write ends and whether it stood, and whether each batch committed, so it can drop what a
/// rolled-back write or batch changed.
pub trait Observer: Send + Sync + 'static {
    /// A write ended: `ok` false when it failed (its statements were rolled back).
    fn write_ended(&self, ok: bool);
    /// A batch ended: `committed` false when nothing of it was stored.
    fn batch_ended(&self, committed: bool);
}

/// No state beside SQLite.
struct Nobody;

impl Observer for Nobody {
    fn write_ended(&self, _: bool) {}
    fn batch_ended(&self, _: bool) {}
}

impl Writer {
    pub fn spawn(conn: SqliteConnection) -> Self {
        Self::spawn_observed(conn, std::sync::Arc::new(Nobody))
    }

    pub fn spawn_observed(conn: SqliteConnection, observer: std::sync::Arc<dyn Observer>) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(conn, rx, observer));
        Writer { ops: tx }
    }

    /// Runs `f`, which executes one SQL statement through the [`One`] it is given, inside the next
    /// batch's transaction; its result is returned once that commits.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(One<'c>) -> BoxFuture<'c, Result<R, StoreError>> + Send + 'static,
    {
        self.submit(move |c: &mut SqliteConnection| f(One(c)), false)
            .await
    }

    /// Runs `f`, which may execute several statements, atomically inside the next batch's
    /// transaction (under a savepoint); its result is returned once that commits.
    pub async fn run_many<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static,
    {
        self.submit(f, true).await
    }

    async fn submit<R, F>(&self, f: F, many: bool) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let run: OpFn = Box::new(move |conn, run| {
            Box::pin(async move {
                let result = if run {
                    f(conn).await
                } else {
                    Err(StoreError::NotCommitted)
                };
                let ok = result.is_ok();
                let reply = Box::new(move |committed: bool| {
                    let _ = tx.send(if committed {
                        result
                    } else {
                        Err(StoreError::NotCommitted)
                    });
                }) as Reply;
                (ok, reply)
            })
        });
        let op = Op { run, many };
        self.ops
            .send(op)
            .await
            .map_err(|_| StoreError::NotCommitted)?;
        rx.await.map_err(|_| StoreError::NotCommitted)?
    }
}

/// The one statement of a [`Writer::run`] write: each method executes a statement and consumes
/// it, so a second statement in the same write does not compile (it needs [`Writer::run_many`]).
#[derive(Debug)]
pub struct One<'c>(&'c mut SqliteConnection);

impl<'c> One<'c> {
    /// One statement of a [`Writer::run_many`] write (already under its savepoint), for a helper
    /// that both kinds of write share.
    pub fn within(c: &'c mut SqliteConnection) -> Self {
        One(c)
    }

    /// A statement that returns no rows.
    pub async fn execute<'q, A>(self, q: Query<'q, Sqlite, A>) -> sqlx::Result<SqliteQueryResult>
    where
        A: 'q + IntoArguments<'q, Sqlite>,
    {
        q.execute(self.0).await
    }

    /// A statement that returns at most one row (`RETURNING`, or a read on the write connection).
    pub async fn fetch_optional<'q, F, O, A>(
        self,
        q: Map<'q, Sqlite, F, A>,
    ) -> sqlx::Result<Option<O>>
    where
        F: FnMut(SqliteRow) -> sqlx::Result<O> + Send,
        O: Send + Unpin,
        A: 'q + Send + IntoArguments<'q, Sqlite>,
    {
        q.fetch_optional(self.0).await
    }

    /// A statement that returns at most one value (`query_scalar!`).
    pub async fn fetch_optional_scalar<'q, O, A>(
        self,
        q: QueryScalar<'q, Sqlite, O, A>,
    ) -> sqlx::Result<Option<O>>
    where
        O: Send + Unpin,
        A: 'q + Send + IntoArguments<'q, Sqlite>,
        (O,): Send + Unpin + for<'r> FromRow<'r, SqliteRow>,
    {
        q.fetch_optional(self.0).await
    }

    /// A statement that returns any number of rows.
    pub async fn fetch_all<'q, F, O, A>(self, q: Map<'q, Sqlite, F, A>) -> sqlx::Result<Vec<O>>
    where
        F: FnMut(SqliteRow) -> sqlx::Result<O> + Send,
        O: Send + Unpin,
        A: 'q + Send + IntoArguments<'q, Sqlite>,
    {
        q.fetch_all(self.0).await
    }
}

async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Op>,
    observer: std::sync::Arc<dyn Observer>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let begun = match sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "cannot begin a write transaction; nothing of the batch ran");
                false
            }
        };
        let mut replies = Vec::with_capacity(batch.len());
        for op in batch.drain(..) {
            let (ok, reply) = match (begun, op.many) {
                (false, _) => (op.run)(&mut conn, false).await,
                (true, false) => (op.run)(&mut conn, true).await,
                (true, true) => run_isolated(&mut conn, op.run).await,
            };
            observer.write_ended(ok);
            replies.push(reply);
        }
        let committed = begun && commit(&mut conn, replies.len()).await;
        observer.batch_ended(committed);
        for reply in replies {
            reply(committed);
        }
    }
    let _ = conn.close().await;
}

/// Runs one write under its own savepoint: on failure, what it did is undone and the rest of the
/// batch is unaffected.
async fn run_isolated(conn: &mut SqliteConnection, op: OpFn) -> (bool, Reply) {
    if sqlx::query("SAVEPOINT write")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        return op(conn, false).await;
    }
    let (ok, reply) = op(conn, true).await;
    if !ok {
        let _ = sqlx::query("ROLLBACK TO write").execute(&mut *conn).await;
    }
    let _ = sqlx::query("RELEASE write").execute(&mut *conn).await;
    (ok, reply)
}

async fn commit(conn: &mut SqliteConnection, writes: usize) -> bool {
    match sqlx::query("COMMIT").execute(&mut *conn).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, writes, "commit failed; the batch is rolled back");
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use sqlx::Connection;

    async fn writer() -> (Writer, tempfile::TempDir, std::path::PathBuf) {
        writer_observed(std::sync::Arc::new(Nobody)).await
    }

    async fn writer_observed(
        observer: std::sync::Arc<dyn Observer>,
    ) -> (Writer, tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut c = SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .execute(&mut c)
            .await
            .unwrap();
        (Writer::spawn_observed(c, observer), dir, path)
    }

    async fn rows(path: &std::path::Path) -> Vec<i64> {
        let mut c = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT x FROM t ORDER BY x")
            .fetch_all(&mut c)
            .await
            .unwrap()
    }

    /// A write whose second statement fails leaves nothing of its first, while a write batched with
    /// it commits.
    #[tokio::test]
    async fn a_write_that_fails_half_way_leaves_nothing_and_spares_its_batch() {
        let (w, _dir, path) = writer().await;
        let failing = w.run_many(|c| {
            async move {
                sqlx::query("INSERT INTO t VALUES (1)")
                    .execute(&mut *c)
                    .await?;
                sqlx::query("INSERT INTO t VALUES (1)")
                    .execute(&mut *c)
                    .await?; // duplicate key
                Ok(())
            }
            .boxed()
        });
        let fine = w.run(|one| {
            async move {
                one.execute(sqlx::query("INSERT INTO t VALUES (2)")).await?;
                Ok(())
            }
            .boxed()
        });
        let (a, b) = tokio::join!(failing, fine);
        assert!(a.is_err());
        assert!(b.is_ok());
        assert_eq!(rows(&path).await, vec![2]);
    }

    /// Records what the writer tells its observer.
    #[derive(Default)]
    struct Told(std::sync::Mutex<Vec<String>>);

    impl Observer for Told {
        fn write_ended(&self, ok: bool) {
            self.0.lock().unwrap().push(format!("write {ok}"));
        }
        fn batch_ended(&self, committed: bool) {
            self.0.lock().unwrap().push(format!("batch {committed}"));
        }
    }

    /// The observer hears of each write's end, failed or not, then of the batch's commit: what the
    /// in-memory early-stopping values need to drop what was rolled back.
    #[tokio::test]
    async fn the_observer_hears_of_every_write_and_batch() {
        let told = std::sync::Arc::new(Told::default());
        let (w, _dir, _path) = writer_observed(told.clone()).await;
        let insert = |x: i64| {
            w.run(move |one| {
                async move {
                    one.execute(sqlx::query("INSERT INTO t VALUES (?)").bind(x))
                        .await?;
                    Ok(())
                }
                .boxed()
            })
        };
        insert(1).await.unwrap();
        assert!(insert(1).await.is_err(), "a duplicate key");
        assert_eq!(
            *told.0.lock().unwrap(),
            ["write true", "batch true", "write false", "batch true"]
        );
    }
}
