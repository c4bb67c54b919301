//! The Admin UI's built files, embedded at build time by build.rs from
//! the npm package `@socket.io/admin-ui` (the version web/package-lock.json
//! locks) with the icon font its page loads (`@mdi/font`), served at
//! `admin_ui.path` on the admin listener. The page loads nothing from
//! other sites (build.rs rewrote it), so it works offline and under the
//! strict policy below. Built without them, the path answers 404 saying
//! how to get them.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::json;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/admin_ui_files.rs"));
}

/// Only the page's own files; its connections may go to any Socket.IO
/// server (the UI asks which), no page may frame it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     font-src 'self' data:; img-src 'self' data:; connect-src 'self' http: https: ws: wss:; \
     frame-ancestors 'none'";

/// Whether the build embedded the UI.
pub fn embedded() -> bool {
    !embedded::FILES.is_empty()
}

/// The routes serving the UI under `path` (`/admin-ui/`; the same without
/// its last slash redirects there, so the page's relative links resolve).
pub fn configure(path: &str) -> impl FnOnce(&mut web::ServiceConfig) {
    let path = path.to_owned();
    move |cfg| {
        let bare = path.trim_end_matches('/').to_owned();
        let to = path.clone();
        cfg.route(
            &bare,
            web::get().to(move || {
                let to = to.clone();
                async move {
                    HttpResponse::PermanentRedirect()
                        .insert_header((header::LOCATION, to))
                        .finish()
                }
            }),
        )
        .route(&format!("{path}{{file:.*}}"), web::get().to(file));
    }
}

async fn file(file: web::Path<String>) -> HttpResponse {
    if !embedded() {
        let why = format!(
            "the Admin UI was not embedded in this build ({}): install Node.js 18+ with npm, run `npm ci --prefix \
             web`, then build again; or use the hosted UI (docs/admin-ui.md)",
            embedded::MISSING
        );
        return HttpResponse::NotFound().json(json!({ "error": why }));
    }
    let name = match file.as_str() {
        "" => "index.html",
        name => name,
    };
    let Some((_, kind, bytes)) = embedded::FILES.iter().find(|(path, _, _)| *path == name) else {
        return HttpResponse::NotFound().json(json!({ "error": "no such file" }));
    };
    // The files' names carry their content's hash, but index.html's does
    // not: it is revalidated.
    let cache = if name == "index.html" {
        "no-cache"
    } else {
        "public, max-age=86400"
    };
    HttpResponse::Ok()
        .content_type(*kind)
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(*bytes)
}
