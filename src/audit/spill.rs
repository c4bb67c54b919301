//! The spill file: rows that could not go to the database (yet), as JSON
//! lines in an append-only file.
//!
//! Appends come from the writer (database down) and from
//! [`super::AuditHandle::record`] (queue full), under one lock, one
//! `write` per call. To replay, the writer renames the file to
//! `<file>.replay` (new appends start a new file) and reads it in chunks,
//! in file order; once every chunk is in the database the replay file is
//! removed. A crash during a replay leaves the `.replay` file, which is
//! replayed from its start at the next opportunity: the rows already
//! inserted are skipped by their id. A line that does not parse (a write
//! cut by a crash) is skipped and logged. JSON escapes every control
//! character, so a hostile string stays inside its line.
//!
//! Rows hold client addresses, user ids and what clients sent: the file is
//! created readable by roomcast's user only (0600), and so is a directory
//! roomcast creates for it (0700).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{AuditRow, AuditStats};

/// The spill file of one node.
pub struct Spill {
    path: PathBuf,
    replay_path: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

struct State {
    /// Open for appending, once something was appended.
    file: Option<File>,
    /// Bytes in the append file.
    len: u64,
    /// A `.replay` file exists.
    replaying: bool,
    /// How far the `.replay` file went into the database.
    offset: u64,
}

/// A chunk of the replay file.
pub struct Chunk {
    /// Its rows, in file order.
    pub rows: Vec<AuditRow>,
    /// Where the next chunk starts.
    pub next: u64,
    /// Nothing follows.
    pub eof: bool,
}

/// Creates `dir` and its missing parents readable by this user only
/// (0700); a directory that exists keeps its mode. Nothing to do for `""`
/// (the working directory).
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

impl Spill {
    /// The spill file at `path` (its directory is created, 0700); it may
    /// hold rows of an earlier run.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Spill> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let mut replay = path.as_os_str().to_owned();
        replay.push(".replay");
        let replay_path = PathBuf::from(replay);
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(Spill::build(path.to_owned(), replay_path, max_bytes, len))
    }

    fn build(path: PathBuf, replay_path: PathBuf, max_bytes: u64, len: u64) -> Spill {
        let replaying = replay_path.exists();
        Spill {
            path,
            replay_path,
            max_bytes,
            state: Mutex::new(State {
                file: None,
                len,
                replaying,
                offset: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent counters: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `rows`; false (and counted as dropped) when the file is full
    /// or cannot be written.
    pub fn append(&self, rows: &[AuditRow], stats: &AuditStats) -> bool {
        let n = rows.len() as u64;
        let mut buf = Vec::with_capacity(rows.len() * 400);
        for row in rows {
            // unwrap: a struct of strings and integers always serialises.
            serde_json::to_writer(&mut buf, row).unwrap();
            buf.push(b'\n');
        }
        let mut state = self.state();
        if state.len + buf.len() as u64 > self.max_bytes {
            drop(state);
            AuditStats::add(&stats.dropped, n);
            tracing::error!(
                rows = n,
                path = %self.path.display(),
                "audit spill file full (audit.spill_max_bytes): rows dropped"
            );
            return false;
        }
        let written = (|| -> std::io::Result<()> {
            if state.file.is_none() {
                // 0600: only when it is created (an existing file keeps its mode).
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.path)?;
                state.file = Some(file);
            }
            // unwrap: opened just above.
            state.file.as_mut().unwrap().write_all(&buf)
        })();
        match written {
            Ok(()) => {
                state.len += buf.len() as u64;
                AuditStats::add(&stats.spilled, n);
                true
            }
            Err(e) => {
                state.file = None;
                drop(state);
                AuditStats::add(&stats.dropped, n);
                tracing::error!(rows = n, path = %self.path.display(), "audit spill file not writable: rows dropped: {e}");
                false
            }
        }
    }

    /// The largest spill file, `audit.spill_max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether rows wait in the spill file.
    pub fn pending(&self) -> bool {
        let state = self.state();
        state.len > 0 || state.replaying
    }

    /// Bytes waiting in the append file and the replay file.
    pub fn pending_bytes(&self) -> u64 {
        let state = self.state();
        let replay = if state.replaying {
            std::fs::metadata(&self.replay_path)
                .map(|m| m.len().saturating_sub(state.offset))
                .unwrap_or(0)
        } else {
            0
        };
        state.len + replay
    }

    /// Starts a replay if none is under way and rows wait: the append file
    /// becomes the replay file. Whether a replay is under way.
    pub fn begin_replay(&self) -> std::io::Result<bool> {
        let mut state = self.state();
        if !state.replaying && state.len > 0 {
            state.file = None;
            std::fs::rename(&self.path, &self.replay_path)?;
            state.len = 0;
            state.offset = 0;
            state.replaying = true;
        }
        Ok(state.replaying)
    }

    /// Up to `max` rows of the replay file from where the last committed
    /// chunk ended.
    pub fn read_chunk(&self, max: usize) -> std::io::Result<Chunk> {
        let offset = self.state().offset;
        let mut reader = BufReader::new(File::open(&self.replay_path)?);
        reader.seek(SeekFrom::Start(offset))?;
        let mut rows = Vec::new();
        let mut next = offset;
        let mut line = Vec::new();
        while rows.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(Chunk { rows, next, eof: true });
            }
            next += n as u64;
            match serde_json::from_slice::<AuditRow>(&line) {
                Ok(row) if line.ends_with(b"\n") => rows.push(row),
                _ => tracing::error!(
                    offset = next - n as u64,
                    path = %self.replay_path.display(),
                    "audit spill file: a line that does not parse is skipped"
                ),
            }
        }
        let eof = reader.fill_buf()?.is_empty();
        Ok(Chunk { rows, next, eof })
    }

    /// The rows before `next` are in the database.
    pub fn commit(&self, next: u64) {
        self.state().offset = next;
    }

    /// The whole replay file is in the database.
    pub fn finish_replay(&self) -> std::io::Result<()> {
        let mut state = self.state();
        std::fs::remove_file(&self.replay_path)?;
        state.replaying = false;
        state.offset = 0;
        Ok(())
    }

    /// Moves an unreadable replay file aside so it does not block the others.
    pub fn set_aside(&self) {
        let mut state = self.state();
        let mut aside = self.replay_path.as_os_str().to_owned();
        aside.push(format!(".unreadable-{}", uuid::Uuid::now_v7()));
        if let Err(e) = std::fs::rename(&self.replay_path, &aside) {
            tracing::error!("audit spill file could not be set aside: {e}");
        }
        state.replaying = false;
        state.offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::audit::{AuditEvent, AuditKind, AuditReason};
    use crate::engineio::ErrorCode;

    fn mode(path: &Path) -> u32 {
        // unwrap: the test just created it.
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_file_and_the_directories_it_needs_are_private() {
        let root = std::env::temp_dir().join(format!(
            "roomcast-spill-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        let path = root.join("data/audit").join("spill.jsonl");
        let spill = Spill::open(&path, 1 << 20).unwrap();
        let event = AuditEvent::new(
            AuditKind::ParseError,
            AuditReason::engineio(ErrorCode::BadRequest),
            "test",
        );
        assert!(spill.append(&[AuditRow::from_event(event, "node")], &AuditStats::default()));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.join("data/audit")), 0o700);
        assert_eq!(mode(&root.join("data")), 0o700);
        // Replayed under another name, it stays private.
        assert!(spill.begin_replay().unwrap());
        assert_eq!(mode(&spill.replay_path), 0o600);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
