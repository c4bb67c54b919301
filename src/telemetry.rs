//! Logging: readable lines by default, JSON by `log.format = "json"`.
//!
//! Every line carries the node's name (`server.node_name`), so the logs of
//! a cluster can be merged and still tell the nodes apart: as `node=NAME`
//! after the time in text lines, as a `"node"` field in JSON. Colour codes
//! are written only when stderr is a terminal (and `NO_COLOR` is not set):
//! a file or a log collector gets plain text.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG` overrides `log.level`
/// (already validated by [`crate::config`]).
pub fn init(settings: &LogSettings, node: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let ansi = use_ansi(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").is_some());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match settings.format {
        LogFormat::Text => builder.with_timer(NodeTimer { node: node.to_owned() }).try_init(),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true);
            builder
                .json()
                .event_format(WithNode {
                    inner: json,
                    node: node.to_owned(),
                })
                .try_init()
        }
    };
    // A subscriber already installed (tests start several servers) is fine.
    let _ = result;
}

/// Colour only on a terminal, and never under `NO_COLOR`
/// (<https://no-color.org>).
fn use_ansi(terminal: bool, no_color: bool) -> bool {
    terminal && !no_color
}

/// The time, then `node=NAME`: the one place of a text line written before
/// the level, kept in colour on a terminal.
struct NodeTimer {
    node: String,
}

impl FormatTime for NodeTimer {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        SystemTime.format_time(w)?;
        write!(w, " node={}", self.node)
    }
}

/// A JSON formatter with a `"node"` field first in every object.
struct WithNode<F> {
    inner: F,
    node: String,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&add_node(&line, &self.node))
    }
}

/// `line` (one JSON object) with `"node":NAME` as its first field.
fn add_node(line: &str, node: &str) -> String {
    // unwrap: a string always serialises.
    let name = serde_json::to_string(node).unwrap();
    match line.strip_prefix('{') {
        Some(rest) if rest.starts_with('}') => format!("{{\"node\":{name}{rest}"),
        Some(rest) => format!("{{\"node\":{name},{rest}"),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, false));
        assert!(!use_ansi(false, false));
        assert!(!use_ansi(true, true));
    }

    #[test]
    fn the_node_leads_every_json_object() {
        assert_eq!(
            add_node("{\"level\":\"INFO\"}\n", "web-1"),
            "{\"node\":\"web-1\",\"level\":\"INFO\"}\n"
        );
        assert_eq!(add_node("{}\n", "a"), "{\"node\":\"a\"}\n");
        let parsed: serde_json::Value = serde_json::from_str(&add_node("{\"a\":1}", "x\"y")).unwrap();
        assert_eq!(parsed["node"], "x\"y");
    }
}
