//! OLLAMA_HOST, read exactly as Ollama's own CLI reads it.
//!
//! Mirrors `envconfig.Host()` in ollama/ollama (envconfig/config.go): surrounding whitespace and
//! quotes are trimmed, the scheme is optional (default http), a missing port means 11434 without a
//! scheme but 80/443 with an explicit http/https scheme, an unparsable port falls back to that
//! default, and anything after the first `/` is a path prefix.

use url::Url;

/// Default address of a local Ollama server.
pub const DEFAULT_HOST: &str = "127.0.0.1:11434";

/// Error for a host value that cannot become a URL even after Ollama's lenient rules.
#[derive(Debug, thiserror::Error)]
#[error("OLLAMA_HOST value {value:?} is not a usable address: {reason}")]
pub struct HostError {
    pub value: String,
    pub reason: String,
}

/// Turns an OLLAMA_HOST value (or `--ollama URL`) into the base URL of the API.
pub fn parse_host(raw: &str) -> Result<Url, HostError> {
    // envconfig.Var trims spaces, then quotes.
    let s = raw.trim().trim_matches(|c| c == '"' || c == '\'');
    let (scheme, hostport, default_port) = match s.split_once("://") {
        None => ("http", s, 11434u16),
        Some(("http", rest)) => ("http", rest, 80),
        Some(("https", rest)) => ("https", rest, 443),
        Some((other, rest)) => (other, rest, 11434),
    };
    let (hostport, path) = match hostport.split_once('/') {
        Some((hp, p)) => (hp, p),
        None => (hostport, ""),
    };
    let (host, port) = match split_host_port(hostport) {
        Some((h, p)) => {
            let port = p.parse::<u16>().unwrap_or(default_port);
            // Go dials ":1234" as the local machine; say so explicitly for reqwest.
            let h = if h.is_empty() { "127.0.0.1" } else { h };
            (h.to_string(), port)
        }
        None => {
            let bare = hostport.trim_start_matches('[').trim_end_matches(']');
            let host = if bare.is_empty() { "127.0.0.1".to_string() } else { bare.to_string() };
            (host, default_port)
        }
    };
    let host_fmt = if host.contains(':') { format!("[{host}]") } else { host };
    let text = format!("{scheme}://{host_fmt}:{port}/{path}");
    Url::parse(&text).map_err(|e| HostError { value: raw.to_string(), reason: e.to_string() })
}

/// Go's net.SplitHostPort, reduced to what matters here: `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let p = after.strip_prefix(':')?;
        return Some((h, p));
    }
    let (h, p) = s.rsplit_once(':')?;
    if h.contains(':') {
        // A bare IPv6 address without brackets has no port in Go's eyes.
        return None;
    }
    Some((h, p))
}

/// True when the URL's host is a loopback address or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        parse_host(s).expect("parses").to_string()
    }

    #[test]
    fn follows_ollama_envconfig_rules() {
        assert_eq!(p(""), "http://127.0.0.1:11434/");
        assert_eq!(p("1.2.3.4"), "http://1.2.3.4:11434/");
        assert_eq!(p(":1234"), "http://127.0.0.1:1234/");
        assert_eq!(p("example.com:1234"), "http://example.com:1234/");
        assert_eq!(p("http://example.com"), "http://example.com/"); // port 80 is implied
        assert_eq!(p("https://example.com"), "https://example.com/");
        assert_eq!(p("  \"0.0.0.0:11435\" "), "http://0.0.0.0:11435/");
        assert_eq!(p("[::1]:9999"), "http://[::1]:9999/");
        assert_eq!(p("::1"), "http://[::1]:11434/");
        assert_eq!(p("localhost:99999"), "http://localhost:11434/");
        assert_eq!(p("http://example.com/ollama"), "http://example.com/ollama");
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback(&parse_host("127.0.0.1:1").expect("ok")));
        assert!(is_loopback(&parse_host("localhost").expect("ok")));
        assert!(is_loopback(&parse_host("[::1]:3").expect("ok")));
        assert!(!is_loopback(&parse_host("0.0.0.0").expect("ok")));
        assert!(!is_loopback(&parse_host("10.0.0.2").expect("ok")));
    }
}
