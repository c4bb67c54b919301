//! The writer actor: batches rows into the database, spills them while it
//! is down, replays the spill file when it is back, prunes old rows.
//!
//! Its mailbox is the bounded queue of [`super::AuditHandle`]. Database
//! work runs with `ctx.wait`, so no row is taken from the mailbox while a
//! batch is being written: memory holds at most `audit.queue` rows in the
//! mailbox plus one batch, and rows beyond that go to the spill file.
//! Because every write (batch, replay, shutdown flush) runs this way, two
//! never overlap, which keeps the spill file's replay single-threaded.
//!
//! How long a row stays in memory (what `kill -9` loses, see the module
//! [`super`]): at most `audit.flush_interval_ms` in the batch, then one
//! write. A write is bounded: its replay of the spill file stops after
//! [`REPLAY_SLICE`] (the batch then goes to the spill file, behind the rows
//! still to replay, so file order holds), and each statement after
//! `database.timeout_ms`. While the database is known to be down, batches
//! go to the spill file at each tick without trying it.
//!
//! The shutdown sets a [`Cutoff`]: database work in flight gives up at it
//! (its rows go to the spill file, a commit that did happen is recognised
//! by the rows' ids at the replay), and no write tries the database after
//! it, so a dead database cannot hold the exit.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::watch;

use super::spill::Spill;
use super::store::{Store, StoreError};
use super::{format_time, AuditRow, AuditStats};

/// Longest a write replays the spill file before it lets the batch go (to
/// the spill file) and the mailbox move; the replay goes on at the next
/// write. Keeps the time a row spends in memory short while a large spill
/// file is replayed.
pub const REPLAY_SLICE: Duration = Duration::from_secs(1);

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
    /// The shutdown's deadline for database work.
    pub cutoff: Cutoff,
}

/// The instant after which the writer no longer waits on the database, set
/// by the shutdown. Shared (cheap to clone) because the shutdown must reach
/// a write in flight, which holds the actor (`ctx.wait`): a message would
/// only be read after it.
#[derive(Debug, Clone)]
pub struct Cutoff(Arc<watch::Sender<Option<tokio::time::Instant>>>);

impl Default for Cutoff {
    fn default() -> Self {
        Cutoff(Arc::new(watch::Sender::new(None)))
    }
}

impl Cutoff {
    /// From `at` on, database work gives up and rows go to the spill file.
    pub fn set(&self, at: tokio::time::Instant) {
        self.0.send_replace(Some(at));
    }

    /// Whether a shutdown set it.
    pub fn is_set(&self) -> bool {
        self.0.borrow().is_some()
    }

    fn passed(&self) -> bool {
        self.0.borrow().is_some_and(|at| tokio::time::Instant::now() >= at)
    }

    /// Runs `work` until it ends or the cutoff passes (set before or while
    /// it runs), whichever comes first.
    async fn bound<T>(&self, work: impl std::future::Future<Output = Result<T, WriteError>>) -> Result<T, WriteError> {
        let mut watch = self.0.subscribe();
        tokio::pin!(work);
        loop {
            let at = *watch.borrow_and_update();
            let cutoff = async move {
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                result = &mut work => return result,
                () = cutoff => return Err(WriteError::Cutoff),
                changed = watch.changed() => {
                    if changed.is_err() {
                        return work.await;
                    }
                }
            }
        }
    }
}

/// Why a write did not put everything in the database (its rows are in
/// the spill file).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database failed or did not answer in time.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replay file could not be read (tried again later).
    #[error("audit spill file could not be read: {0}")]
    SpillRead(std::io::Error),
    /// The shutdown's cutoff passed first.
    #[error("the shutdown's deadline for the database passed")]
    Cutoff,
}

/// Writes everything it holds (batch and spill file) to the database now;
/// answers whether the database took it all (if not, it is in the spill
/// file). Sent by the shutdown after the sessions closed, under a
/// [`Cutoff`]: with the database known to be down it does not try it.
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
    /// goes to the spill file without trying it, unless `force` (and no
    /// shutdown cutoff is set); once the cutoff passed, always.
    fn write(&mut self, force: bool, ctx: &mut Context<Self>, done: Option<tokio::sync::oneshot::Sender<bool>>) {
        let rows = std::mem::take(&mut self.batch);
        let cutoff = &self.config.cutoff;
        let down = self.down_until.is_some();
        let closing = cutoff.passed() || (cutoff.is_set() && down);
        let waiting = closing || (self.down_until.is_some_and(|t| Instant::now() < t) && !force);
        let idle = rows.is_empty() && !self.spill.pending() && self.migrated;
        if idle || waiting {
            spill_rows(&self.spill, &self.stats, rows);
            if let Some(done) = done {
                let _ = done.send(!self.spill.pending() && !waiting);
            }
            return;
        }
        // A flush replays all it can (until the cutoff, at shutdown); other
        // writes a slice at a time.
        let slice = done.is_none().then(|| Instant::now() + REPLAY_SLICE);
        let job = write(
            self.store.clone(),
            self.spill.clone(),
            self.stats.clone(),
            rows,
            self.migrated,
            self.config.batch_size,
            slice,
            self.config.cutoff.clone(),
        );
        ctx.wait(job.into_actor(self).map(move |result, act, _| {
            let ok = matches!(result, Ok(true));
            match result {
                Ok(_) => {
                    act.stats
                        .database_down
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    if act.down_until.take().is_some() {
                        tracing::info!("audit database is back; replaying the spill file");
                    }
                    act.migrated = true;
                }
                Err(WriteError::SpillRead(e)) => {
                    // The database is fine (as far as we know): try again
                    // after the usual pause, without marking it down.
                    AuditStats::add(&act.stats.spill_read_errors, 1);
                    tracing::error!("{e}; the replay is tried again in {:?}", act.config.retry_interval);
                    act.migrated = true;
                    act.down_until = Some(Instant::now() + act.config.retry_interval);
                }
                Err(e) => {
                    act.stats
                        .database_down
                        .store(true, std::sync::atomic::Ordering::Relaxed);
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
        if self.down_until.is_some() || !self.migrated || self.config.cutoff.is_set() {
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

/// Rows that cannot go to the database now: to the spill file, forced to
/// the disk as `audit.spill_fsync` says.
fn spill_rows(spill: &Spill, stats: &AuditStats, rows: Vec<AuditRow>) {
    if !rows.is_empty() {
        spill.append(&rows, stats);
        stats.leave_memory(rows.len() as u64);
    }
    spill.sync();
}

/// Migrations if not yet applied, then the spill file in order, then
/// `rows`, all before the cutoff; `rows` go to the spill file when that
/// fails, or when the replay did not finish by `slice` (they come after
/// the rows still to replay). Ok(whether the database took everything).
#[allow(clippy::too_many_arguments)]
async fn write(
    store: Store,
    spill: Arc<Spill>,
    stats: Arc<AuditStats>,
    rows: Vec<AuditRow>,
    migrated: bool,
    chunk: usize,
    slice: Option<Instant>,
    cutoff: Cutoff,
) -> Result<bool, WriteError> {
    let work = async {
        if !migrated {
            store.migrate().await?;
        }
        if !replay(&store, &spill, &stats, chunk, slice).await? {
            return Ok(false);
        }
        if !rows.is_empty() {
            let n = store.insert(&rows).await?;
            AuditStats::add(&stats.inserted, n);
        }
        Ok(true)
    };
    let result = cutoff.bound(work).await;
    if matches!(result, Ok(true)) {
        stats.leave_memory(rows.len() as u64);
    } else {
        // A cut-off insert may have committed: the replay skips its rows
        // by their ids.
        spill_rows(&spill, &stats, rows);
    }
    result
}

/// Inserts the spill file, in file order, chunk by chunk, until `slice`
/// passes. Overflow keeps appending while this runs: a few rounds take
/// those too. Ok(whether it is all in).
async fn replay(
    store: &Store,
    spill: &Spill,
    stats: &AuditStats,
    chunk: usize,
    slice: Option<Instant>,
) -> Result<bool, WriteError> {
    for _round in 0..4 {
        match spill.begin_replay() {
            Ok(true) => {}
            Ok(false) => return Ok(true),
            Err(e) => return Err(WriteError::SpillRead(e)),
        }
        loop {
            let next = spill.read_chunk(chunk, stats).map_err(WriteError::SpillRead)?;
            if !next.rows.is_empty() {
                let n = store.insert(&next.rows).await?;
                AuditStats::add(&stats.inserted, n);
                AuditStats::add(&stats.replayed, next.rows.len() as u64);
            }
            spill.commit(next.next);
            if next.eof {
                if let Err(e) = spill.finish_replay() {
                    tracing::error!("audit spill file replayed but not removed: {e}");
                    return Err(WriteError::SpillRead(e));
                }
                break;
            }
            if slice.is_some_and(|s| Instant::now() >= s) {
                return Ok(false);
            }
        }
    }
    Ok(!spill.pending())
}

impl Actor for AuditWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.config.queue);
        // Migrations (and a spill file left by an earlier run) first.
        self.write(true, ctx, None);
        ctx.run_interval(self.config.flush_interval, |act, ctx| {
            act.write(false, ctx, None);
            // Rows connections appended when the queue was full.
            act.spill.sync();
        });
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
