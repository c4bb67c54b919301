//! The audit database in tests: a fresh PostgreSQL database per test on the
//! machine's server (127.0.0.1:5432, trust auth, user `postgres`), a
//! private PostgreSQL instance that a test can stop and start, and reading
//! rows back by polling the database.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use roomcast::audit::store::{AuditQuery, Store};
use roomcast::audit::AuditRow;
use roomcast::config::DatabaseSettings;
use sqlx::Connection as _;

/// The machine's PostgreSQL, for creating test databases.
pub const SHARED_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long a row may take to reach the database.
pub const ROW_DEADLINE: Duration = Duration::from_secs(15);

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of one test, dropped (PostgreSQL) by [`TestDb::drop_db`].
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
}

impl TestDb {
    /// A new, empty database: a SQLite file in a scratch directory, or a
    /// new database on the machine's PostgreSQL.
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", super::scratch_dir("auditdb").join("audit.db").display()),
                pg_name: None,
            },
            Backend::Postgres => {
                let name = format!(
                    "roomcast_audit_{}_{}",
                    std::process::id(),
                    uuid::Uuid::now_v7().simple()
                );
                let mut conn = shared_pg().await;
                drop_stale_databases(&mut conn).await;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("CREATE DATABASE on the machine's PostgreSQL");
                TestDb {
                    url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A database that something else owns (a private PostgreSQL).
    pub fn at(url: String) -> TestDb {
        TestDb { url, pg_name: None }
    }

    /// Drops a PostgreSQL test database (its pool connections included).
    pub async fn drop_db(self) {
        if let Some(name) = self.pg_name {
            let mut conn = shared_pg().await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}

/// Drops the test databases of test processes that are gone (a failed
/// test does not drop its own).
async fn drop_stale_databases(conn: &mut sqlx::PgConnection) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'roomcast\\_audit\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *conn)
                .await;
        }
    }
}

async fn shared_pg() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(SHARED_PG).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {SHARED_PG} ({e}): these tests need a PostgreSQL server on \
             127.0.0.1:5432 with trust authentication for user postgres and a database `test` \
             (Debian: apt-get install postgresql, then pg_ctlcluster <version> main start)"
        )
    })
}

/// A store on `url`, for reading rows back.
pub fn store(url: &str) -> Store {
    Store::connect_lazy(&DatabaseSettings {
        url: url.to_owned(),
        max_connections: 2,
        timeout_ms: 5000,
    })
    .expect("a store on the test database")
}

/// The rows matching `query` (newest first), or none while the table does
/// not exist yet.
pub async fn rows(store: &Store, query: AuditQuery) -> Vec<AuditRow> {
    let filter = AuditQuery {
        limit: Some(query.limit.unwrap_or(1000)),
        ..query
    }
    .filter()
    .expect("a valid query");
    store.search(&filter).await.map(|p| p.events).unwrap_or_default()
}

/// Polls until at least `n` rows match `query`; returns them.
pub async fn wait_rows(store: &Store, query: AuditQuery, n: usize) -> Vec<AuditRow> {
    let deadline = Instant::now() + ROW_DEADLINE;
    loop {
        let found = rows(store, query.clone()).await;
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} audit rows for {query:?} after {ROW_DEADLINE:?}: {found:#?}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A query for one Engine.IO session (or namespace socket).
pub fn by_sid(sid: &str) -> AuditQuery {
    AuditQuery {
        sid: Some(sid.to_owned()),
        ..Default::default()
    }
}

/// Rows in the table, and distinct ids among them.
pub async fn count(url: &str) -> (i64, i64) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .expect("connect to the test database");
    let row: (i64, i64) = sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM audit_events")
        .fetch_one(&mut conn)
        .await
        .expect("count rows");
    row
}

// ------------------------------------------------------ private PostgreSQL

/// A PostgreSQL server of its own (initdb in a scratch directory, trust
/// auth, a free port), stopped and removed on drop. Run as the `postgres`
/// user when the tests run as root (PostgreSQL refuses to run as root).
/// With [`PrivatePostgres::start_with_ssl`] it serves TLS only.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    running: bool,
    /// `-c` options of `postgres` beyond the port and addresses (TLS).
    extra: String,
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL program (as `postgres` when root); fails with an
/// install hint when it is missing.
fn pg(program: &str, args: &[&str]) -> Output {
    let mut cmd = if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().unwrap_or_else(|e| {
        panic!("{program} could not be run ({e}): install the PostgreSQL server (Debian: apt-get install postgresql) and put its bin directory on PATH")
    });
    assert!(
        out.status.success() || program == "pg_ctl",
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PrivatePostgres {
    /// initdb and start.
    pub fn start() -> PrivatePostgres {
        Self::start_with(None)
    }

    /// initdb and start with `ssl=on`, serving `cert` and `key` (PEM
    /// files, copied into its directory as PostgreSQL wants the key: owned
    /// by the server's user, mode 0600); TCP clients must use TLS
    /// (`hostssl` only in pg_hba.conf), so a row that arrives came over TLS.
    pub fn start_with_ssl(cert: &std::path::Path, key: &std::path::Path) -> PrivatePostgres {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(ssl: Option<(&std::path::Path, &std::path::Path)>) -> PrivatePostgres {
        for program in ["initdb", "pg_ctl", "postgres"] {
            assert!(
                super::suite::find_on_path(program).is_some(),
                "{program} is not on PATH: install the PostgreSQL server (Debian: apt-get install postgresql) and put its bin directory (/usr/lib/postgresql/<version>/bin) on PATH"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("roomcast-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if as_root() {
            let ok = Command::new("chown")
                .args(["postgres:", dir.to_str().unwrap()])
                .status();
            assert!(ok.is_ok_and(|s| s.success()), "chown postgres {}", dir.display());
        }
        let data = dir.join("data");
        pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut extra = String::new();
        if let Some((cert, key)) = ssl {
            use std::os::unix::fs::PermissionsExt as _;
            let (crt, pem_key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::copy(cert, &crt).expect("copy the server certificate");
            std::fs::copy(key, &pem_key).expect("copy the server key");
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&pem_key, private).expect("chmod 0600 the server key");
            if as_root() {
                for file in [&crt, &pem_key] {
                    let ok = Command::new("chown")
                        .args(["postgres:", file.to_str().expect("a UTF-8 path")])
                        .status();
                    assert!(ok.is_ok_and(|s| s.success()), "chown postgres {}", file.display());
                }
            }
            let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n";
            std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
            extra = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                crt.display(),
                pem_key.display()
            );
        }
        let mut me = PrivatePostgres {
            port,
            dir,
            running: false,
            extra,
        };
        me.resume();
        me
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let data = self.dir.join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        pg("pg_ctl", &all)
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn resume(&mut self) {
        let log = self.dir.join("log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off{}",
            self.port,
            self.dir.display(),
            self.extra
        );
        let out = self.ctl(&["-l", log.to_str().unwrap(), "-o", &options, "-w", "-t", "30", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// Stops the server (fast: open connections are cut).
    pub fn stop(&mut self) {
        let out = self.ctl(&["-m", "fast", "-w", "-t", "30", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// `postgres://…/postgres` on it.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.ctl(&["-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
