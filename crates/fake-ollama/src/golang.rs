//! Small pieces of Go behaviour that Ollama's API inherits.

use std::time::Duration;

/// A keep-alive value as Ollama's `api.Duration` decodes it (api/types.go UnmarshalJSON):
/// a JSON number is seconds (negative = forever), a string goes through Go's time.ParseDuration
/// (negative = forever). `Forever` stands for Go's math.MaxInt64 nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Forever,
    For(Duration),
}

impl Keep {
    pub fn from_json(v: &serde_json::Value) -> Result<Keep, String> {
        match v {
            serde_json::Value::Number(n) => {
                let f = n.as_f64().ok_or_else(|| format!("invalid duration {n}"))?;
                if f < 0.0 {
                    Ok(Keep::Forever)
                } else {
                    Ok(Keep::For(Duration::from_secs_f64(f)))
                }
            }
            serde_json::Value::String(s) => match parse_duration(s)? {
                None => Ok(Keep::Forever),
                Some(d) => Ok(Keep::For(d)),
            },
            other => Err(format!("Unsupported type: '{}'", type_name(other))),
        }
    }

    /// OLLAMA_KEEP_ALIVE (envconfig.KeepAlive): a Go duration, else bare seconds; negative = forever.
    pub fn from_env(s: &str) -> Option<Keep> {
        let s = s.trim().trim_matches(|c| c == '"' || c == '\'');
        if s.is_empty() {
            return None;
        }
        if let Ok(d) = parse_duration(s) {
            return Some(d.map_or(Keep::Forever, Keep::For));
        }
        let n: i64 = s.parse().ok()?;
        Some(if n < 0 { Keep::Forever } else { Keep::For(Duration::from_secs(n as u64)) })
    }

    /// Go's Duration.String() for the `server config` log line (5m0s, 1h0m0s, 2562047h47m16.854775807s).
    pub fn go_string(&self) -> String {
        match self {
            Keep::Forever => "2562047h47m16.854775807s".into(),
            Keep::For(d) => {
                let total = d.as_secs();
                let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
                if total == 0 {
                    "0s".into()
                } else if h > 0 {
                    format!("{h}h{m}m{s}s")
                } else if m > 0 {
                    format!("{m}m{s}s")
                } else {
                    format!("{s}s")
                }
            }
        }
    }
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Array(_) => "[]interface {}",
        serde_json::Value::Object(_) => "map[string]interface {}",
        serde_json::Value::Null => "<nil>",
        _ => "unknown",
    }
}

/// Go's time.ParseDuration. `Ok(None)` means a negative duration (which Ollama turns into forever).
pub fn parse_duration(orig: &str) -> Result<Option<Duration>, String> {
    let err = |what: &str| Err(format!("time: {what} duration \"{orig}\""));
    let mut s = orig;
    let mut neg = false;
    if let Some(r) = s.strip_prefix('-') {
        neg = true;
        s = r;
    } else if let Some(r) = s.strip_prefix('+') {
        s = r;
    }
    if s == "0" {
        return Ok(Some(Duration::ZERO));
    }
    if s.is_empty() {
        return err("invalid");
    }
    let mut total = 0f64;
    while !s.is_empty() {
        let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let num = &s[..num_end];
        if num.is_empty() || num == "." {
            return err("invalid");
        }
        let value: f64 = match num.parse() {
            Ok(v) => v,
            Err(_) => return err("invalid"),
        };
        s = &s[num_end..];
        let unit_end = s.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(s.len());
        let unit = &s[..unit_end];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration \"{orig}\""));
        }
        let mult = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("time: unknown unit \"{unit}\" in duration \"{orig}\"")),
        };
        total += value * mult;
        s = &s[unit_end..];
    }
    if neg && total > 0.0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(total)))
}

/// Ollama's format.HumanBytes2 (binary units, one decimal): "7.4 GiB", "512.0 MiB".
pub fn human_bytes2(b: u64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f >= K * K * K {
        format!("{:.1} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.1} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.1} KiB", f / K)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5m"), Ok(Some(Duration::from_secs(300))));
        assert_eq!(parse_duration("1h30m"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(parse_duration("1.5s"), Ok(Some(Duration::from_millis(1500))));
        assert_eq!(parse_duration("-1m"), Ok(None));
        assert_eq!(parse_duration("0"), Ok(Some(Duration::ZERO)));
        assert_eq!(parse_duration("-1"), Err("time: missing unit in duration \"-1\"".into()));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn keep_alive_json_forms() {
        use serde_json::json;
        assert_eq!(Keep::from_json(&json!(-1)), Ok(Keep::Forever));
        assert_eq!(Keep::from_json(&json!(0)), Ok(Keep::For(Duration::ZERO)));
        assert_eq!(Keep::from_json(&json!(240)), Ok(Keep::For(Duration::from_secs(240))));
        assert_eq!(Keep::from_json(&json!("24h")), Ok(Keep::For(Duration::from_secs(86400))));
        assert!(Keep::from_json(&json!("-1")).is_err());
        assert_eq!(Keep::from_env("300"), Some(Keep::For(Duration::from_secs(300))));
        assert_eq!(Keep::from_env("-1"), Some(Keep::Forever));
        assert_eq!(Keep::For(Duration::from_secs(300)).go_string(), "5m0s");
    }

    #[test]
    fn human_bytes() {
        assert_eq!(human_bytes2((7.4 * (1u64 << 30) as f64) as u64), "7.4 GiB");
        assert_eq!(human_bytes2(512 << 20), "512.0 MiB");
    }
}
