//! Which of Ollama's endpoints a request reaches, read the way Ollama routes it: gin's router
//! on the decoded path (server/routes.go GenerateRoutes, v0.24.0 to v0.33). Anything that is
//! not plainly one of them, or that changes state through an endpoint this table does not know,
//! is refused by the guard rather than forwarded (a newer Ollama's new route stays closed until
//! it is added here).

/// What an endpoint can do to the pinned model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Names a model to run: may load, reload, evict or unload (body checked by the policy).
    Inference,
    /// Changes which models exist, or talks to ollama.com on the machine's behalf: loopback
    /// and `admin_from` only.
    Admin,
    /// Reads, and GET/HEAD/OPTIONS anywhere: nothing in Ollama loads a model on them.
    Read,
    /// A POST, DELETE or other state-changing method on a path Ollama's router does not have
    /// in this table.
    Unknown,
}

/// POST routes that run a model (native, OpenAI, Anthropic, image and audio compatibility).
const INFERENCE: &[&str] =
    &["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages", "/v1/images/generations", "/v1/images/edits", "/v1/audio/transcriptions"];

/// POST routes that change models or act for the machine's ollama.com account.
const ADMIN_POST: &[&str] = &["/api/pull", "/api/push", "/api/create", "/api/copy", "/api/me", "/api/signout", "/api/experimental/web_search", "/api/experimental/web_fetch"];

/// POST routes that only read.
const READ_POST: &[&str] = &["/api/show"];

pub fn classify(method: &str, path: &str) -> Route {
    match method {
        // gin answers OPTIONS (CORS preflight) itself; no GET or HEAD route loads a model.
        "GET" | "HEAD" | "OPTIONS" => Route::Read,
        "POST" if INFERENCE.contains(&path) => Route::Inference,
        "POST" if ADMIN_POST.contains(&path) || blob(path) => Route::Admin,
        "POST" if READ_POST.contains(&path) => Route::Read,
        "DELETE" if path == "/api/delete" || path.starts_with("/api/user/keys/") => Route::Admin,
        _ => Route::Unknown,
    }
}

/// The admin routes that delete, overwrite or replace the model they name, and the body fields
/// their handlers take that name from (api/types.go; server/routes.go DeleteHandler, PullHandler
/// and PushHandler read `cmp.Or(Model, Name)`, CopyHandler writes `destination`, server/create.go
/// CreateHandler writes `cmp.Or(Model, Name)`). Both fields are looked at where Ollama takes
/// either.
pub fn model_fields(method: &str, path: &str) -> Option<&'static [&'static str]> {
    match (method, path) {
        ("DELETE", "/api/delete") | ("POST", "/api/create" | "/api/pull" | "/api/push") => Some(&["model", "name"]),
        ("POST", "/api/copy") => Some(&["destination"]),
        _ => None,
    }
}

/// `/api/blobs/:digest`: one segment after the prefix.
fn blob(path: &str) -> bool {
    path.strip_prefix("/api/blobs/").is_some_and(|d| !d.is_empty() && !d.contains('/'))
}

/// A path the guard can read exactly as Ollama will: no %-escapes (gin routes on the decoded
/// path, so `/api/%67enerate` is generate), no empty, `.` or `..` segments (net/http's ServeMux
/// would redirect them). None when it is plain; otherwise what is wrong, for the client.
pub fn unplain(raw: &str) -> Option<&'static str> {
    if raw.contains('%') {
        return Some("%-escapes");
    }
    if !raw.starts_with('/') {
        return Some("a path that does not start with /");
    }
    let segments: Vec<&str> = raw[1..].split('/').collect();
    let last = segments.len() - 1;
    if segments.iter().enumerate().any(|(i, s)| (s.is_empty() && i != last) || *s == "." || *s == "..") {
        return Some("empty, '.' or '..' path segments");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(classify("POST", "/api/generate"), Route::Inference);
        assert_eq!(classify("POST", "/v1/messages"), Route::Inference);
        assert_eq!(classify("POST", "/api/pull"), Route::Admin);
        assert_eq!(classify("POST", "/api/blobs/sha256:00"), Route::Admin);
        assert_eq!(classify("DELETE", "/api/delete"), Route::Admin);
        assert_eq!(classify("POST", "/api/show"), Route::Read);
        assert_eq!(classify("GET", "/api/generate"), Route::Read);
        assert_eq!(classify("POST", "/api/generate/"), Route::Unknown);
        assert_eq!(classify("POST", "/api/Generate"), Route::Unknown);
        assert_eq!(classify("PUT", "/api/generate"), Route::Unknown);
        assert_eq!(classify("POST", "/api/future-endpoint"), Route::Unknown);
        assert_eq!(classify("POST", "/api/blobs/a/b"), Route::Unknown);
    }

    #[test]
    fn plain_paths() {
        assert_eq!(unplain("/api/generate"), None);
        assert_eq!(unplain("/"), None);
        assert_eq!(unplain("/api/ps/"), None);
        assert!(unplain("/api/%67enerate").is_some());
        assert!(unplain("/api%2Fgenerate").is_some());
        assert!(unplain("//api/generate").is_some());
        assert!(unplain("/api/./generate").is_some());
        assert!(unplain("/x/../api/generate").is_some());
        assert!(unplain("/api/generate/..").is_some());
    }
}
