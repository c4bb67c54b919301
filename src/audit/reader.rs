//! The reader actor: queries for the HTTP API. It lives on the audit
//! arbiter with the writer, where the pool's connections live, and answers
//! each query as its own future, so queries do not wait for one another.

use actix::prelude::*;

use super::store::{AuditPage, Filter, Store};

/// One page of events matching a filter; the error is for a 503.
#[derive(Message)]
#[rtype(result = "Result<AuditPage, String>")]
pub struct Search(pub Filter);

/// The reader actor.
pub struct AuditReader {
    /// The audit database.
    pub store: Store,
}

impl Actor for AuditReader {
    type Context = Context<Self>;
}

impl Handler<Search> for AuditReader {
    type Result = ResponseFuture<Result<AuditPage, String>>;

    fn handle(&mut self, Search(filter): Search, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.search(&filter).await.map_err(|e| e.to_string()) })
    }
}
