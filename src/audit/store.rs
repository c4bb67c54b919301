//! All the audit log's SQL, for SQLite and PostgreSQL through sqlx's `Any`
//! driver (the URL picks the database).
//!
//! The schema (`migrations/sqlite`, `migrations/postgres`) is the same on
//! both: text and integer columns only, so one set of statements serves
//! both. `seq` is the insertion order (for `roomcast audit --follow`); `id`
//! (UUID v7, unique) is the event's key and, being time ordered, the order
//! of queries and their cursor; `at` is RFC 3339 text that sorts as time.
//! Parameters are `$n`, which both drivers understand. Values are always
//! bound, never spliced into the statement.
//!
//! PostgreSQL over TLS (rustls) is asked for in the URL, as with libpq:
//! `sslmode=require` (encrypted, the certificate not checked),
//! `verify-ca` (signed by a trusted CA), `verify-full` (and naming the
//! host), with `sslrootcert=/path/ca.pem` for a private CA (trusted besides
//! the public web roots built in). The default, `prefer`, uses TLS when the
//! server offers it. A failure to connect names the server and the sslmode
//! ([`StoreError::Connect`]).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use super::{parse_time, AuditKind, AuditRow};
use crate::config::DatabaseSettings;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The table.
pub const TABLE: &str = "audit_events";

/// Columns of a row, in [`AuditRow`] order.
const COLUMNS: &str =
    "id, at, node, kind, reason, code, sid, socket_id, namespace, transport, peer, user_agent, user_id, detail, excerpt";
const COLUMN_COUNT: usize = 15;
/// Rows per INSERT statement (SQLite allows 32766 parameters).
const ROWS_PER_STATEMENT: usize = 500;

/// Most rows one query returns.
pub const MAX_LIMIT: u32 = 1000;
/// Rows a query returns when it does not say.
pub const DEFAULT_LIMIT: u32 = 100;

/// A database error, or a database that did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sqlx said so.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No answer within `database.timeout_ms`.
    #[error("database: no answer within {0:?}")]
    Timeout(Duration),
    /// A URL for a database this build does not know.
    #[error("database.url: {0}")]
    Url(String),
    /// The PostgreSQL server could not be reached or the TLS handshake
    /// failed: which server, with which sslmode, and why.
    #[error("database at {target}: {source}{}", connect_hint(.source))]
    Connect {
        /// `host:port (sslmode=…)`.
        target: String,
        /// What sqlx said (for TLS, rustls's reason).
        source: sqlx::Error,
    },
}

/// What to check when a connection failure is a matter of settings.
fn connect_hint(e: &sqlx::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("does not support TLS") {
        " (the server has ssl off: turn it on, or lower sslmode in database.url)"
    } else if text.contains("certificate") || text.contains("UnknownIssuer") {
        " (the server's certificate is not trusted: sslrootcert in database.url must name the CA \
         that signed it; verify-full also needs it to name the host of the URL)"
    } else {
        ""
    }
}

/// `host:port (sslmode=…)` of a PostgreSQL URL, for errors.
fn postgres_target(url: &str) -> Option<String> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let options = PgConnectOptions::from_str(url).ok()?;
    let mode = match options.get_ssl_mode() {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    };
    Some(format!(
        "{}:{} (sslmode={mode})",
        options.get_host(),
        options.get_port()
    ))
}

/// Which database a URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:` (a file).
    Sqlite,
    /// `postgres://` / `postgresql://`.
    Postgres,
}

impl Backend {
    /// The backend of `url`.
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Url(
                "expected sqlite:<path> or postgres://user@host:port/database".into(),
            ))
        }
    }
}

/// The file of a SQLite URL (`sqlite://data/audit.db`, `sqlite:data/audit.db`).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Creates the SQLite file at `path` readable by this user only (0600),
/// and its missing directories (0700), before SQLite would create it with
/// its default 0644: the rows hold client addresses, user ids and what
/// clients sent. SQLite gives its `-wal`, `-shm` and `-journal` files the
/// database file's mode. A file that exists keeps its mode (an empty one
/// is a new database to SQLite).
fn create_private_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let cannot =
        |what: &std::path::Path, e: std::io::Error| StoreError::Url(format!("cannot create {}: {e}", what.display()));
    if let Some(dir) = path.parent() {
        super::spill::create_private_dir(dir).map_err(|e| cannot(dir, e))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(cannot(path, e)),
    }
}

/// A connection pool on the audit database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    timeout: Duration,
    /// PostgreSQL's `host:port (sslmode=…)`, named by connection errors.
    target: Option<String>,
}

/// A text or integer parameter.
enum Bind {
    Text(String),
    Int(i64),
}

/// A statement with numbered parameters.
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        let n = self.binds.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.as_str()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

fn text(value: &str) -> Bind {
    Bind::Text(value.to_owned())
}

impl Store {
    /// A pool on `settings.url` that connects on first use. A SQLite file
    /// (and its directory) is created if missing, private to this user. Must be called inside a
    /// tokio runtime, where the pool's connections then live.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(&settings.url)?;
        let mut url = settings.url.clone();
        if backend == Backend::Sqlite {
            // Unless the URL asks for an existing file (`mode=ro`, `mode=rw`).
            let creates = !url.contains("mode=") || url.contains("mode=rwc");
            if let Some(path) = sqlite_path(&url).filter(|_| creates) {
                create_private_file(&path)?;
            }
            if !url.contains("mode=") {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str("mode=rwc");
            }
        }
        let options = AnyConnectOptions::from_str(&url)?;
        let target = (backend == Backend::Postgres).then(|| postgres_target(&url)).flatten();
        let timeout = Duration::from_millis(settings.timeout_ms);
        let sqlite = backend == Backend::Sqlite;
        let pool = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // With WAL, NORMAL is safe against corruption and
                        // syncs at checkpoints instead of every commit.
                        sqlx::Executor::execute(conn, "PRAGMA synchronous=NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Store {
            pool,
            backend,
            timeout,
            target,
        })
    }

    /// Which database.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn timed<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(|e| self.located(e))
    }

    /// A failure to reach PostgreSQL (I/O, TLS; also inside a migration)
    /// as [`StoreError::Connect`], naming the server.
    fn located(&self, e: StoreError) -> StoreError {
        use sqlx::migrate::MigrateError;
        let Some(target) = &self.target else { return e };
        // A pool that timed out waiting for a connection could not open one
        // (sqlx keeps the cause to itself): the server is named all the same.
        let connecting =
            |s: &sqlx::Error| matches!(s, sqlx::Error::Tls(_) | sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut);
        match e {
            StoreError::Sqlx(source) | StoreError::Migrate(MigrateError::Execute(source)) if connecting(&source) => {
                StoreError::Connect {
                    target: target.clone(),
                    source,
                }
            }
            other => other,
        }
    }

    /// Applies the migrations of this database that are not applied yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.timed(async {
            match self.backend {
                Backend::Sqlite => {
                    // WAL: readers (the API, `roomcast audit --follow`) do
                    // not block the writer. Persistent in the file.
                    sqlx::query("PRAGMA journal_mode=WAL").execute(&self.pool).await?;
                    SQLITE.run(&self.pool).await?
                }
                Backend::Postgres => POSTGRES.run(&self.pool).await?,
            }
            Ok(())
        })
        .await
    }

    /// Inserts `rows`; rows whose id is already stored are skipped. The
    /// number of rows inserted.
    pub async fn insert(&self, rows: &[AuditRow]) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::default();
            sql.push(&format!("INSERT INTO {TABLE} ({COLUMNS}) VALUES "));
            for (i, r) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                let values = [
                    Some(text(&r.id)),
                    Some(text(&r.at)),
                    Some(text(&r.node)),
                    Some(text(&r.kind)),
                    Some(text(&r.reason)),
                    Some(Bind::Int(r.code)),
                    r.sid.as_deref().map(text),
                    r.socket_id.as_deref().map(text),
                    r.namespace.as_deref().map(text),
                    r.transport.as_deref().map(text),
                    r.peer.as_deref().map(text),
                    r.user_agent.as_deref().map(text),
                    r.user_id.as_deref().map(text),
                    Some(text(&r.detail)),
                    r.excerpt.as_deref().map(text),
                ];
                debug_assert_eq!(values.len(), COLUMN_COUNT);
                for (j, v) in values.into_iter().enumerate() {
                    if j > 0 {
                        sql.push(", ");
                    }
                    match v {
                        Some(b) => sql.bind(b),
                        None => sql.push("NULL"),
                    };
                }
                sql.push(")");
            }
            sql.push(" ON CONFLICT (id) DO NOTHING");
            let done = self.timed(async { Ok(sql.query().execute(&self.pool).await?) }).await?;
            inserted += done.rows_affected();
        }
        Ok(inserted)
    }

    /// One page of events matching `filter`, newest first.
    pub async fn search(&self, filter: &Filter) -> Result<AuditPage, StoreError> {
        let mut sql = select(filter);
        if let Some(before) = &filter.before {
            sql.push(" AND id < ").bind(text(before));
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(Bind::Int(i64::from(filter.limit) + 1));
        let rows = self
            .timed(async { Ok(sql.query().fetch_all(&self.pool).await?) })
            .await?;
        let mut events = rows.iter().map(row).collect::<Result<Vec<_>, _>>()?;
        let more = events.len() > filter.limit as usize;
        events.truncate(filter.limit as usize);
        let next_cursor = more.then(|| events.last().map(|(_, e)| encode_cursor(&e.id))).flatten();
        Ok(AuditPage {
            events: events.into_iter().map(|(_, e)| e).collect(),
            next_cursor,
        })
    }

    /// Events matching `filter` inserted after `seq`, in insertion order,
    /// with their `seq`.
    pub async fn follow(&self, filter: &Filter, seq: i64) -> Result<Vec<(i64, AuditRow)>, StoreError> {
        let mut sql = select(filter);
        sql.push(" AND seq > ").bind(Bind::Int(seq));
        sql.push(" ORDER BY seq ASC LIMIT ")
            .bind(Bind::Int(i64::from(filter.limit)));
        let rows = self
            .timed(async { Ok(sql.query().fetch_all(&self.pool).await?) })
            .await?;
        rows.iter().map(row).collect()
    }

    /// The highest `seq` of the events matching `filter` (0 if none).
    pub async fn last_seq(&self, filter: &Filter) -> Result<i64, StoreError> {
        let mut sql = Sql::default();
        sql.push(&format!("SELECT MAX(seq) FROM {TABLE} WHERE 1 = 1"));
        where_clause(&mut sql, filter);
        let row = self
            .timed(async { Ok(sql.query().fetch_one(&self.pool).await?) })
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// Deletes the rows older than `at` (stored format); how many.
    pub async fn prune(&self, before: &str) -> Result<u64, StoreError> {
        let mut sql = Sql::default();
        sql.push(&format!("DELETE FROM {TABLE} WHERE at < ")).bind(text(before));
        let done = self.timed(async { Ok(sql.query().execute(&self.pool).await?) }).await?;
        Ok(done.rows_affected())
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn select(filter: &Filter) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!("SELECT seq, {COLUMNS} FROM {TABLE} WHERE 1 = 1"));
    where_clause(&mut sql, filter);
    sql
}

fn where_clause(sql: &mut Sql, f: &Filter) {
    if let Some(kind) = f.kind {
        sql.push(" AND kind = ").bind(text(kind.as_str()));
    }
    match &f.reason {
        Some(ReasonFilter::Code(code)) => {
            sql.push(" AND code = ").bind(Bind::Int(*code));
        }
        Some(ReasonFilter::Name(name)) => {
            sql.push(" AND reason = ").bind(text(name));
        }
        None => {}
    }
    if let Some(sid) = &f.sid {
        sql.push(" AND (sid = ").bind(text(sid));
        sql.push(" OR socket_id = ").bind(text(sid)).push(")");
    }
    if let Some(user) = &f.user {
        sql.push(" AND user_id = ").bind(text(user));
    }
    if let Some(since) = &f.since {
        sql.push(" AND at >= ").bind(text(since));
    }
    if let Some(until) = &f.until {
        sql.push(" AND at < ").bind(text(until));
    }
}

fn row(r: &AnyRow) -> Result<(i64, AuditRow), StoreError> {
    Ok((
        r.try_get("seq")?,
        AuditRow {
            id: r.try_get("id")?,
            at: r.try_get("at")?,
            node: r.try_get("node")?,
            kind: r.try_get("kind")?,
            reason: r.try_get("reason")?,
            code: r.try_get("code")?,
            sid: r.try_get("sid")?,
            socket_id: r.try_get("socket_id")?,
            namespace: r.try_get("namespace")?,
            transport: r.try_get("transport")?,
            peer: r.try_get("peer")?,
            user_agent: r.try_get("user_agent")?,
            user_id: r.try_get("user_id")?,
            detail: r.try_get("detail")?,
            excerpt: r.try_get("excerpt")?,
        },
    ))
}

/// One page of a query.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    /// Newest first.
    pub events: Vec<AuditRow>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let id = String::from_utf8(bytes).ok()?;
    uuid::Uuid::parse_str(&id).ok()?;
    Some(id)
}

/// A query as the API and the command line take it: every value text.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditQuery {
    /// `forced_close`, `parse_error`, `disconnect`, `handshake_refused`, `limit_exceeded`.
    pub kind: Option<String>,
    /// A reason string, or its numeric code.
    pub reason: Option<String>,
    /// An Engine.IO sid or a namespace socket id.
    pub sid: Option<String>,
    /// A user id.
    pub user: Option<String>,
    /// RFC 3339 UTC; events at or after it.
    pub since: Option<String>,
    /// RFC 3339 UTC; events before it.
    pub until: Option<String>,
    /// Rows per page, 1 to [`MAX_LIMIT`].
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The reason filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReasonFilter {
    /// By stable code.
    Code(i64),
    /// By string.
    Name(String),
}

/// A checked query.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Kind.
    pub kind: Option<AuditKind>,
    /// Reason.
    pub reason: Option<ReasonFilter>,
    /// Engine.IO sid or socket id.
    pub sid: Option<String>,
    /// User id.
    pub user: Option<String>,
    /// Lower bound of `at` (stored format).
    pub since: Option<String>,
    /// Upper bound of `at` (stored format), excluded.
    pub until: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Ids below this one (the cursor).
    pub before: Option<String>,
}

impl AuditQuery {
    /// Checks the values; the error names the parameter.
    pub fn filter(&self) -> Result<Filter, String> {
        let kind = match self.kind.as_deref() {
            None => None,
            Some(k) => Some(AuditKind::parse(k).ok_or(
                "kind: expected one of forced_close, parse_error, disconnect, handshake_refused, limit_exceeded",
            )?),
        };
        // Stored values never hold control characters (they are escaped),
        // and PostgreSQL refuses NUL in text: such a filter is an error.
        for (name, value) in [("reason", &self.reason), ("sid", &self.sid), ("user", &self.user)] {
            if value.as_deref().is_some_and(|v| v.chars().any(char::is_control)) {
                return Err(format!("{name}: control characters are not allowed"));
            }
        }
        let reason = self.reason.as_deref().map(|r| match r.parse::<i64>() {
            Ok(code) => ReasonFilter::Code(code),
            Err(_) => ReasonFilter::Name(r.to_owned()),
        });
        let time = |name: &str, v: &Option<String>| match v.as_deref() {
            None => Ok(None),
            Some(t) => parse_time(t)
                .map(Some)
                .ok_or_else(|| format!("{name}: expected an RFC 3339 UTC time such as 2026-01-02T03:04:05Z")),
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(format!("limit: 1 to {MAX_LIMIT}"));
        }
        let before = match self.cursor.as_deref() {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or("cursor: not a cursor of this API")?),
        };
        Ok(Filter {
            kind,
            reason,
            sid: self.sid.clone(),
            user: self.user.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            limit,
            before,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://data/audit.db"), Some("data/audit.db".into()));
        assert_eq!(sqlite_path("sqlite:/tmp/a.db?mode=rwc"), Some("/tmp/a.db".into()));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }

    #[test]
    fn queries_are_checked() {
        let q = AuditQuery {
            kind: Some("parse_error".into()),
            reason: Some("4".into()),
            since: Some("2026-01-02T03:04:05Z".into()),
            ..Default::default()
        };
        let f = q.filter().unwrap();
        assert_eq!(f.kind, Some(AuditKind::ParseError));
        assert_eq!(f.reason, Some(ReasonFilter::Code(4)));
        assert_eq!(f.since.as_deref(), Some("2026-01-02T03:04:05.000000Z"));
        assert_eq!(f.limit, DEFAULT_LIMIT);
        for bad in [
            AuditQuery {
                kind: Some("nope".into()),
                ..Default::default()
            },
            AuditQuery {
                limit: Some(0),
                ..Default::default()
            },
            AuditQuery {
                cursor: Some("'; DROP TABLE audit_events; --".into()),
                ..Default::default()
            },
            AuditQuery {
                until: Some("tomorrow".into()),
                ..Default::default()
            },
            AuditQuery {
                sid: Some("a\0b".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.filter().is_err(), "{bad:?}");
        }
        let id = uuid::Uuid::now_v7().to_string();
        assert_eq!(decode_cursor(&encode_cursor(&id)), Some(id));
    }
}
