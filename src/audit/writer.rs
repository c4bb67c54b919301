//! The writer actor: batches rows into the database, spills them while it
//! is down, replays the spill file when it is back, prunes old rows.
//!
//! Its mailbox is the bounded queue of [`super::AuditHandle`]. Database
//! work runs with `ctx.wait`, so no row is taken from the mailbox while a
//! batch is being written: memory holds at most `audit.queue` rows in the
//! mailbox plus one batch, and rows beyond that go to the spill file.
//! Because every write (batch, replay, shutdown flush) runs this way, two
//! never overlap, which keeps the spill file's replay single-threaded.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;

use super::spill::Spill;
use super::store::{Store, StoreError};
use super::{format_time, AuditRow, AuditStats};

/// Writer settings (from `[audit]`).
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Mailbox capacity.
    pub queue: usize,
    /// Rows per insert.
    pub batch_size: usize,
    /// Longest a row waits for its batch.
    pub flush_interval: Duration,
    /// Pause between attempts while the database is down.
    pub retry_interval: Duration,
    /// Age beyond which rows are pruned; `None` keeps them.
    pub retention: Option<Duration>,
    /// Time between retention runs.
    pub prune_interval: Duration,
}

/// Writes everything it holds (batch and spill file) to the database now;
/// answers whether the database took it all (if not, it is in the spill
/// file). Sent by the shutdown after the sessions closed.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Flush;

/// The writer actor.
pub struct AuditWriter {
    store: Store,
    spill: Arc<Spill>,
    stats: Arc<AuditStats>,
    config: WriterConfig,
    /// Rows taken from the mailbox, not yet written.
    batch: Vec<AuditRow>,
    /// Migrations are applied.
    migrated: bool,
    /// The database failed: until then rows go to the spill file directly.
    down_until: Option<Instant>,
}

impl AuditWriter {
    /// A writer on `store` spilling to `spill`.
    pub fn new(store: Store, spill: Arc<Spill>, stats: Arc<AuditStats>, config: WriterConfig) -> Self {
        Self {
            store,
            spill,
            stats,
            batch: Vec::with_capacity(config.batch_size),
            config,
            migrated: false,
            down_until: None,
        }
    }

    /// Starts a write of the batch (and the spill file) unless there is
    /// nothing to write. While the database is known to be down, the batch
    /// goes to the spill file without trying it, unless `force`.
    fn write(&mut self, force: bool, ctx: &mut Context<Self>, done: Option<tokio::sync::oneshot::Sender<bool>>) {
        let rows = std::mem::take(&mut self.batch);
        let waiting = self.down_until.is_some_and(|t| Instant::now() < t);
        let idle = rows.is_empty() && !self.spill.pending() && self.migrated;
        if idle || (waiting && !force) {
            spill_rows(&self.spill, &self.stats, rows);
            if let Some(done) = done {
                let _ = done.send(!self.spill.pending() && !waiting);
            }
            return;
        }
        let job = write(
            self.store.clone(),
            self.spill.clone(),
            self.stats.clone(),
            rows,
            self.migrated,
            self.config.batch_size,
        );
        ctx.wait(job.into_actor(self).map(move |result, act, _| {
            let ok = result.is_ok();
            act.stats.database_down.store(!ok, std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(()) => {
                    if act.down_until.take().is_some() {
                        tracing::info!("audit database is back; spill file replayed");
                    }
                    act.migrated = true;
                }
                Err(e) => {
                    AuditStats::add(&act.stats.db_errors, 1);
                    if act.down_until.is_none() {
                        tracing::error!("audit database unavailable, rows go to the spill file: {e}");
                    }
                    act.down_until = Some(Instant::now() + act.config.retry_interval);
                }
            }
            if let Some(done) = done {
                let _ = done.send(ok);
            }
        }));
    }

    fn prune(&mut self, ctx: &mut Context<Self>) {
        let Some(retention) = self.config.retention else { return };
        if self.down_until.is_some() || !self.migrated {
            return;
        }
        let cutoff = format_time(
            SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let (store, stats) = (self.store.clone(), self.stats.clone());
        ctx.spawn(
            async move {
                match store.prune(&cutoff).await {
                    Ok(n) => {
                        AuditStats::add(&stats.pruned, n);
                        if n > 0 {
                            tracing::info!(rows = n, before = %cutoff, "audit retention: old rows deleted");
                        }
                    }
                    Err(e) => tracing::warn!("audit retention: {e}"),
                }
            }
            .into_actor(self),
        );
    }
}

/// Rows that cannot go to the database now: to the spill file.
fn spill_rows(spill: &Spill, stats: &AuditStats, rows: Vec<AuditRow>) {
    if !rows.is_empty() {
        spill.append(&rows, stats);
        stats.leave_memory(rows.len() as u64);
    }
}

/// Migrations if not yet applied, then the spill file in order, then
/// `rows`; on failure `rows` go to the spill file.
async fn write(
    store: Store,
    spill: Arc<Spill>,
    stats: Arc<AuditStats>,
    rows: Vec<AuditRow>,
    migrated: bool,
    chunk: usize,
) -> Result<(), StoreError> {
    let result = async {
        if !migrated {
            store.migrate().await?;
        }
        replay(&store, &spill, &stats, chunk).await?;
        if !rows.is_empty() {
            let n = store.insert(&rows).await?;
            AuditStats::add(&stats.inserted, n);
            stats.leave_memory(rows.len() as u64);
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        spill_rows(&spill, &stats, rows);
    }
    result
}

/// Inserts the spill file, in file order, chunk by chunk. Overflow keeps
/// appending while this runs: a few rounds take those too.
async fn replay(store: &Store, spill: &Spill, stats: &AuditStats, chunk: usize) -> Result<(), StoreError> {
    for _round in 0..4 {
        match spill.begin_replay() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                tracing::error!("audit spill file cannot be replayed: {e}");
                return Ok(());
            }
        }
        loop {
            let next = match spill.read_chunk(chunk) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("audit spill file unreadable, set aside: {e}");
                    spill.set_aside();
                    break;
                }
            };
            if !next.rows.is_empty() {
                let n = store.insert(&next.rows).await?;
                AuditStats::add(&stats.inserted, n);
                AuditStats::add(&stats.replayed, next.rows.len() as u64);
            }
            spill.commit(next.next);
            if next.eof {
                if let Err(e) = spill.finish_replay() {
                    tracing::error!("audit spill file replayed but not removed: {e}");
                }
                break;
            }
        }
    }
    Ok(())
}

impl Actor for AuditWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.config.queue);
        // Migrations (and a spill file left by an earlier run) first.
        self.write(true, ctx, None);
        ctx.run_interval(self.config.flush_interval, |act, ctx| act.write(false, ctx, None));
        ctx.run_interval(self.config.prune_interval, |act, ctx| act.prune(ctx));
        // The first retention run once the migrations are through.
        ctx.run_later(Duration::from_millis(10), |act, ctx| act.prune(ctx));
    }
}

impl Handler<AuditRow> for AuditWriter {
    type Result = ();

    fn handle(&mut self, row: AuditRow, ctx: &mut Self::Context) {
        self.batch.push(row);
        if self.batch.len() >= self.config.batch_size {
            self.write(false, ctx, None);
        }
    }
}

impl Handler<Flush> for AuditWriter {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write(true, ctx, Some(tx));
        Box::pin(async move { rx.await.unwrap_or(false) })
    }
}
