//! API keys for clients that are not on this machine (`[guard] keys_file`). The file holds one
//! key a line, stored hashed so that reading it gives nothing away:
//!
//! ```text
//! # name   role    sha256 of the key
//! laptop   client  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ansible  admin   sha256:...
//! ```
//!
//! A client sends `Authorization: Bearer <key>` (the OpenAI SDK's `api_key`, the Ollama
//! libraries' `headers`). `client` keys may run the pinned model; `admin` keys may also pull,
//! create, copy, push and delete (from `admin_from` networks). Loopback needs no key. The file
//! is re-read when it changes (checked on each request from off the machine); a file that
//! cannot be read refuses every such request rather than letting them through.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub role: Role,
    hash: [u8; 32],
}

/// Parses the file; the message names the line.
pub fn parse(text: &str) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}; write `NAME client|admin sha256:HEX` (HEX: `printf %s KEY | sha256sum`)", i + 1);
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [name, role, hash] = parts.as_slice() else { return Err(bad("expected three words")) };
        let role = match *role {
            "client" => Role::Client,
            "admin" => Role::Admin,
            _ => return Err(bad("the role is client or admin")),
        };
        let hex = hash.strip_prefix("sha256:").ok_or_else(|| bad("the hash starts with sha256:"))?;
        let mut h = [0u8; 32];
        if hex.len() != 64 {
            return Err(bad("a sha256 is 64 hex digits"));
        }
        for (j, b) in h.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[j * 2..j * 2 + 2], 16).map_err(|_| bad("a sha256 is 64 hex digits"))?;
        }
        keys.push(Key { name: crate::text::clip(name, 64), role, hash: h });
    }
    Ok(keys)
}

/// The key a request presents: `Authorization: Bearer <key>`.
pub fn presented(authorization: Option<&str>) -> Option<&str> {
    let v = authorization?.trim();
    let (scheme, key) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim()).filter(|k| !k.is_empty())
}

/// The matching key, if any. Every entry is compared whole (no early exit on the first
/// differing byte), so timing says nothing about how close a guess was.
pub fn find<'a>(keys: &'a [Key], key: &str) -> Option<&'a Key> {
    let h: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut found = None;
    for k in keys {
        let diff = k.hash.iter().zip(h.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 && found.is_none() {
            found = Some(k);
        }
    }
    found
}

/// One reading of the keys file: which file, its (mtime, size), and what it held.
type Reading = (PathBuf, Option<(SystemTime, u64)>, Result<Vec<Key>, String>);

/// The keys file as last read, re-read when its modification time or size changes.
#[derive(Default)]
pub struct KeyCache {
    last: Mutex<Option<Reading>>,
}

impl KeyCache {
    pub async fn keys(&self, path: &Path) -> Result<Vec<Key>, String> {
        let stamp = tokio::fs::metadata(path).await.ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        if let Ok(guard) = self.last.lock() {
            if let Some((p, s, keys)) = guard.as_ref() {
                if p == path && *s == stamp && stamp.is_some() {
                    return keys.clone();
                }
            }
        }
        let keys = match crate::host::fs::read_text(path, crate::host::fs::cap::MODEL_CONF).await {
            Ok(t) => parse(&t).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(mut guard) = self.last.lock() {
            *guard = Some((path.to_path_buf(), stamp, keys.clone()));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // sha256("test")

    #[test]
    fn file_and_lookup() {
        let keys = parse(&format!("# comment\n\nlaptop client sha256:{TEST_HASH}\nops admin sha256:{}\n", "0".repeat(64))).expect("parses");
        assert_eq!(keys.len(), 2);
        assert_eq!(find(&keys, "test").map(|k| (k.name.as_str(), k.role)), Some(("laptop", Role::Client)));
        assert!(find(&keys, "tesT").is_none());
        assert!(find(&keys, "").is_none());
        for bad in ["laptop client", "laptop root sha256:00", "laptop client md5:00", &format!("a client sha256:{}", "g".repeat(64))] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("x client sha256:00").expect_err("short").contains("line 1"));
    }

    #[test]
    fn bearer() {
        assert_eq!(presented(Some("Bearer abc")), Some("abc"));
        assert_eq!(presented(Some("bearer  abc ")), Some("abc"));
        assert_eq!(presented(Some("Basic abc")), None);
        assert_eq!(presented(Some("Bearer ")), None);
        assert_eq!(presented(None), None);
    }
}
