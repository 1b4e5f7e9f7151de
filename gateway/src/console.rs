//! The web console: a single page for tenants' users (chat, signed in with a
//! tenant key) and operators (tenants, keys, usage, live monitor, bursts,
//! webhooks, audit, CSV export; signed in with the admin token).
//!
//! It is served on its own listener (`--console`, port 8080 by default under
//! `bulkhead up`) together with the same `/v1` and `/admin/v1` routes as the
//! API listener, so its scripts call them on the same origin: everything the
//! console shows, a script can fetch too. The page, its script and styles and
//! the vendored chart library (uPlot, MIT, `console/vendor/`) are compiled
//! into the binary; nothing is fetched from anywhere else, and the content
//! security policy says so to the browser.
//!
//! The console keeps no state and checks no credential itself: the key or
//! token a user signs in with stays in the browser tab (`sessionStorage`) and
//! goes to the API as `Authorization: Bearer`, which judges it.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// (file name under `/console/`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/vendor/uPlot.min.css"),
    ),
];

const INDEX: &str = include_str!("../console/index.html");

/// Only this origin: no CDN, no inline script, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// The console's own routes, to merge with the API's.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/console/{file}", get(asset))
}

fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    secured(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response())
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => {
            secured(([(header::CONTENT_TYPE, *content_type)], *bytes).into_response())
        }
        None => (StatusCode::NOT_FOUND, "no such console file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_files_the_console_serves() {
        for reference in INDEX
            .split(['"', '\''])
            .filter(|s| s.starts_with("/console/") || s.starts_with("http"))
        {
            let file = reference.strip_prefix("/console/").unwrap_or(reference);
            assert!(
                ASSETS.iter().any(|(name, _, _)| *name == file),
                "index.html loads {reference}, which the console does not serve"
            );
        }
    }
}
