//! Ollama's GitHub releases: versions, asset names, the checksum list.

use std::fmt;

/// The Ollama release `install` picks without `--version`: the one fake-ollama is checked
/// against, and older than 0.32.2, after which gemma4 e2b/e4b were reported to need too much
/// memory on an Orin Nano (ollama issues 17787, 18396). Move it only after a canary run.
pub const DEFAULT_VERSION: &str = "0.30.6";
pub const RELEASES: &str = "https://github.com/ollama/ollama/releases/download";
pub const SUMS: &str = "sha256sum.txt";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// "-rc2" and the like, kept for display and asset URLs.
    pub pre: String,
}

impl Version {
    /// "0.30.6", "v0.30.6", "0.33.0-rc2".
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().strip_prefix('v').unwrap_or(s.trim());
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, p),
            None => (s, ""),
        };
        if !pre.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') || pre.len() > 20 {
            return None;
        }
        let mut it = core.split('.').map(|n| if n.len() <= 6 && n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() { n.parse().ok() } else { None });
        let v = Version { major: it.next()??, minor: it.next()??, patch: it.next()??, pre: pre.to_string() };
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// `.tar.zst` since 0.14.0; `.tgz` before.
    pub fn extension(&self) -> &'static str {
        if (self.major, self.minor) >= (0, 14) {
            ".tar.zst"
        } else {
            ".tgz"
        }
    }

    pub fn base_asset(&self) -> String {
        format!("ollama-linux-arm64{}", self.extension())
    }

    pub fn jetpack_asset(&self) -> String {
        format!("ollama-linux-arm64-jetpack6{}", self.extension())
    }

    pub fn url(&self, base: &str, asset: &str) -> String {
        format!("{}/v{self}/{asset}", base.trim_end_matches('/'))
    }
}

impl Ord for Version {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // A pre-release sorts before its release: 0.33.0-rc2 < 0.33.0.
        (self.major, self.minor, self.patch, self.pre.is_empty(), &self.pre).cmp(&(o.major, o.minor, o.patch, o.pre.is_empty(), &o.pre))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

/// `sha256sum.txt`: lines `<64 hex>  ./<file>` (also `*file` and without `./`).
pub fn parse_sums(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (hash, name) = l.trim().split_once(char::is_whitespace)?;
            let name = name.trim().trim_start_matches('*').trim_start_matches("./");
            let ok = hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit());
            ok.then(|| (hash.to_ascii_lowercase(), name.to_string()))
        })
        .collect()
}

pub fn sum_for<'a>(sums: &'a [(String, String)], asset: &str) -> Option<&'a str> {
    sums.iter().find(|(_, n)| n == asset).map(|(h, _)| h.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_assets() {
        let v = Version::parse("v0.30.6").expect("v");
        assert_eq!(v.to_string(), "0.30.6");
        assert_eq!(v.base_asset(), "ollama-linux-arm64.tar.zst");
        assert_eq!(v.url(RELEASES, &v.jetpack_asset()), "https://github.com/ollama/ollama/releases/download/v0.30.6/ollama-linux-arm64-jetpack6.tar.zst");
        assert_eq!(Version::parse("0.13.5").expect("v").base_asset(), "ollama-linux-arm64.tgz");
        assert_eq!(Version::parse("0.33.0-rc2").expect("v").to_string(), "0.33.0-rc2");
        assert!(Version::parse("0.33.0-rc2") < Version::parse("0.33.0"));
        for bad in ["", "0.30", "0.30.6.1", "../x", "0.30.6-a/b", "0.3a.1", "1.2.3 ; rm"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn checksum_lines() {
        let h = "a".repeat(64);
        let s = parse_sums(&format!("{h}  ./ollama-linux-arm64.tar.zst\n{}  *other.tgz\ngarbage\n\nzz  ./x\n", "B".repeat(64)));
        assert_eq!(sum_for(&s, "ollama-linux-arm64.tar.zst"), Some(h.as_str()));
        assert_eq!(sum_for(&s, "other.tgz"), Some("b".repeat(64).as_str()));
        assert_eq!(s.len(), 2);
    }
}
