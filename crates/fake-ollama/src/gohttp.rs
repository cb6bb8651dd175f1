//! Which handler a request path reaches in Ollama: net/http's ServeMux first (server/routes.go
//! Serve registers the gin engine as `http.Handle("/", h)`), then gin's router. What that
//! means for paths that are not spelled plainly:
//!
//! - ServeMux (net/http/server.go findHandler, Go 1.22+) cleans the *escaped* path (`//x`,
//!   `/a/./b`, `/a/../b`) and answers a path that changed with 307 to the clean one.
//! - A path with a bad %-escape never gets that far: the request line does not parse and the
//!   server answers 400 (net/http readRequest, url.ParseRequestURI).
//! - gin routes on `URL.Path`, the *decoded* path (gin.go handleHTTPRequest, UseRawPath false):
//!   `/api/%67enerate` and `/api%2Fgenerate` are /api/generate.
//! - gin's RedirectTrailingSlash: `/api/generate/` is redirected to `/api/generate`, 301 for
//!   GET and 307 for every other method (gin.go redirectTrailingSlash).

use axum::extract::Request;
use axum::http::{header, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Go's percent-decoding of a path (url.unescape, encodePath mode): None for a bad escape.
pub fn unescape(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (h, l) = (b.get(i + 1).copied().and_then(hex)?, b.get(i + 2).copied().and_then(hex)?);
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Go keeps the bytes; a path that is not UTF-8 matches no route either way.
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// net/http's cleanPath: path.Clean with a leading slash, keeping a trailing slash.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".into();
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if p.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

/// The middleware in front of the router: ServeMux's cleaning, then gin's decoded path.
pub async fn route_like_go(mut req: Request, next: Next) -> Response {
    let raw = req.uri().path().to_string();
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let Some(decoded) = unescape(&raw) else {
        return (StatusCode::BAD_REQUEST, "400 Bad Request").into_response();
    };
    let clean = clean_path(&raw);
    if clean != raw {
        return redirect(StatusCode::TEMPORARY_REDIRECT, &format!("{clean}{query}"));
    }
    if decoded != raw {
        // The decoded path as the router's key; one that is no valid URI matches no route.
        match format!("{decoded}{query}").parse::<Uri>() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return not_found(),
        }
    }
    let resp = next.run(req).await;
    // gin's HandleMethodNotAllowed (set in server/routes.go GenerateRoutes) answers with a body.
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        return (StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed").into_response();
    }
    resp
}

fn redirect(status: StatusCode, to: &str) -> Response {
    (status, [(header::LOCATION, to.to_string())]).into_response()
}

/// gin's 404 (default404Body).
pub fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found").into_response()
}

/// The router's fallback: gin's trailing-slash redirect when the path without its slash is a
/// route, else 404.
pub fn fallback(method: &axum::http::Method, path: &str, routes: &[&str]) -> Response {
    if let Some(stripped) = path.strip_suffix('/').filter(|s| !s.is_empty()) {
        if routes.contains(&stripped) {
            let status = if method == axum::http::Method::GET { StatusCode::MOVED_PERMANENTLY } else { StatusCode::TEMPORARY_REDIRECT };
            return redirect(status, stripped);
        }
    }
    not_found()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_cleaning() {
        assert_eq!(unescape("/api/%67enerate").as_deref(), Some("/api/generate"));
        assert_eq!(unescape("/api%2Fgenerate").as_deref(), Some("/api/generate"));
        assert_eq!(unescape("/api/%zz"), None);
        assert_eq!(unescape("/api/%6"), None);
        assert_eq!(clean_path("//api/generate"), "/api/generate");
        assert_eq!(clean_path("/api/./generate"), "/api/generate");
        assert_eq!(clean_path("/x/../api/ps"), "/api/ps");
        assert_eq!(clean_path("/api/ps/"), "/api/ps/");
        assert_eq!(clean_path("/"), "/");
    }
}
