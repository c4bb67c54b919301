//! The `roomcast` binary: config → telemetry → startup; or one of the
//! audit log's commands (`migrate`, `audit`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use roomcast::audit::store::{AuditQuery, Filter, Store};
use roomcast::audit::AuditRow;
use roomcast::config::Settings;

/// jemalloc instead of glibc's malloc: the fan-out path allocates and frees
/// small objects at a high rate (mailbox envelopes, frames), and glibc's
/// consolidation was a fifth of its profile (mimalloc was as fast but held
/// half as much memory again per idle session).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A realtime pub/sub server speaking Engine.IO v4 / Socket.IO v5.
#[derive(Parser)]
#[command(name = "roomcast", version)]
struct Cli {
    /// A profile layered over the defaults (see config/default.toml).
    #[arg(long, env = "ROOMCAST_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (what `roomcast` does without a command).
    Serve,
    /// Apply the audit database's migrations (`database.url`) and exit.
    Migrate,
    /// Print the audit log (`database.url`), oldest first, one event a line.
    Audit(AuditArgs),
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
            eprintln!("roomcast: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            let store = Store::connect_lazy(&settings.database)?;
            store.migrate().await.context("applying migrations")?;
            store.close().await;
            println!("roomcast: migrations applied to {}", redact_url(&settings.database.url));
            Ok(())
        }
        Command::Audit(args) => audit(settings, args).await,
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    roomcast::telemetry::init(&settings.log);
    // `Application::build` raises the open-file limit and logs the session
    // cap it derives from it (`server.max_connections`).
    let (host, path) = (settings.server.host.clone(), settings.server.path.clone());
    let app = roomcast::startup::Application::build(settings).context("starting the server")?;
    tracing::info!("roomcast listening on http://{host}:{}{path}", app.port());
    app.run_until_stopped().await?;
    Ok(())
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
    let store = Store::connect_lazy(&settings.database)?;
    // Following goes on from the insertion order read *before* the first
    // page: a row stored between the two reads is then followed rather than
    // missed (and not printed twice: the first page's rows are skipped).
    // Rows replayed late by a node still show.
    let mut seq = if args.follow { store.last_seq(&filter).await? } else { 0 };
    let page = store.search(&filter).await.context("reading the audit log")?;
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
