//! The web status page's files (SPEC §9): `/ui/` and its script and style sheet, built into
//! the binary with `include_bytes!` so the agent never fetches anything at run time, and
//! `GET /` sent on to `/ui/` as Consul does.
//!
//! The page is static; everything it shows comes from blocking reads of `/v1/...` (see
//! `ui_api`). Its safety rests on two things set here: a Content-Security-Policy that allows
//! only this origin's script and style (no inline script, no `eval`, nothing from anywhere
//! else), and `nosniff`, so a catalog value can never become code even if some rendering
//! path were to put it into markup. The files are small and change only with the binary,
//! so each is served with an ETag (its SHA-256) and `no-cache`: a browser revalidates and
//! gets `304` until the agent is upgraded.

use super::Body;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    LOCATION, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// Only this origin's script, style, images and API; no inline script, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/ui/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        path: "/ui/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/style.css"),
    },
    Asset {
        path: "/ui/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../ui/icon.svg"),
    },
];

/// Each asset's ETag, in `ASSETS` order, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// The answer for `/`, `/ui` and `/ui/...`; `None` for every other path (the API's).
pub fn serve(req: &Request<Incoming>) -> Option<Response<Body>> {
    let path = req.uri().path();
    if path != "/" && path != "/ui" && !path.starts_with("/ui/") {
        return None;
    }
    let resp = secure(answer(req.method(), path, req.headers().get(IF_NONE_MATCH)));
    crate::metrics::METRICS.http_request("/ui/", resp.status().as_u16());
    Some(resp)
}

fn answer(method: &Method, path: &str, if_none_match: Option<&HeaderValue>) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed: the status page is read-only"),
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/" || path == "/ui" {
        let mut r = plain(StatusCode::FOUND, "see /ui/");
        r.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/ui/"));
        return r;
    }
    let Some((i, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.path == path) else {
        return plain(StatusCode::NOT_FOUND, format!("no such page {path:?}"));
    };
    let etag = ETAGS[i].clone();
    let fresh = if_none_match.is_some_and(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    });
    let mut r = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(asset.body)));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        r
    };
    let h = r.headers_mut();
    h.insert(ETAG, etag);
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A short text answer (redirects, errors) with the page's security headers.
fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut text = text.into();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Adds the headers every answer under `/ui/` carries.
fn secure(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_redirects_and_assets_have_types_and_etags() {
        let r = answer(&Method::GET, "/", None);
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[LOCATION], "/ui/");
        let r = answer(&Method::GET, "/ui/app.js", None);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        let etag = r.headers()[ETAG].clone();
        let again = answer(&Method::GET, "/ui/app.js", Some(&etag));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            answer(&Method::GET, "/ui/nope.js", None).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            answer(&Method::POST, "/ui/", None).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn the_page_has_no_inline_script() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        // Every <script> names a file; the CSP would block an inline one anyway.
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(tag.contains("src=\""), "inline script in index.html: {tag}");
        }
        // Nor inline event handlers (`onclick=` and the like).
        let lower = html.to_ascii_lowercase();
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                !lower[i + 1 + name.len()..].starts_with('='),
                "inline event handler {name} in index.html"
            );
        }
    }
}
