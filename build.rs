//! - Rebuilds when a migration is added: `sqlx::migrate!` embeds them.
//! - Embeds the socket.io-client browser bundle from npm (web/, installed by
//!   `npm ci --prefix web`), which roomcast serves at `/socket.io/socket.io.js`
//!   as Node's socket.io does. Without it the build still succeeds and that
//!   route answers 404 with a hint.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let package = Path::new("web/node_modules/socket.io-client");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-changed=web/node_modules/socket.io-client/package.json");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bundle = std::fs::read(package.join("dist/socket.io.min.js")).unwrap_or_default();
    let version = std::fs::read_to_string(package.join("package.json"))
        .ok()
        .and_then(|p| {
            let (_, rest) = p.split_once("\"version\"")?;
            Some(rest.split('"').nth(1)?.to_owned())
        })
        .unwrap_or_default();
    if bundle.is_empty() {
        println!(
            "cargo:warning=web/node_modules/socket.io-client is missing: /socket.io/socket.io.js will answer 404 \
             (run `npm ci --prefix web`, then build again)"
        );
    }
    std::fs::write(out.join("socket.io.min.js"), bundle).expect("OUT_DIR is writable");
    std::fs::write(out.join("socket.io-client.version"), version).expect("OUT_DIR is writable");
}
