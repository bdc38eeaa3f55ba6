//! Group commit: one task owns SQLite's single write connection, drains every write queued while the
//! previous batch ran, executes them in one transaction, and only after COMMIT answers each caller.
//! Under load a batch carries dozens of writes for the price of one commit; alone, a write waits for
//! nobody. An answer is never sent for a write that was not committed.
use futures::future::BoxFuture;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// Largest batch: bounds the time one transaction holds the write lock.
const MAX_BATCH: usize = 512;

type Reply = Box<dyn FnOnce(bool) + Send>;
type Op = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Reply> + Send>;

#[derive(Clone, Debug)]
pub struct Writer {
    ops: mpsc::Sender<Op>,
}

impl Writer {
    pub fn spawn(conn: SqliteConnection) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(conn, rx));
        Writer { ops: tx }
    }

    /// Runs `f` inside the next batch's transaction; its result is returned once that commits.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(move |conn| {
            Box::pin(async move {
                let result = f(conn).await;
                Box::new(move |committed: bool| {
                    let _ = tx.send(if committed {
                        result
                    } else {
                        Err(StoreError::NotCommitted)
                    });
                }) as Reply
            })
        });
        self.ops
            .send(op)
            .await
            .map_err(|_| StoreError::NotCommitted)?;
        rx.await.map_err(|_| StoreError::NotCommitted)?
    }
}

async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut replies = Vec::with_capacity(batch.len());
        let begun = sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await;
        if let Err(e) = &begun {
            tracing::error!(error = %e, "cannot begin a write transaction");
        }
        for op in batch.drain(..) {
            replies.push(op(&mut conn).await);
        }
        let committed = match begun {
            Ok(_) => match sqlx::query("COMMIT").execute(&mut conn).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, writes = replies.len(), "commit failed; the batch is rolled back");
                    let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                    false
                }
            },
            Err(_) => false,
        };
        for reply in replies {
            reply(committed);
        }
    }
    let _ = conn.close().await;
}
