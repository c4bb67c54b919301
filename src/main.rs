//! The `roomcast` binary: config → telemetry → startup.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

/// A realtime pub/sub server speaking Engine.IO v4 / Socket.IO v5.
#[derive(Parser)]
#[command(name = "roomcast", version)]
struct Cli {
    /// A profile layered over the defaults (see config/default.toml).
    #[arg(long, env = "ROOMCAST_CONFIG")]
    config: Option<PathBuf>,
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
    let settings = roomcast::config::Settings::load(cli.config.as_deref())?;
    roomcast::telemetry::init(&settings.log);
    let (host, path) = (settings.server.host.clone(), settings.server.path.clone());
    let app = roomcast::startup::Application::build(settings).context("starting the server")?;
    tracing::info!("roomcast listening on http://{host}:{}{path}", app.port());
    app.run_until_stopped().await?;
    Ok(())
}
