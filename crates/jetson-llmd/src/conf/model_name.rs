//! Ollama model names, validated by the rules of types/model/name.go in ollama/ollama:
//! `[host/][namespace/]model[:tag]`; each part starts with a letter, digit or `_` and continues
//! with those or `-`, `_`, `.`; a namespace has no `.`; a host may carry `:port`; model, namespace
//! and tag are at most 80 characters, the host at most 350.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ModelName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid Ollama model name: {reason}")]
pub struct InvalidModelName {
    pub value: String,
    pub reason: String,
}

impl ModelName {
    pub fn parse(s: &str) -> Result<ModelName, InvalidModelName> {
        let bad = |reason: &str| InvalidModelName { value: s.to_string(), reason: reason.to_string() };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(&format!("it contains {c:?}; remove spaces, quotes and comments after the name")));
        }
        if s.contains('@') {
            return Err(bad("digests (@sha256:...) are not supported here; name the model by tag"));
        }
        let (path, tag) = match s.rsplit_once(':') {
            // A ':' before the last '/' belongs to a host:port, not a tag.
            Some((p, t)) if !t.contains('/') => (p, Some(t)),
            _ => (s, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() > 3 {
            return Err(bad("at most host/namespace/model"));
        }
        let model = parts[parts.len() - 1];
        check_part(model, 80, false, false).map_err(|r| bad(&format!("model part {r}")))?;
        if parts.len() >= 2 {
            check_part(parts[parts.len() - 2], 80, false, true).map_err(|r| bad(&format!("namespace {r}")))?;
        }
        if parts.len() == 3 {
            check_part(parts[0], 350, true, false).map_err(|r| bad(&format!("host {r}")))?;
        }
        if let Some(t) = tag {
            check_part(t, 80, false, false).map_err(|r| bad(&format!("tag {r}")))?;
        }
        Ok(ModelName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// With the default tag made explicit, as Ollama reports names in /api/ps and /api/tags.
    pub fn full(&self) -> String {
        let last = self.0.rsplit('/').next().unwrap_or(&self.0);
        if last.contains(':') {
            self.0.clone()
        } else {
            format!("{}:latest", self.0)
        }
    }

    /// True if Ollama's `name` (as listed by /api/ps or /api/tags) is this model.
    pub fn matches(&self, listed: &str) -> bool {
        let full = self.full();
        listed == full || listed == self.0 || strip_default_host(listed) == full
    }
}

fn strip_default_host(s: &str) -> &str {
    s.strip_prefix("registry.ollama.ai/library/").unwrap_or(s)
}

fn check_part(s: &str, max: usize, host: bool, namespace: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > max {
        return Err(format!("is longer than {max} characters"));
    }
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (i > 0 && (c == '-' || (c == '.' && !namespace) || (c == ':' && host)));
        if !ok {
            return Err(format!("{s:?} may not contain {c:?} there"));
        }
    }
    Ok(())
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ModelName {
    type Err = InvalidModelName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for n in ["gemma4:e2b-8k", "gemma4:e2b-it-qat", "llama3.1:8b", "qwen3.5", "library/llama3:latest", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "localhost:5000/me/model:v1", "_x"] {
            assert!(ModelName::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_shell_and_junk() {
        for n in ["", "gemma4:e2b-8k; rm -rf /", "$(reboot)", "a b", "-model", "model:", ":tag", "a/b/c/d", "na.me/x/y:z/", "\"gemma\"", "gemma4:e2b-8k # comment", "m@sha256:abc", "x\u{0}"] {
            assert!(ModelName::parse(n).is_err(), "{n:?}");
        }
        assert!(ModelName::parse(&"a".repeat(81)).is_err());
        // With two parts the first is a namespace, which may not contain a dot.
        assert!(ModelName::parse("ns.x/model").is_err());
    }

    #[test]
    fn full_and_matches() {
        let m = ModelName::parse("qwen3.5").expect("valid");
        assert_eq!(m.full(), "qwen3.5:latest");
        assert!(m.matches("qwen3.5:latest"));
        let g = ModelName::parse("gemma4:e2b-8k").expect("valid");
        assert!(g.matches("gemma4:e2b-8k"));
        assert!(!g.matches("gemma4:e2b-4k"));
    }
}
