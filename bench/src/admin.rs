//! `--admin-ui PASSWORD`: an Admin UI's socket open on the server during a
//! run, as a browser with @socket.io/admin-ui's page would hold it: it logs
//! in to `/admin` (user "admin") on the first URL, then reads everything
//! the server sends it (socket, room and event updates, every node's
//! stats) until the run ends. What it got is reported with the run's
//! figures, so a run with it and one without compare the cost of an open
//! UI (scripts/bench's `admin-ui-max-1x1000`).

use std::cell::Cell;
use std::rc::Rc;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::client::{self, Target};

/// The open admin socket's reader, counting what it got.
pub struct Watch {
    events: Rc<Cell<u64>>,
    stats: Rc<Cell<u64>>,
    task: tokio::task::JoinHandle<()>,
}

/// Logs in to `/admin` on `target` with `password`, and reads from then on.
pub async fn watch(target: &Target, password: &str) -> Result<Watch> {
    let scratch = client::scratch();
    let mut session = client::connect(target, 0, &scratch).await?;
    let auth = json!({"username": "admin", "password": password});
    session.writer().send_text(&format!("40/admin,{auth}")).await?;
    let answer = session.next_text(&scratch).await?;
    if !answer.starts_with("40/admin,") {
        bail!("the admin namespace refused the login: {answer:.120}");
    }
    let (events, stats) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let (e, s) = (events.clone(), stats.clone());
    let task = tokio::task::spawn_local(async move {
        let mut count = |text: &[u8], _| {
            if text.starts_with(b"42/admin,[\"server_stats\"") {
                s.set(s.get() + 1);
            } else if text.starts_with(b"42/admin,") {
                e.set(e.get() + 1);
            }
        };
        while let Ok(true) = session.read_some(&scratch, || 0, &mut count).await {}
    });
    Ok(Watch { events, stats, task })
}

impl Watch {
    /// Stops reading: what it got, as the run's `admin_ui` figure.
    pub fn finish(self) -> Value {
        self.task.abort();
        json!({"updates": self.events.get(), "server_stats": self.stats.get()})
    }
}
