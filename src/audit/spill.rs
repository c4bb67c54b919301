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
//! inserted are skipped by their id. JSON escapes every control character,
//! so a hostile string stays inside its line.
//!
//! # Durability
//!
//! - **Torn lines.** A crash (or a full disk) in the middle of an append
//!   leaves a last line without its newline. At open, the bytes after the
//!   last newline of the append file and of the replay file are moved to
//!   `<file>.torn-<uuid>` and the file is cut back, so the next row starts
//!   a line of its own; each is counted in
//!   [`AuditStats::spill_torn_lines`]. An append that fails at run time is
//!   cut back the same way; if even that fails, the next append starts with
//!   a newline, so a partial line is never glued to a row.
//! - **Read errors.** An error reading the replay file (an I/O error, a
//!   directory in its place) is transient: the replay stops, is counted in
//!   [`AuditStats::spill_read_errors`] and is tried again later from where
//!   it stopped; the file is never set aside for it. Only lines that really
//!   do not parse (or are longer than any row, [`MAX_LINE`]) are set aside,
//!   to `<file>.replay.unparsable-<uuid>`, and counted in
//!   [`AuditStats::spill_unparsable_lines`]: the rows around them go on.
//! - **One cap.** `audit.spill_max_bytes` bounds every spill file together:
//!   the append file, the replay file (all of it, until it is removed) and
//!   the files set aside (`<file>.*` besides `.replay`, kept for an operator
//!   to look at). When an append would pass it, the directory is measured
//!   again (an operator may have removed files) before rows are dropped.
//! - **fsync** (`audit.spill_fsync`): `always` forces every append to the
//!   disk, `batch` every batch the writer appends and, at its next tick,
//!   the rows connections appended, `never` leaves it to the kernel. The
//!   directory is forced too when a file is created or renamed in it
//!   (unless `never`). A crash of the process alone loses nothing that was
//!   appended, whatever the policy.
//!
//! - **One process.** `<file>.lock` is locked (flock) while the node runs:
//!   a second process on the same file (replicas sharing a volume) is
//!   refused at start rather than racing the first one's renames.
//!
//! Rows hold client addresses, user ids and what clients sent: every file
//! is created readable by roomcast's user only (0600), and so is a directory
//! roomcast creates for them (0700).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{AuditRow, AuditStats};
use crate::config::SpillFsync;

/// Longest line a row can make, with room to spare: a row's free-text
/// fields are cut to [`super::DETAIL_BYTES`] and [`super::FIELD_BYTES`]
/// (JSON may escape a byte as six); a longer line is not a row.
pub const MAX_LINE: usize = 256 * 1024;

/// The spill file of one node.
pub struct Spill {
    path: PathBuf,
    replay_path: PathBuf,
    /// The directory holding them (`.` for a bare file name).
    dir: PathBuf,
    /// The append file's name: set-aside files are `<name>.<something>`.
    name: String,
    max_bytes: u64,
    fsync: SpillFsync,
    state: Mutex<State>,
    /// `<file>.lock`, locked (flock) while this `Spill` lives: two
    /// processes appending to and renaming one file would lose rows.
    _lock: File,
}

struct State {
    /// Open for appending, once something was appended.
    file: Option<File>,
    /// Bytes in the append file.
    len: u64,
    /// A failed append left bytes after `len` that could not be cut: the
    /// next append starts with a newline.
    torn: bool,
    /// Appended since the last fsync.
    unsynced: bool,
    /// A `.replay` file exists.
    replaying: bool,
    /// Its size.
    replay_len: u64,
    /// How far the `.replay` file went into the database.
    offset: u64,
    /// Lines of the replay file before this offset were already looked at
    /// (and set aside if they do not parse): a chunk read again after a
    /// failed insert sets nothing aside twice.
    checked: u64,
    /// Bytes of the files set aside.
    aside: u64,
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

/// `path` with `suffix` appended to its name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates a new private file (0600) for set-aside bytes.
fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create_new(true).write(true).mode(0o600).open(path)
}

/// Where the last line of `file` (of `len` bytes) ends: just after its
/// last newline (0 when there is none).
fn last_line_end(file: &mut File, len: u64) -> std::io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl Spill {
    /// The spill file at `path` (its directory is created, 0700); it may
    /// hold rows of an earlier run, whose torn last line (if any) is set
    /// aside now, before anything is appended to it.
    pub fn open(path: &Path, max_bytes: u64, fsync: SpillFsync, stats: &AuditStats) -> std::io::Result<Spill> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir)?;
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the spill file needs a name"))?
            .to_string_lossy()
            .into_owned();
        let replay_path = with_suffix(path, ".replay");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(with_suffix(path, ".lock"))?;
        if let Err(e) = lock.try_lock() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "audit spill file {} is in use by another process ({e}): each node needs its own \
                     (audit.spill_file, e.g. \"data/{{host}}/audit-spill.jsonl\")",
                    path.display()
                ),
            ));
        }
        let spill = Spill {
            path: path.to_owned(),
            replay_path,
            dir,
            name,
            max_bytes,
            fsync,
            _lock: lock,
            state: Mutex::new(State {
                file: None,
                len: 0,
                torn: false,
                unsynced: false,
                replaying: false,
                replay_len: 0,
                offset: 0,
                checked: 0,
                aside: 0,
            }),
        };
        let append_torn = spill.repair(&spill.path, stats);
        let _ = spill.repair(&spill.replay_path, stats);
        let mut state = spill.state();
        state.len = std::fs::metadata(&spill.path).map(|m| m.len()).unwrap_or(0);
        // Could not be repaired: at least never glue a row to it.
        state.torn = append_torn.is_err();
        state.replaying = std::fs::symlink_metadata(&spill.replay_path).is_ok();
        state.replay_len = std::fs::metadata(&spill.replay_path).map(|m| m.len()).unwrap_or(0);
        state.aside = spill.measure_aside();
        drop(state);
        Ok(spill)
    }

    /// Moves the bytes after the last newline of `file` to a `.torn-*`
    /// file and cuts it there. Nothing to do for a missing file or one
    /// that ends with a newline.
    fn repair(&self, file: &Path, stats: &AuditStats) -> std::io::Result<()> {
        let result = (|| -> std::io::Result<()> {
            let mut f = match OpenOptions::new().read(true).write(true).open(file) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let len = f.metadata()?.len();
            let end = last_line_end(&mut f, len)?;
            if end == len {
                return Ok(());
            }
            let mut torn = Vec::with_capacity((len - end) as usize);
            f.seek(SeekFrom::Start(end))?;
            f.read_to_end(&mut torn)?;
            let aside = with_suffix(file, &format!(".torn-{}", uuid::Uuid::now_v7()));
            let mut out = create_private(&aside)?;
            out.write_all(&torn)?;
            out.sync_all()?;
            f.set_len(end)?;
            f.sync_all()?;
            self.sync_dir();
            AuditStats::add(&stats.spill_torn_lines, 1);
            tracing::warn!(
                path = %file.display(),
                bytes = torn.len(),
                aside = %aside.display(),
                "audit spill file: a torn last line (a crash or a full disk during an append) was set aside"
            );
            Ok(())
        })();
        if let Err(e) = &result {
            tracing::error!(path = %file.display(), "audit spill file: its last line could not be checked: {e}");
        }
        result
    }

    /// Bytes of the files set aside (`<name>.*` other than the replay
    /// file and the lock).
    fn measure_aside(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let prefix = format!("{}.", self.name);
        let (replay, lock) = (format!("{}.replay", self.name), format!("{}.lock", self.name));
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(&prefix) && name != replay && name != lock
            })
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent counters: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forces the directory entry of a created or renamed file to the disk.
    fn sync_dir(&self) {
        if self.fsync == SpillFsync::Never {
            return;
        }
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %self.dir.display(), "audit spill directory not synced: {e}");
        }
    }

    /// Appends `rows`; false (and counted as dropped) when the spill files
    /// are full or the file cannot be written.
    pub fn append(&self, rows: &[AuditRow], stats: &AuditStats) -> bool {
        let n = rows.len() as u64;
        let mut buf = Vec::with_capacity(rows.len() * 400 + 1);
        for row in rows {
            // unwrap: a struct of strings and integers always serialises.
            serde_json::to_writer(&mut buf, row).unwrap();
            buf.push(b'\n');
        }
        let mut state = self.state();
        let used = |s: &State| s.len + s.replay_len + s.aside;
        if used(&state) + buf.len() as u64 + 1 > self.max_bytes {
            // Measure again: files set aside may have been removed.
            state.aside = self.measure_aside();
            if state.replaying {
                state.replay_len = std::fs::metadata(&self.replay_path).map_or(0, |m| m.len());
            }
        }
        if used(&state) + buf.len() as u64 + 1 > self.max_bytes {
            drop(state);
            AuditStats::add(&stats.dropped, n);
            tracing::error!(
                rows = n,
                path = %self.path.display(),
                "audit spill files full (audit.spill_max_bytes): rows dropped"
            );
            return false;
        }
        let written = (|| -> std::io::Result<()> {
            if state.file.is_none() {
                let created = !self.path.exists();
                // 0600: only when it is created (an existing file keeps its mode).
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.path)?;
                state.file = Some(file);
                if created {
                    self.sync_dir();
                }
            }
            let s = &mut *state;
            // unwrap: opened just above.
            let file = s.file.as_mut().unwrap();
            if s.torn {
                file.write_all(b"\n")?;
                s.torn = false;
                s.len += 1;
            }
            file.write_all(&buf)
        })();
        match written {
            Ok(()) => {
                state.len += buf.len() as u64;
                state.unsynced = true;
                drop(state);
                AuditStats::add(&stats.spilled, n);
                if self.fsync == SpillFsync::Always {
                    self.sync();
                }
                true
            }
            Err(e) => {
                // Cut back what this append wrote, so that the next row
                // starts a line of its own.
                let cut = state.file.as_ref().map(|f| f.set_len(state.len));
                if !matches!(cut, Some(Ok(()))) {
                    state.torn = true;
                    state.len = std::fs::metadata(&self.path).map_or(state.len, |m| m.len());
                    state.file = None;
                }
                drop(state);
                AuditStats::add(&stats.dropped, n);
                tracing::error!(rows = n, path = %self.path.display(), "audit spill file not writable: rows dropped: {e}");
                false
            }
        }
    }

    /// Forces what was appended since the last call to the disk (unless
    /// `audit.spill_fsync = "never"`). The lock is not held meanwhile:
    /// connections appending when the queue is full do not wait for it.
    pub fn sync(&self) {
        if self.fsync == SpillFsync::Never {
            return;
        }
        let file = {
            let mut state = self.state();
            if !state.unsynced {
                return;
            }
            state.unsynced = false;
            state.file.as_ref().map(File::try_clone)
        };
        let Some(file) = file else { return };
        if let Err(e) = file.and_then(|f| f.sync_data()) {
            self.state().unsynced = true;
            tracing::warn!(path = %self.path.display(), "audit spill file not synced: {e}");
        }
    }

    /// `audit.spill_max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether rows wait in the spill file.
    pub fn pending(&self) -> bool {
        let state = self.state();
        state.len > 0 || state.replaying
    }

    /// Bytes waiting for the database in the append file and the replay file.
    pub fn pending_bytes(&self) -> u64 {
        let state = self.state();
        state.len + state.replay_len.saturating_sub(state.offset)
    }

    /// Bytes every spill file takes together (what `audit.spill_max_bytes`
    /// bounds): the append file, the replay file, the files set aside.
    pub fn used_bytes(&self) -> u64 {
        let state = self.state();
        state.len + state.replay_len + state.aside
    }

    /// Bytes of the files set aside (torn and unparsable lines).
    pub fn aside_bytes(&self) -> u64 {
        self.state().aside
    }

    /// Starts a replay if none is under way and rows wait: the append file
    /// becomes the replay file. Whether a replay is under way.
    pub fn begin_replay(&self) -> std::io::Result<bool> {
        let mut state = self.state();
        if !state.replaying && state.len > 0 {
            if state.unsynced && self.fsync != SpillFsync::Never {
                if let Some(f) = &state.file {
                    f.sync_data()?;
                }
                state.unsynced = false;
            }
            state.file = None;
            std::fs::rename(&self.path, &self.replay_path)?;
            self.sync_dir();
            state.replay_len = state.len;
            state.len = 0;
            state.torn = false;
            state.offset = 0;
            state.checked = 0;
            state.replaying = true;
        }
        Ok(state.replaying)
    }

    /// Up to `max` rows of the replay file from where the last committed
    /// chunk ended. An error is a read error (to be tried again later);
    /// lines that do not parse are set aside and counted, not errors.
    pub fn read_chunk(&self, max: usize, stats: &AuditStats) -> std::io::Result<Chunk> {
        let (offset, checked) = {
            let state = self.state();
            (state.offset, state.checked)
        };
        let file = File::open(&self.replay_path)?;
        let len = file.metadata()?.len();
        self.state().replay_len = len;
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(offset))?;
        let mut rows = Vec::new();
        let mut next = offset;
        let mut line = Vec::new();
        let mut bad: Vec<u8> = Vec::new();
        let mut eof = false;
        while rows.len() < max {
            line.clear();
            let n = (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
            if n == 0 {
                eof = true;
                break;
            }
            let at = next;
            next += n as u64;
            let complete = line.ends_with(b"\n");
            match serde_json::from_slice::<AuditRow>(&line) {
                Ok(row) if complete => rows.push(row),
                _ if at < checked => {} // set aside by an earlier read
                _ => {
                    if !complete && n < MAX_LINE {
                        // The file's last bytes without a newline: a torn
                        // line that open did not see (should not happen).
                        AuditStats::add(&stats.spill_torn_lines, 1);
                    } else {
                        AuditStats::add(&stats.spill_unparsable_lines, 1);
                    }
                    tracing::error!(
                        offset = at,
                        path = %self.replay_path.display(),
                        "audit spill file: a line that does not parse is set aside"
                    );
                    bad.extend_from_slice(&line);
                    if !complete {
                        bad.push(b'\n');
                    }
                }
            }
        }
        if !eof {
            eof = reader.fill_buf()?.is_empty();
        }
        if !bad.is_empty() {
            self.set_aside_lines(&bad)?;
        }
        let mut state = self.state();
        state.checked = state.checked.max(next);
        Ok(Chunk { rows, next, eof })
    }

    /// Writes lines that do not parse to a file of their own next to the
    /// replay file (counted against the cap).
    fn set_aside_lines(&self, lines: &[u8]) -> std::io::Result<()> {
        let aside = with_suffix(&self.replay_path, &format!(".unparsable-{}", uuid::Uuid::now_v7()));
        let mut out = create_private(&aside)?;
        out.write_all(lines)?;
        if self.fsync != SpillFsync::Never {
            out.sync_all()?;
        }
        self.sync_dir();
        self.state().aside += lines.len() as u64;
        tracing::warn!(aside = %aside.display(), bytes = lines.len(), "audit spill file: lines set aside");
        Ok(())
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
        state.replay_len = 0;
        state.offset = 0;
        state.checked = 0;
        Ok(())
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
        let spill = Spill::open(&path, 1 << 20, SpillFsync::Batch, &AuditStats::default()).unwrap();
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
