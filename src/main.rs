//! The `roomcast` binary: config → telemetry → startup; or one of the
//! operators' commands: the audit log's (`migrate`, `audit`), the
//! configuration's (`config check`, `config show`, `config defaults`) and
//! `token` (a signed test token).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use roomcast::audit::store::{AuditQuery, Filter, Store};
use roomcast::audit::AuditRow;
use roomcast::config::{DatabaseSettings, Settings};

/// jemalloc instead of glibc's malloc: the fan-out path allocates and frees
/// small objects at a high rate (mailbox envelopes, frames), and glibc's
/// consolidation was a fifth of its profile (mimalloc was as fast but held
/// half as much memory again per idle session).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A realtime pub/sub server speaking Engine.IO v4 / Socket.IO v5.
#[derive(Parser)]
#[command(name = "roomcast", version, after_help = CONFIGURATION_HELP)]
struct Cli {
    /// A profile (TOML) layered over the built-in defaults, which
    /// `roomcast config defaults` prints.
    #[arg(long, env = "ROOMCAST_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// How the configuration is put together, after `--help`: the defaults
/// are compiled in, so this names no file an installed binary may lack.
const CONFIGURATION_HELP: &str = "\
Configuration, later layers winning:
  1. the built-in defaults: `roomcast config defaults` prints every key with
     its default and what it does (TOML, a profile to start from);
  2. the profile given with --config FILE (or ROOMCAST_CONFIG=FILE);
  3. environment variables ROOMCAST__<SECTION>__<KEY>, e.g.
     ROOMCAST__SERVER__PORT=8080 (lists comma separated).
`roomcast config check` validates the result, naming the key of each error;
`roomcast config show` prints it, secrets redacted.";

#[derive(Subcommand)]
enum Command {
    /// Run the server (what `roomcast` does without a command).
    Serve,
    /// Apply the audit database's migrations (`database.url`) and exit.
    Migrate,
    /// Print the audit log (`database.url`), oldest first, one event a line.
    Audit(AuditArgs),
    /// Check or print the configuration (built-in defaults, `--config`,
    /// environment).
    #[command(subcommand, after_help = CONFIGURATION_HELP)]
    Config(ConfigCommand),
    /// Print a signed token for the configured `auth.jwt_*`, for tests.
    Token(TokenArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check every value; list every error with its key. Exit status 0 when
    /// the configuration is valid, 1 otherwise.
    Check,
    /// Print the effective configuration (defaults, then `--config`, then
    /// `ROOMCAST__*` variables) as TOML, secrets redacted.
    Show {
        /// JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Print the built-in defaults: every key, its default and what it does.
    ///
    /// TOML with a comment for every key, a valid profile to start from.
    /// The defaults are compiled in (no file is read); `--config` and the
    /// environment do not change what this prints.
    Defaults,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Lifetime (`exp` = now + ttl): 90s, 15m, 1h, 7d…
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The `aud` claim (default: auth.jwt_audience, when set).
    #[arg(long)]
    aud: Option<String>,
    /// The `iss` claim (default: auth.jwt_issuer, when set).
    #[arg(long)]
    iss: Option<String>,
    /// A room pattern the token may subscribe to (repeatable).
    #[arg(long)]
    subscribe: Vec<String>,
    /// A room pattern the token may publish to (repeatable).
    #[arg(long)]
    publish: Vec<String>,
    /// RS256/ES256: the PEM private key (PKCS#8 for ES256) matching
    /// auth.jwt_public_key_file; the configuration holds only the public key.
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// forced_close, parse_error, disconnect, handshake_refused or limit_exceeded.
    #[arg(long)]
    kind: Option<String>,
    /// A reason string ("parse error") or its code (4).
    #[arg(long)]
    reason: Option<String>,
    /// An Engine.IO sid or a namespace socket id.
    #[arg(long)]
    sid: Option<String>,
    /// A user id (the token's `sub`).
    #[arg(long)]
    user: Option<String>,
    /// Events at or after this RFC 3339 UTC time (2026-01-02T03:04:05Z).
    #[arg(long)]
    since: Option<String>,
    /// Events before this RFC 3339 UTC time.
    #[arg(long)]
    until: Option<String>,
    /// How many of the latest events to print first.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Keep printing new events as they are stored.
    #[arg(long, short)]
    follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

#[actix_web::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line that names the problem (e.g. the configuration key).
            eprintln!("roomcast: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: ` between them, leaving out a cause whose
/// text is already in the line: many errors print their source in their own
/// message as well (`database: {0}`), and `{:#}` would repeat it.
fn chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Config(command) = command {
        return config_command(cli.config.as_deref(), command);
    }
    let settings = Settings::load(cli.config.as_deref())?;
    match command {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            let store = Store::connect_lazy(&settings.database)?;
            let applied = store.migrate().await;
            store.close().await;
            applied.with_context(|| format!("applying migrations to {}", database_named(&settings.database.url)))?;
            println!("roomcast: migrations applied to {}", redact_url(&settings.database.url));
            Ok(())
        }
        Command::Audit(args) => audit(settings, args).await,
        Command::Token(args) => token(&settings, args),
        Command::Config(_) => unreachable!("handled above"),
    }
}

/// `config check`, `config show` and `config defaults`. The first two
/// report a configuration that does not load instead of stopping at its
/// first error; the last prints the compiled-in defaults alone.
fn config_command(profile: Option<&std::path::Path>, command: ConfigCommand) -> anyhow::Result<()> {
    if let ConfigCommand::Defaults = command {
        print!("{}", roomcast::config::DEFAULT_TOML);
        return Ok(());
    }
    let checked = Settings::check_with(profile, None, roomcast::startup::owner_problems);
    match command {
        ConfigCommand::Check => match checked {
            Ok(settings) => {
                println!(
                    "roomcast: configuration valid (node {:?}, listening on {}:{})",
                    settings.server.node_name, settings.server.host, settings.server.port
                );
                Ok(())
            }
            Err(errors) => Err(anyhow::anyhow!(
                "{} configuration error{}:\n{}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
            )),
        },
        ConfigCommand::Show { json } => {
            let mut merged = Settings::merged(profile, None)?;
            if let Ok(settings) = &checked {
                // The host name an empty node name stands for.
                merged["server"]["node_name"] = settings.server.node_name.clone().into();
            }
            redact(&mut merged);
            if json {
                println!("{}", serde_json::to_string_pretty(&merged)?);
            } else {
                print!("{}", to_toml(&merged));
            }
            match checked {
                Ok(_) => Ok(()),
                Err(errors) => Err(anyhow::anyhow!(
                    "the configuration shown is not valid:\n{}",
                    errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
                )),
            }
        }
        ConfigCommand::Defaults => unreachable!("handled above"),
    }
}

/// Secrets out of `config show`: API keys, the JWT secret, passwords in URLs.
fn redact(merged: &mut serde_json::Value) {
    use serde_json::Value;
    const HIDDEN: &str = "<redacted>";
    if let Some(Value::Array(keys)) = merged.pointer_mut("/api/keys") {
        for key in keys {
            *key = HIDDEN.into();
        }
    }
    if let Some(secret) = merged.pointer_mut("/auth/jwt_secret") {
        if secret.as_str().is_some_and(|s| !s.is_empty()) {
            *secret = HIDDEN.into();
        }
    }
    for pointer in ["/redis/url", "/database/url"] {
        if let Some(url) = merged.pointer_mut(pointer) {
            if let Some(text) = url.as_str() {
                *url = redact_url(text).into();
            }
        }
    }
}

/// The merged configuration as TOML, sections and keys in the order of
/// config/default.toml.
fn to_toml(merged: &serde_json::Value) -> String {
    let order: Vec<&str> = roomcast::config::DEFAULT_TOML
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .or_else(|| l.split_once(" =").map(|(k, _)| k).filter(|_| !l.starts_with('#')))
        })
        .collect();
    let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(usize::MAX);
    let mut out = String::new();
    let Some(sections) = merged.as_object() else {
        return out;
    };
    let mut names: Vec<&String> = sections.keys().collect();
    names.sort_by_key(|k| (rank(k), k.as_str()));
    for name in names {
        out.push_str(&format!("[{name}]\n"));
        if let Some(keys) = sections[name].as_object() {
            let mut keys: Vec<(&String, &serde_json::Value)> = keys.iter().collect();
            keys.sort_by_key(|(k, _)| (rank(k), k.as_str()));
            for (key, value) in keys {
                out.push_str(&format!("{key} = {}\n", toml_value(value)));
            }
        }
        out.push('\n');
    }
    out
}

/// A value of the configuration (a scalar or a list of them) in TOML.
fn toml_value(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        // A JSON string is a valid TOML basic string (same escapes).
        Value::String(_) | Value::Number(_) | Value::Bool(_) => value.to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        Value::Null => "\"\"".into(),
        Value::Object(_) => value.to_string(),
    }
}

/// `roomcast token`: a token the configured verifier accepts, signed with
/// the HS256 secret of the configuration or the private key given.
fn token(settings: &Settings, args: TokenArgs) -> anyhow::Result<()> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let auth = &settings.auth;
    let algorithm = match auth.jwt_algorithm.as_str() {
        "" => {
            anyhow::bail!("auth.jwt_algorithm is empty: this configuration ignores tokens (set HS256, RS256 or ES256)")
        }
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => anyhow::bail!("auth.jwt_algorithm {other:?} is not one of HS256, RS256, ES256"),
    };
    let key = match (algorithm, &args.key) {
        (Algorithm::HS256, None) => EncodingKey::from_secret(auth.jwt_secret.as_bytes()),
        (Algorithm::HS256, Some(_)) => {
            anyhow::bail!("--key is for RS256/ES256: an HS256 token is signed with auth.jwt_secret")
        }
        (_, None) => anyhow::bail!(
            "{} signs with a private key, which the configuration does not hold (auth.jwt_public_key_file is the public one): give it with --key FILE",
            auth.jwt_algorithm
        ),
        (alg, Some(path)) => {
            let pem = std::fs::read(path).with_context(|| format!("reading the private key {}", path.display()))?;
            let key = if alg == Algorithm::RS256 {
                EncodingKey::from_rsa_pem(&pem)
            } else {
                EncodingKey::from_ec_pem(&pem)
            };
            key.with_context(|| format!("{} is not a PEM private key for {alg:?} (PKCS#8 for ES256)", path.display()))?
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let aud = args
        .aud
        .or_else(|| Some(auth.jwt_audience.clone()).filter(|a| !a.is_empty()));
    let iss = args
        .iss
        .or_else(|| Some(auth.jwt_issuer.clone()).filter(|i| !i.is_empty()));
    let mut claims = serde_json::json!({
        "sub": args.sub,
        "iat": now,
        "exp": now.saturating_add(args.ttl.as_secs()),
    });
    if let Some(aud) = &aud {
        claims["aud"] = aud.clone().into();
    }
    if let Some(iss) = &iss {
        claims["iss"] = iss.clone().into();
    }
    if !args.subscribe.is_empty() {
        claims["subscribe"] = args.subscribe.clone().into();
    }
    if !args.publish.is_empty() {
        claims["publish"] = args.publish.clone().into();
    }
    let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).context("signing the token")?;
    // The key must be the configured one: verify with the configuration,
    // its `aud`/`iss` set to the token's (those may differ on purpose).
    let mut check = auth.clone();
    check.jwt_audience = aud.clone().unwrap_or_default();
    check.jwt_issuer = iss.clone().unwrap_or_default();
    let verifier = roomcast::auth::Verifier::from_settings(&check)?;
    let probe = serde_json::json!({ "token": token });
    let nsp = settings.socketio.namespaces.first().map_or("/", String::as_str);
    if let Err(e) = verifier.check(nsp, &probe) {
        anyhow::bail!(
            "the token does not verify with this configuration ({}): is --key the private half of auth.jwt_public_key_file?",
            e.message
        );
    }
    if aud.as_deref().unwrap_or_default() != auth.jwt_audience || iss.as_deref().unwrap_or_default() != auth.jwt_issuer
    {
        eprintln!("roomcast: warning: --aud/--iss differ from auth.jwt_audience/jwt_issuer: this configuration refuses the token");
    }
    println!("{token}");
    Ok(())
}

/// How an error names a database: a PostgreSQL server by host:port, a
/// SQLite file by its path.
fn database_named(url: &str) -> String {
    match roomcast::config::postgres_endpoint(url) {
        Some((host, port)) => format!("PostgreSQL at {host}:{port}{}", unreachable_cause(&host, port)),
        None => redact_url(url),
    }
}

/// Why a database server cannot be reached, found by connecting to it
/// (sqlx's "pool timed out" hides the cause); empty when it can be.
fn unreachable_cause(host: &str, port: u16) -> String {
    use std::net::ToSocketAddrs as _;
    let addrs = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(e) => return format!(" (cannot resolve {host}: {e})"),
    };
    let mut cause = String::from(" (no address)");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return String::new(),
            Err(e) => cause = format!(" (connecting to {addr}: {e})"),
        }
    }
    cause
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    roomcast::telemetry::init(&settings.log, &settings.server.node_name);
    // `Application::build` raises the open-file limit and logs the session
    // cap it derives from it (`server.max_connections`).
    let (host, path) = (settings.server.host.clone(), settings.server.path.clone());
    let app = roomcast::startup::Application::build(settings).context("starting the server")?;
    tracing::info!("roomcast listening on http://{host}:{}{path}", app.port());
    app.run_until_stopped().await?;
    Ok(())
}

/// `database` for reading: a SQLite file must exist (and is opened without
/// creating it), so that `roomcast audit` run from the wrong directory says
/// so instead of creating and reading an empty `data/audit.db` there.
fn existing_database(database: &DatabaseSettings) -> anyhow::Result<DatabaseSettings> {
    let url = &database.url;
    let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) else {
        return Ok(database.clone());
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" {
        anyhow::bail!("database.url {url:?} names no SQLite file to read");
    }
    let file = std::path::Path::new(path);
    if !file.is_file() {
        let shown = std::env::current_dir().map_or_else(|_| file.to_path_buf(), |cwd| cwd.join(file));
        let relative = if file.is_relative() {
            " (database.url is relative to the working directory: run where the server runs, or give the file with ROOMCAST__DATABASE__URL=sqlite:///path/audit.db or --config)"
        } else {
            ""
        };
        anyhow::bail!("no audit database at {}{relative}", shown.display());
    }
    let mut existing = database.clone();
    if !query.contains("mode=") {
        // Open, never create.
        existing.url = format!("{url}{}mode=rw", if query.is_empty() { "?" } else { "&" });
    }
    Ok(existing)
}

/// The URL without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn audit(settings: Settings, args: AuditArgs) -> anyhow::Result<()> {
    let query = AuditQuery {
        kind: args.kind,
        reason: args.reason,
        sid: args.sid,
        user: args.user,
        since: args.since,
        until: args.until,
        limit: Some(args.limit),
        cursor: None,
    };
    let filter: Filter = query.filter().map_err(anyhow::Error::msg)?;
    let store = Store::connect_lazy(&existing_database(&settings.database)?)?;
    // Following goes on from the insertion order read *before* the first
    // page: a row stored between the two reads is then followed rather than
    // missed (and not printed twice: the first page's rows are skipped).
    // Rows replayed late by a node still show.
    let named = || format!("reading the audit log from {}", database_named(&settings.database.url));
    let mut seq = if args.follow {
        store.last_seq(&filter).await.with_context(named)?
    } else {
        0
    };
    let page = store.search(&filter).await.with_context(named)?;
    for row in page.events.iter().rev() {
        print_row(row, args.json);
    }
    if !args.follow {
        return Ok(());
    }
    let shown: std::collections::HashSet<String> = page.events.iter().map(|r| r.id.clone()).collect();
    loop {
        match store.follow(&filter, seq).await {
            Ok(rows) => {
                for (s, row) in &rows {
                    if !shown.contains(&row.id) {
                        print_row(row, args.json);
                    }
                    seq = seq.max(*s);
                }
                if rows.len() == filter.limit as usize {
                    continue; // more waiting
                }
            }
            Err(e) => eprintln!("roomcast: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One line per row. Every value came sanitised from the store; text
/// values are quoted (Rust string escapes), so none can end the line.
fn print_row(row: &AuditRow, json: bool) {
    if json {
        // unwrap: a struct of strings always serialises.
        println!("{}", serde_json::to_string(row).unwrap());
        return;
    }
    let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "-".to_owned(), |s| format!("{s:?}"));
    println!(
        "{} {} {} reason={:?} code={} sid={} socket={} nsp={} transport={} peer={} user={} ua={} detail={:?} excerpt={}",
        row.at,
        row.node,
        row.kind,
        row.reason,
        row.code,
        opt(&row.sid),
        opt(&row.socket_id),
        opt(&row.namespace),
        opt(&row.transport),
        opt(&row.peer),
        opt(&row.user_id),
        opt(&row.user_agent),
        row.detail,
        opt(&row.excerpt),
    );
}
