//! The audit log: forced closes and parse errors (and, if configured, every
//! disconnect and refused handshake) as rows of a SQL table.
//!
//! # Path of an event
//!
//! ```text
//! conn / http ──AuditEvent──▶ AuditHandle::record ──try_send(AuditRow)──▶ writer::AuditWriter
//!                               │ (mailbox full)                            │ batches, INSERT … ON CONFLICT
//!                               ▼                                           │ (id) DO NOTHING
//!                             spill::Spill (JSON lines) ◀── database down ──┘
//!                               └───────── replayed in order when it is back ──▶ store::Store
//! api GET /api/v1/audit ──▶ reader::AuditReader ──▶ store::Store (SELECT)
//! roomcast audit / migrate ──────────────────────▶ store::Store
//! ```
//!
//! - Connections never wait on the database: [`AuditHandle::record`] turns
//!   the event into an [`AuditRow`] (sanitised, with this node's id) and
//!   `try_send`s it into the writer's bounded mailbox. When that is full the
//!   row is appended to the spill file instead (counted as an overflow), so
//!   nothing accepted is dropped; only spill files above
//!   `audit.spill_max_bytes` together (or one that cannot be written) drop
//!   rows, and those are counted and logged.
//! - The writer ([`writer::AuditWriter`], on its own arbiter) inserts in
//!   batches. While the database is down, batches go to the spill file; when
//!   it is back, the spill file is replayed in file order before new rows.
//!   Every row has a UUID v7 `id` made when the event happened and inserts
//!   are `ON CONFLICT (id) DO NOTHING`, so a batch whose commit was not
//!   confirmed can be replayed without being written twice.
//! - Shutdown ([`crate::startup::Shutdown::run`]) sends [`writer::Flush`]
//!   after the sessions have closed: the batch and the spill file go to the
//!   database, or stay in the spill file for the next start. The database
//!   gets `audit.shutdown_flush_ms` for it, no more (a [`writer::Cutoff`]
//!   reaches a write in flight); known to be down, it is not tried at all.
//!   So the process exits within `server.drain_window_ms +
//!   audit.shutdown_flush_ms` (12 s by default) whatever the database
//!   does, and what stops it must wait longer than that before it kills it
//!   (compose's `stop_grace_period` and `scripts/cluster stop`: 15 s).
//! - The writer prunes rows older than `audit.retention_days` in the
//!   background.
//! - Each recorded event is also one structured log line (target
//!   `roomcast::audit`, [`AuditRow::log`]).
//! - [`store`] holds all the SQL (one schema per database in `migrations/`).
//!
//! # What a crash loses
//!
//! - **`kill -9`, OOM, a panic that aborts** (the process dies, the machine
//!   does not): the rows in memory, nothing else. That is the writer's
//!   mailbox (at most `audit.queue` rows, 4,096) and its batch (at most
//!   `audit.batch_size`, 256): at most 4,352 rows by default. A row stays
//!   there at most `audit.flush_interval_ms` (200 ms) waiting for its batch,
//!   plus one write: while the database answers, an insert (at most
//!   `database.timeout_ms`, 5 s, to fail) after at most
//!   [`writer::REPLAY_SLICE`] (1 s) of spill-file replay; while it is known
//!   to be down, none (the batch is appended at the next tick). So a row is
//!   lost by a `kill -9` only within about 6.2 s of its event, and
//!   typically within 200 ms plus an insert. Everything appended to the
//!   spill file survives (the kernel holds it), and a torn last line is set
//!   aside at the next start ([`spill`]).
//! - **A machine crash or power loss** also loses what was appended to the
//!   spill file and not yet forced to the disk (`audit.spill_fsync`):
//!   nothing with `always`; with `batch` (the default) the rows connections
//!   appended since the writer's last tick (at most `flush_interval_ms`);
//!   with `never` what the kernel had not written back (about 30 s).
//! - A shutdown (SIGTERM) that is not cut short by a kill loses nothing:
//!   see above.

pub mod reader;
pub mod spill;
pub mod store;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::reason::DisconnectReason;
use spill::Spill;

/// What kind of record an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// The server ended a working connection (or namespace socket).
    ForcedClose,
    /// The client sent input that does not parse or validate.
    ParseError,
    /// Any other end of a connection or namespace socket (`audit.record_disconnects`).
    Disconnect,
    /// An Engine.IO handshake or Socket.IO CONNECT was refused
    /// (`audit.record_handshake_refusals`).
    HandshakeRefused,
    /// A request, message or CONNECT was refused by a limit of `[limits]`
    /// (sampled: `limits.audit_rows_per_second`).
    LimitExceeded,
}

impl AuditKind {
    /// Every kind.
    pub const ALL: [AuditKind; 5] = [
        Self::ForcedClose,
        Self::ParseError,
        Self::Disconnect,
        Self::HandshakeRefused,
        Self::LimitExceeded,
    ];

    /// Stable name for logs and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ForcedClose => "forced_close",
            Self::ParseError => "parse_error",
            Self::Disconnect => "disconnect",
            Self::HandshakeRefused => "handshake_refused",
            Self::LimitExceeded => "limit_exceeded",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<AuditKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind of record a close for `reason` makes: forced for every
    /// close the server decided, parse error, or a plain disconnect.
    pub const fn of_close(reason: DisconnectReason) -> AuditKind {
        match reason {
            DisconnectReason::ParseError => Self::ParseError,
            r if r.is_server_initiated() => Self::ForcedClose,
            _ => Self::Disconnect,
        }
    }
}

/// The reason column: a stable string and a stable number, never reused.
///
/// Codes 1–8 are [`DisconnectReason::code`]; 100 + n is an Engine.IO
/// handshake refused with HTTP error code n; 200–206 are Socket.IO CONNECT
/// refusals (206: the Admin UI's login); 301 + n are the limits of [`crate::limits::Limit`]; 401 and 402
/// are the summaries of rows held back ([`AuditReason::ROWS_HELD_BACK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditReason {
    /// Stable string.
    pub name: &'static str,
    /// Stable number.
    pub code: u16,
}

impl From<DisconnectReason> for AuditReason {
    fn from(r: DisconnectReason) -> Self {
        Self {
            name: r.as_str(),
            code: r.code(),
        }
    }
}

impl AuditReason {
    /// A summary: rows one connection caused past
    /// `limits.audit_rows_per_connection`, with their count.
    pub const ROWS_HELD_BACK: Self = Self {
        name: "audit_rows_per_connection",
        code: 401,
    };
    /// A summary: rows clients caused past `limits.audit_rows_per_second`
    /// (or while the spill file was half full), with their count.
    pub const NODE_ROWS_HELD_BACK: Self = Self {
        name: "audit_rows_per_second",
        code: 402,
    };

    /// An Engine.IO handshake refused with `code` (the reference server's message).
    pub const fn engineio(code: crate::engineio::ErrorCode) -> Self {
        Self {
            name: code.message(),
            code: 100 + code as u16,
        }
    }

    /// A connection state recovery refused for `code` (`unknown`,
    /// `expired`, `token`, `incomplete`, `too_many`, `unavailable`; the
    /// client got a fresh socket, or CONNECT_ERROR for `token`).
    pub fn recovery(code: &str) -> Self {
        let (name, code) = match code {
            "unknown" => ("recovery_unknown", 210),
            "expired" => ("recovery_expired", 211),
            "token" => ("recovery_token", 212),
            "incomplete" => ("recovery_incomplete", 213),
            "too_many" => ("recovery_too_many", 214),
            _ => ("recovery_unavailable", 215),
        };
        Self { name, code }
    }

    /// A Socket.IO CONNECT refused with the stable `code` of its
    /// `CONNECT_ERROR` (`invalid_namespace`, or an auth code).
    pub fn socketio(code: &str) -> Self {
        let (name, code) = match code {
            "invalid_namespace" => ("invalid_namespace", 201),
            "auth_required" => ("auth_required", 202),
            "invalid_token" => ("invalid_token", 203),
            "token_expired" => ("token_expired", 204),
            "rejected" => ("rejected", 205),
            "invalid_credentials" => ("invalid_credentials", 206),
            _ => ("connect_refused", 200),
        };
        Self { name, code }
    }
}

/// One audit event, as the code that saw it describes it.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// UUID v7, made when the event happened: the row's key, so a replayed
    /// insert is recognised.
    pub id: uuid::Uuid,
    /// When it happened.
    pub at: SystemTime,
    /// What kind of record.
    pub kind: AuditKind,
    /// Reason string and code.
    pub reason: AuditReason,
    /// Engine.IO session id.
    pub sid: Option<String>,
    /// Namespace socket id(s), comma separated when a close ended several.
    pub socket_id: Option<String>,
    /// Namespace(s), comma separated like `socket_id`.
    pub namespace: Option<String>,
    /// `polling` or `websocket`.
    pub transport: Option<&'static str>,
    /// Client address (see [`crate::conn::PeerInfo::client`]).
    pub peer: Option<String>,
    /// `User-Agent` of the handshake.
    pub user_agent: Option<String>,
    /// User id from the token (`sub`).
    pub user: Option<String>,
    /// What went wrong.
    pub detail: String,
    /// The start of the offending input ([`excerpt`]).
    pub excerpt: Option<String>,
}

impl AuditEvent {
    /// An event happening now; the caller fills in what it knows.
    pub fn new(kind: AuditKind, reason: impl Into<AuditReason>, detail: impl Into<String>) -> Self {
        Self {
            id: uuid::Uuid::now_v7(),
            at: SystemTime::now(),
            kind,
            reason: reason.into(),
            sid: None,
            socket_id: None,
            namespace: None,
            transport: None,
            peer: None,
            user_agent: None,
            user: None,
            detail: detail.into(),
            excerpt: None,
        }
    }
}

/// One row of `audit_events`, as stored, spilled and served. Every string
/// that came from a client is sanitised ([`sanitize`]) or escaped
/// ([`excerpt`]) before it gets here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct AuditRow {
    /// UUID v7 (text).
    pub id: String,
    /// RFC 3339 UTC with microseconds (`2026-01-02T03:04:05.123456Z`): sorts as text.
    pub at: String,
    /// The node that recorded it.
    pub node: String,
    /// [`AuditKind::as_str`].
    pub kind: String,
    /// [`AuditReason::name`].
    pub reason: String,
    /// [`AuditReason::code`].
    pub code: i64,
    /// Engine.IO session id.
    pub sid: Option<String>,
    /// Namespace socket id(s).
    pub socket_id: Option<String>,
    /// Namespace(s).
    pub namespace: Option<String>,
    /// Transport.
    pub transport: Option<String>,
    /// Client address.
    pub peer: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// User id.
    pub user_id: Option<String>,
    /// What went wrong.
    pub detail: String,
    /// Escaped start of the offending input.
    pub excerpt: Option<String>,
}

/// Longest user agent, namespace or user id kept, in bytes.
pub const FIELD_BYTES: usize = 512;
/// Longest detail kept, in bytes.
pub const DETAIL_BYTES: usize = 1024;

impl AuditRow {
    /// The row of `event`, recorded by `node`.
    pub fn from_event(event: AuditEvent, node: &str) -> Self {
        let field = |s: Option<String>| s.map(|s| sanitize(&s, FIELD_BYTES));
        Self {
            id: event.id.to_string(),
            at: format_time(event.at),
            node: node.to_owned(),
            kind: event.kind.as_str().to_owned(),
            reason: event.reason.name.to_owned(),
            code: i64::from(event.reason.code),
            sid: field(event.sid),
            socket_id: field(event.socket_id),
            namespace: field(event.namespace),
            transport: event.transport.map(str::to_owned),
            peer: field(event.peer),
            user_agent: field(event.user_agent),
            user_id: field(event.user),
            detail: sanitize(&event.detail, DETAIL_BYTES),
            excerpt: event.excerpt.map(|e| sanitize(&e, EXCERPT_BYTES * 4 + 8)),
        }
    }
}

impl AuditRow {
    /// The row as one structured log line (target `roomcast::audit`):
    /// warn for forced closes and parse errors, info for the rest. Every
    /// value is sanitised, and text fields are printed quoted, so no value
    /// can start a line of its own.
    pub fn log(&self) {
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "roomcast::audit",
                    id = self.id.as_str(),
                    kind = self.kind.as_str(),
                    reason = self.reason.as_str(),
                    code = self.code,
                    sid = self.sid.as_deref().unwrap_or(""),
                    socket_id = self.socket_id.as_deref().unwrap_or(""),
                    namespace = self.namespace.as_deref().unwrap_or(""),
                    transport = self.transport.as_deref().unwrap_or(""),
                    peer = self.peer.as_deref().unwrap_or(""),
                    user = self.user_id.as_deref().unwrap_or(""),
                    user_agent = self.user_agent.as_deref().unwrap_or(""),
                    excerpt = self.excerpt.as_deref().unwrap_or(""),
                    "{}",
                    self.detail
                )
            };
        }
        if self.kind == AuditKind::ForcedClose.as_str() || self.kind == AuditKind::ParseError.as_str() {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

/// `at` as stored: RFC 3339 UTC with six fractional digits, so that text
/// order is time order in both databases.
pub fn format_time(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// Parses an RFC 3339 time (`2026-01-02T03:04:05Z`, fractions and
/// `+hh:mm` offsets allowed) into the stored format.
pub fn parse_time(text: &str) -> Option<String> {
    let text = text.trim();
    // humantime takes UTC only: apply an offset by hand.
    let split = text.len().checked_sub(6).filter(|i| text.is_char_boundary(*i));
    let (local, offset) = match split.map(|i| text.split_at(i)) {
        Some((local, off)) if off.starts_with(['+', '-']) && off.as_bytes()[3] == b':' => {
            let hours: u64 = off.get(1..3)?.parse().ok()?;
            let minutes: u64 = off.get(4..6)?.parse().ok()?;
            let secs = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
            (local, Some((off.starts_with('-'), secs)))
        }
        _ => (text, None),
    };
    let at = humantime::parse_rfc3339_weak(local.trim_end_matches(['Z', 'z'])).ok()?;
    let utc = match offset {
        None => at,
        // Local time minus a positive offset is UTC.
        Some((false, d)) => at.checked_sub(d)?,
        Some((true, d)) => at.checked_add(d)?,
    };
    Some(format_time(utc))
}

/// Bytes of offending input kept in an excerpt.
pub const EXCERPT_BYTES: usize = 128;

/// What replaces a token in an excerpt.
pub const REDACTED: &str = "[redacted]";

/// The first [`EXCERPT_BYTES`] of `input` with tokens redacted (JWTs, and
/// the value of a `"token"` key), then control characters, quotes,
/// backslashes and non-ASCII bytes escaped, so the excerpt is one safe line.
pub fn excerpt(input: &[u8]) -> String {
    // Redact in a window a little larger than the excerpt, so a token that
    // starts inside the excerpt is found whole.
    let window = &input[..input.len().min(EXCERPT_BYTES + 2048)];
    let redacted = redact(window);
    let cut = &redacted[..redacted.len().min(EXCERPT_BYTES)];
    let mut out: String = cut.escape_ascii().to_string();
    if input.len() > window.len() || redacted.len() > EXCERPT_BYTES {
        out.push('…');
    }
    out
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// Replaces JWT-looking runs (`eyJ` followed by base64url and dots) and the
/// string value of any `"token"` key with [`REDACTED`].
fn redact(input: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"token\"";
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        if rest.starts_with(b"eyJ") && (i == 0 || !is_token_byte(input[i - 1])) {
            let len = rest.iter().take_while(|b| is_token_byte(**b)).count();
            if len >= 10 {
                out.extend_from_slice(REDACTED.as_bytes());
                i += len;
                continue;
            }
        }
        if rest.starts_with(KEY) {
            out.extend_from_slice(KEY);
            i += KEY.len();
            // `: "` with optional whitespace, then the value up to an
            // unescaped quote (or the end of the window).
            let mut j = i;
            while j < input.len() && matches!(input[j], b' ' | b'\t' | b'\n' | b'\r' | b':') {
                j += 1;
            }
            if j < input.len() && input[j] == b'"' {
                out.extend_from_slice(&input[i..=j]);
                let mut k = j + 1;
                while k < input.len() && input[k] != b'"' {
                    k += if input[k] == b'\\' { 2 } else { 1 };
                }
                out.extend_from_slice(REDACTED.as_bytes());
                i = k.min(input.len());
            }
            continue;
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// `text` cut to at most `max` bytes (at a character boundary, marked with
/// `…`) with control characters escaped (`\n`, `\u{0}`, …), so that it can
/// neither end a log line nor be mistaken for more than one value.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for c in text.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Counters of the audit path, for tests and operators.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Events recorded (taken by the queue or the spill file).
    pub accepted: AtomicU64,
    /// Events that found the queue full and went to the spill file.
    pub overflowed: AtomicU64,
    /// Events lost: the spill file was full or could not be written.
    pub dropped: AtomicU64,
    /// Rows inserted (a replayed row already there is not counted).
    pub inserted: AtomicU64,
    /// Rows written to the spill file (overflow and database outages).
    pub spilled: AtomicU64,
    /// Rows read back from the spill file and sent to the database.
    pub replayed: AtomicU64,
    /// Rows in memory (queue and writer batch) right now.
    pub in_memory: AtomicU64,
    /// Highest `in_memory` seen.
    pub in_memory_peak: AtomicU64,
    /// Failed database operations.
    pub db_errors: AtomicU64,
    /// Rows removed by retention.
    pub pruned: AtomicU64,
    /// Torn last lines of a spill file (a crash or a full disk during an
    /// append), set aside to `.torn-*` files ([`spill`]).
    pub spill_torn_lines: AtomicU64,
    /// Lines of a spill file that do not parse, set aside to
    /// `.unparsable-*` files.
    pub spill_unparsable_lines: AtomicU64,
    /// Failed reads of the replay file; the replay is tried again later.
    pub spill_read_errors: AtomicU64,
    /// The last write to the database failed (it is retried; rows spill).
    pub database_down: std::sync::atomic::AtomicBool,
}

impl AuditStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn enter_memory(&self) {
        let now = self.in_memory.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_memory_peak.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn leave_memory(&self, n: u64) {
        self.in_memory.fetch_sub(n, Ordering::Relaxed);
    }
}

/// What is recorded besides forced closes and parse errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recording {
    /// Every other disconnect.
    pub disconnects: bool,
    /// Every refused handshake or CONNECT.
    pub handshake_refusals: bool,
}

/// Where connections send audit events. Cheap to clone.
#[derive(Clone)]
pub struct AuditHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    recipient: Recipient<AuditRow>,
    node: Arc<str>,
    spill: Arc<Spill>,
    stats: Arc<AuditStats>,
    recording: Recording,
}

impl AuditHandle {
    /// A handle on the writer behind `recipient`; rows it cannot take go to `spill`.
    pub fn new(
        recipient: Recipient<AuditRow>,
        node: Arc<str>,
        spill: Arc<Spill>,
        stats: Arc<AuditStats>,
        recording: Recording,
    ) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                recipient,
                node,
                spill,
                stats,
                recording,
            }),
        }
    }

    /// Whether events of `kind` are recorded.
    pub fn records(&self, kind: AuditKind) -> bool {
        match kind {
            AuditKind::ForcedClose | AuditKind::ParseError | AuditKind::LimitExceeded => true,
            AuditKind::Disconnect => self.inner.recording.disconnects,
            AuditKind::HandshakeRefused => self.inner.recording.handshake_refusals,
        }
    }

    /// Records an event without waiting on the database: into the writer's
    /// queue, or the spill file when the queue is full. Events of a kind
    /// that is not recorded are ignored.
    pub fn record(&self, event: AuditEvent) {
        if !self.records(event.kind) {
            return;
        }
        let inner = &self.inner;
        let row = AuditRow::from_event(event, &inner.node);
        row.log();
        inner.stats.enter_memory();
        match inner.recipient.try_send(row) {
            Ok(()) => AuditStats::add(&inner.stats.accepted, 1),
            Err(err) => {
                inner.stats.leave_memory(1);
                let row = match err {
                    SendError::Full(row) | SendError::Closed(row) => row,
                };
                AuditStats::add(&inner.stats.overflowed, 1);
                if inner.spill.append(std::slice::from_ref(&row), &inner.stats) {
                    AuditStats::add(&inner.stats.accepted, 1);
                }
            }
        }
    }

    /// Records an event a client caused while its connection stays open
    /// (sampled by [`crate::limits::Guards`]): like [`Self::record`], but
    /// held back (false) once the spill files are half full, so that such rows
    /// can never take the room the rows that matter (forced closes, parse
    /// errors that end a connection) need while the database is down.
    pub fn record_sampled(&self, event: AuditEvent) -> bool {
        let spill = &self.inner.spill;
        if spill.pending() && spill.used_bytes() >= spill.max_bytes() / 2 {
            return false;
        }
        self.record(event);
        true
    }

    /// Bytes waiting in the spill file for the database.
    pub fn spill_bytes(&self) -> u64 {
        self.inner.spill.pending_bytes()
    }

    /// Bytes every spill file takes (what `audit.spill_max_bytes` bounds:
    /// the rows waiting and the files set aside).
    pub fn spill_used_bytes(&self) -> u64 {
        self.inner.spill.used_bytes()
    }

    /// The counters of the audit path.
    pub fn stats(&self) -> &Arc<AuditStats> {
        &self.inner.stats
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_escaped_and_cut() {
        assert_eq!(excerpt(b"4hi\x1e\xff"), "4hi\\x1e\\xff");
        let long = vec![b'a'; 200];
        let e = excerpt(&long);
        assert!(e.ends_with('…'));
        assert_eq!(e.chars().count(), EXCERPT_BYTES + 1);
        assert_eq!(excerpt(b"a\nb\0c\"d'"), "a\\nb\\x00c\\\"d\\'");
    }

    #[test]
    fn excerpts_redact_tokens() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl";
        let input = format!(r#"40{{"token":"{jwt}"}}"#);
        assert_eq!(excerpt(input.as_bytes()), r#"40{\"token\":\"[redacted]\"}"#);
        let bare = format!("42[\"x\",\"{jwt}\"]");
        assert_eq!(excerpt(bare.as_bytes()), r#"42[\"x\",\"[redacted]\"]"#);
        // A token value that is not a JWT, with escaped quotes inside.
        let odd = br#"{"token" : "se\"cret", "a":1}"#;
        assert_eq!(excerpt(odd), r#"{\"token\" : \"[redacted]\", \"a\":1}"#);
        // A token cut by the end of the window is still redacted.
        let mut long = b"{\"token\":\"".to_vec();
        long.extend(vec![b'x'; 5000]);
        assert!(!excerpt(&long).contains("xxx"));
    }

    #[test]
    fn sanitize_escapes_controls_and_cuts() {
        assert_eq!(sanitize("a\nb\r\0c", 100), "a\\nb\\r\\u{0}c");
        assert_eq!(sanitize("ééé", 2), "é…");
        assert_eq!(sanitize("plain 'quotes' \"ok\"", 100), "plain 'quotes' \"ok\"");
    }

    #[test]
    fn times_sort_as_text() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(format_time(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            "2023-11-14T22:13:20.000000Z"
        );
        assert_eq!(
            parse_time("2023-11-15T00:13:20.5+02:00").unwrap(),
            "2023-11-14T22:13:20.500000Z"
        );
        assert_eq!(
            parse_time("2023-11-14T21:13:20-01:00").unwrap(),
            "2023-11-14T22:13:20.000000Z"
        );
        assert!(parse_time("yesterday").is_none());
        assert!(parse_time("2023-11-14T21:13:20-0x:00").is_none());
        assert!(parse_time("éééééé").is_none());
    }

    #[test]
    fn hostile_values_stay_on_one_log_line() {
        use std::sync::{Arc, Mutex};
        let hostile = "a\nINFO forged line\r\n\0'); DROP TABLE audit_events; --\u{2028}";
        let mut event = AuditEvent::new(AuditKind::ParseError, DisconnectReason::ParseError, hostile);
        event.user_agent = Some(hostile.into());
        event.namespace = Some(hostile.into());
        event.excerpt = Some(excerpt(hostile.as_bytes()));
        let row = AuditRow::from_event(event, "node");
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || -> Box<dyn std::io::Write> {
                struct W(Arc<Mutex<Vec<u8>>>);
                impl std::io::Write for W {
                    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                        self.0.lock().unwrap().extend_from_slice(b);
                        Ok(b.len())
                    }
                    fn flush(&mut self) -> std::io::Result<()> {
                        Ok(())
                    }
                }
                Box::new(W(sink.clone()))
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || row.log());
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("roomcast::audit") && text.contains("kind=\"parse_error\""),
            "{text}"
        );
    }

    #[test]
    fn close_reasons_map_to_kinds() {
        use DisconnectReason::*;
        assert_eq!(AuditKind::of_close(ParseError), AuditKind::ParseError);
        for r in [ForcedClose, ServerShuttingDown, ServerNamespaceDisconnect] {
            assert_eq!(AuditKind::of_close(r), AuditKind::ForcedClose);
        }
        for r in [TransportClose, TransportError, PingTimeout, ClientNamespaceDisconnect] {
            assert_eq!(AuditKind::of_close(r), AuditKind::Disconnect);
        }
    }
}
