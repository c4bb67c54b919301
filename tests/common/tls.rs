//! TLS in tests: a throwaway CA and a server certificate for 127.0.0.1 and
//! localhost (made with the `openssl` CLI), a second CA that signed
//! nothing here (the "wrong CA"), redis-server with TLS only and ACL users
//! (one server or a Redis Cluster), and the log lines of the servers the
//! test process runs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Certificates and keys in a scratch directory.
pub struct Pki {
    /// The CA that signed `server_cert`.
    pub ca: PathBuf,
    /// A CA that signed nothing a server here presents.
    pub other_ca: PathBuf,
    /// For IP 127.0.0.1 and DNS localhost, signed by `ca`; for clients
    /// too, since a Redis Cluster's nodes present it to each other on the
    /// bus (which always asks for a client certificate).
    pub server_cert: PathBuf,
    /// Its key (PEM, unencrypted).
    pub server_key: PathBuf,
}

/// Runs `openssl` with `args` in `dir`; fails with an install hint when
/// it is missing.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl could not be run ({e}): the TLS tests make their certificates with it; install it (Debian: apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA certificate and its key: `{name}.pem`, `{name}.key`.
fn make_ca(dir: &Path, name: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN=roomcast test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

impl Pki {
    /// A new CA, a server certificate it signs, and another CA.
    pub fn make() -> Pki {
        let dir = super::scratch_dir("pki");
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write server.ext");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        Pki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

/// The Redis user of the adapter: the least it needs (README, "Redis as
/// an authenticated control plane"). No keys; channels under the default
/// key `socket.io` (`&socket.io*`), and for PSUBSCRIBE, whose patterns
/// Redis compares literally, the classic pattern of the namespace "/".
/// Commands: classic PUBLISH, (P)SUBSCRIBE, (P)UNSUBSCRIBE, PUBSUB NUMSUB;
/// sharded SPUBLISH, SSUBSCRIBE, SUNSUBSCRIBE, PUBSUB SHARDNUMSUB; a Redis
/// Cluster's CLUSTER SLOTS; PING. HELLO and AUTH need no permission.
pub const ADAPTER_USER: &str = "roomcast";
/// Its password.
pub const ADAPTER_PASSWORD: &str = "adapter-password-0123";
/// A user allowed everything, for redis-cli in the test itself.
pub const ADMIN_USER: &str = "admin";
/// Its password.
pub const ADMIN_PASSWORD: &str = "admin-password-0123";

/// `--user` arguments: the adapter's user, the admin, and `default` off
/// (so nothing gets in without a password).
fn acl_args() -> Vec<String> {
    let adapter = format!(
        "{ADAPTER_USER} on >{ADAPTER_PASSWORD} resetkeys resetchannels &socket.io* &socket.io#/#* -@all \
         +ping +publish +subscribe +psubscribe +unsubscribe +punsubscribe +pubsub|numsub \
         +spublish +ssubscribe +sunsubscribe +pubsub|shardnumsub +cluster|slots"
    );
    let admin = format!("{ADMIN_USER} on >{ADMIN_PASSWORD} ~* &* +@all");
    let mut args = vec!["--user".to_owned(), "default".to_owned(), "off".to_owned()];
    for user in [adapter, admin] {
        args.push("--user".into());
        args.extend(user.split(' ').map(str::to_owned));
    }
    args
}

/// A port whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        // unwrap: binding port 0 on loopback does not fail.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// redis-server listening with TLS only (`--port 0`) on `port`, with the
/// ACL users, keeping nothing on disk; `extra` arguments follow. Fails with
/// an install hint when redis-server is missing or was built without TLS.
fn tls_redis_server(pki: &Pki, port: u16, dir: &Path, extra: &[&str]) -> Child {
    let log = dir.join(format!("redis-{port}.log"));
    let args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir.to_str().expect("a UTF-8 path"),
        "--logfile",
        log.to_str().expect("a UTF-8 path"),
        "--tls-cert-file",
        pki.server_cert.to_str().expect("a UTF-8 path"),
        "--tls-key-file",
        pki.server_key.to_str().expect("a UTF-8 path"),
        "--tls-ca-cert-file",
        pki.ca.to_str().expect("a UTF-8 path"),
        "--tls-auth-clients",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().map(|s| s.to_string()))
    .chain(acl_args())
    .collect();
    let mut child = Command::new("redis-server")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("redis-server could not be started ({e}): install it (Debian: apt-get install redis-server)")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut why = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut why);
            }
            why.push_str(&std::fs::read_to_string(&log).unwrap_or_default());
            panic!(
                "redis-server with TLS exited ({status}): {why}\nIf it does not know --tls-port it was built \
                 without TLS: install a build with it (Debian's redis-server package has it: \
                 apt-get install redis-server; from source: make BUILD_TLS=yes)"
            );
        }
        assert!(
            Instant::now() < deadline,
            "redis-server with TLS did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// One redis-server with TLS only and the ACL users, killed on drop.
pub struct TlsRedis {
    pub port: u16,
    child: Child,
}

impl TlsRedis {
    pub fn start(pki: &Pki) -> TlsRedis {
        let port = free_port();
        let dir = super::scratch_dir("tls-redis");
        TlsRedis {
            port,
            child: tls_redis_server(pki, port, &dir, &[]),
        }
    }

    /// `rediss://user:password@127.0.0.1:PORT/`
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three masters with TLS on client and bus ports
/// (`tls-cluster`), the ACL users on each; killed on drop.
pub struct TlsRedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
}

impl TlsRedisCluster {
    pub fn start(pki: &Pki) -> TlsRedisCluster {
        let dir = super::scratch_dir("tls-redis-cluster");
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut cluster = TlsRedisCluster {
            ports: ports.clone(),
            children: vec![],
        };
        for port in &ports {
            let conf = format!("nodes-{port}.conf");
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--tls-cluster",
                "yes",
            ];
            cluster.children.push(tls_redis_server(pki, *port, &dir, &args));
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(nodes.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = redis_cli(pki, ports[0], &create);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &ports {
            while !String::from_utf8_lossy(&redis_cli(pki, *port, &["cluster", "info"]).stdout)
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "the TLS Redis Cluster did not become ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// `rediss://user:password@127.0.0.1:SEED/`
    pub fn seed(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}/", self.ports[0])
    }
}

impl Drop for TlsRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// redis-cli over TLS as the admin user on `port`, killed after 30 s
/// (`--cluster create` waits for ever for nodes that cannot meet).
pub fn redis_cli(pki: &Pki, port: u16, args: &[&str]) -> std::process::Output {
    let mut child = Command::new("redis-cli")
        .args([
            "--tls",
            "--cacert",
            pki.ca.to_str().expect("a UTF-8 path"),
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &port.to_string(),
            "--user",
            ADMIN_USER,
            "--pass",
            ADMIN_PASSWORD,
            "--no-auth-warning",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("redis-cli could not be run ({e}): install it (Debian: apt-get install redis-tools)")
        });
    let deadline = Instant::now() + Duration::from_secs(30);
    // unwrap: try_wait on a child of ours does not fail.
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("redis-cli's output")
}

// ---------------------------------------------------------------- logs

/// Every log line of this test process since [`capture_logs`].
static LOGS: Mutex<String> = Mutex::new(String::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // unwrap: the lock is only held to append or copy.
        LOGS.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the process's log lines (info and up, no colours) to a buffer
/// that [`logs`] reads, and to stderr as usual. Idempotent.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// The log lines so far.
pub fn logs() -> String {
    // unwrap: as in `Capture::write`.
    LOGS.lock().unwrap().clone()
}
