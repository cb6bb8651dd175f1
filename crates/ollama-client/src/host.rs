//! OLLAMA_HOST, read as Ollama's own CLI reads it, but strict where Ollama would guess.
//!
//! Mirrors `envconfig.Host()` and `envconfig.ConnectableHost()` in ollama/ollama
//! (envconfig/config.go): surrounding whitespace and quotes are trimmed (envconfig.Var), the
//! scheme is optional (default http), a missing port means 11434 without a scheme but 80/443 with
//! an explicit http/https scheme, anything after the first `/` is a path prefix, and an
//! unspecified bind address (0.0.0.0, ::) is connected to on loopback (127.0.0.1, ::1).
//! Where Ollama logs "invalid port, using default" and carries on, this is an error: a typo in
//! the port would otherwise point the supervisor at a different server than the one meant.

use url::Url;

/// Default address of a local Ollama server.
pub const DEFAULT_HOST: &str = "127.0.0.1:11434";

/// A host value that cannot become an address.
#[derive(Debug, thiserror::Error)]
#[error("OLLAMA_HOST value {value:?} is not a usable address: {reason}")]
pub struct HostError {
    pub value: String,
    pub reason: String,
}

/// One OLLAMA_HOST value, as the server binds it and as a client connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaHost {
    /// `host:port` for `ollama serve` (OLLAMA_HOST of the server); may be unspecified.
    pub bind: String,
    /// Base URL a client connects to (unspecified addresses replaced by loopback).
    pub url: Url,
}

impl OllamaHost {
    /// The server is on this machine: loopback, `localhost` or an unspecified (all-interfaces)
    /// bind address.
    pub fn is_local(&self) -> bool {
        is_loopback(&self.url)
    }
}

fn err(raw: &str, reason: impl Into<String>) -> HostError {
    HostError { value: crate::text::clip(raw, 200), reason: reason.into() }
}

/// Parses an OLLAMA_HOST value (or `--ollama URL`).
pub fn parse_host(raw: &str) -> Result<OllamaHost, HostError> {
    let s = raw.trim().trim_matches(|c| c == '"' || c == '\'');
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(err(raw, "it contains spaces or control characters"));
    }
    let (scheme, hostport, default_port) = match s.split_once("://") {
        None if s == "ollama.com" => ("https", "ollama.com:443", 443u16),
        None => ("http", s, 11434u16),
        Some(("http", rest)) => ("http", rest, 80),
        Some(("https", rest)) => ("https", rest, 443),
        Some((other, _)) => return Err(err(raw, format!("scheme {other:?} is not http or https"))),
    };
    let (hostport, path) = hostport.split_once('/').unwrap_or((hostport, ""));
    if hostport.contains(['@', '?', '#']) || path.contains(['?', '#']) {
        return Err(err(raw, "user names, queries and fragments have no meaning here; write host:port"));
    }
    let (host, port) = match split_host_port(hostport) {
        Some((h, p)) => {
            let port = match p.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => n as u16,
                _ => return Err(err(raw, format!("port {p:?} is not a TCP port (1-65535)"))),
            };
            (h.to_string(), port)
        }
        None => (hostport.trim_start_matches('[').trim_end_matches(']').to_string(), default_port),
    };
    // Go dials ":1234" and "" as the local machine (envconfig.Host's 127.0.0.1 default).
    let host = if host.is_empty() { "127.0.0.1".to_string() } else { host };
    let bracket = |h: &str| if h.contains(':') { format!("[{h}]") } else { h.to_string() };
    let bind = format!("{}:{port}", bracket(&host));
    let connect = match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        Ok(ip) if ip.is_unspecified() => "::1".to_string(),
        _ => host,
    };
    let text = format!("{scheme}://{}:{port}/{path}", bracket(&connect));
    let url = Url::parse(&text).map_err(|e| err(raw, e.to_string()))?;
    if url.host().is_none() {
        return Err(err(raw, "no host"));
    }
    Ok(OllamaHost { bind, url })
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
        parse_host(s).expect("parses").url.to_string()
    }

    #[test]
    fn follows_ollama_envconfig_rules() {
        assert_eq!(p(""), "http://127.0.0.1:11434/");
        assert_eq!(p("1.2.3.4"), "http://1.2.3.4:11434/");
        assert_eq!(p(":1234"), "http://127.0.0.1:1234/");
        assert_eq!(p("example.com:1234"), "http://example.com:1234/");
        assert_eq!(p("http://example.com"), "http://example.com/"); // port 80 is implied
        assert_eq!(p("https://example.com"), "https://example.com/");
        assert_eq!(p("[::1]:9999"), "http://[::1]:9999/");
        assert_eq!(p("::1"), "http://[::1]:11434/");
        assert_eq!(p("http://example.com/ollama"), "http://example.com/ollama");
        assert_eq!(p("ollama.com"), "https://ollama.com/");
    }

    #[test]
    fn unspecified_binds_connect_on_loopback() {
        // envconfig/config_test.go TestConnectableHost.
        for (v, url, bind) in [
            ("0.0.0.0", "http://127.0.0.1:11434/", "0.0.0.0:11434"),
            ("  \"0.0.0.0:11435\" ", "http://127.0.0.1:11435/", "0.0.0.0:11435"),
            ("[::]", "http://[::1]:11434/", "[::]:11434"),
            ("[::]:1234", "http://[::1]:1234/", "[::]:1234"),
            ("https://0.0.0.0:4321", "https://127.0.0.1:4321/", "0.0.0.0:4321"),
        ] {
            let h = parse_host(v).expect(v);
            assert_eq!((h.url.as_str(), h.bind.as_str()), (url, bind), "{v}");
            assert!(h.is_local(), "{v}");
        }
    }

    #[test]
    fn invalid_ports_and_stray_parts_are_errors() {
        for v in ["localhost:99999", "127.0.0.1:-1", "127.0.0.1:0", "127.0.0.1:abc", "http://u:p@127.0.0.1:1", "127.0.0.1:1?x=1", "127.0.0.1:1/p#f", "ftp://h", "127.0.0.1 :1", "a\u{1b}b"] {
            let e = parse_host(v).expect_err(v);
            assert!(!e.to_string().contains('\u{1b}'), "{e}");
        }
        assert!(parse_host("localhost:99999").expect_err("x").reason.contains("1-65535"));
    }

    #[test]
    fn loopback_detection() {
        assert!(parse_host("127.0.0.1:1").expect("ok").is_local());
        assert!(parse_host("localhost").expect("ok").is_local());
        assert!(parse_host("[::1]:3").expect("ok").is_local());
        assert!(!parse_host("10.0.0.2").expect("ok").is_local());
        assert!(!parse_host("example.com").expect("ok").is_local());
    }
}
