//! The block explorer: a static page (HTML, CSS, JavaScript embedded in the binary, no
//! build step) that talks to this node's JSON-RPC and WebSocket, same-origin only, under
//! a strict Content-Security-Policy.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../explorer/index.html");
const APP: &str = include_str!("../explorer/app.js");
const STYLE: &str = include_str!("../explorer/style.css");

/// Scripts and styles only from this origin, no inline code, network only to this
/// origin (JSON-RPC and WebSocket), no frames, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// Routes: `GET /` redirects to `/explorer`, which serves the page and its assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/explorer",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/explorer/",
            get(|| async { Redirect::permanent("/explorer") }),
        )
        .route(
            "/explorer/app.js",
            get(|| async { asset(APP, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/explorer/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_never_builds_html_from_strings() {
        // Every dynamic text goes through textContent; these APIs would parse markup.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!super::APP.contains(banned), "app.js uses {banned}");
        }
        assert!(
            !super::INDEX.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
        assert!(!super::INDEX.contains("style="), "no inline style");
    }
}
