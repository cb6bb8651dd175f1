//! Text from outside (Ollama, files, logs) on its way to a terminal, the journal or sd_notify.

pub use ollama_client::text::{clean, clip, MAX_TEXT};

/// STATUS= is one line of a newline-separated protocol: never let text break out of it.
pub fn one_line(s: &str) -> String {
    clip(&s.replace(['\n', '\r'], " "), 400)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_is_one_clean_capped_line() {
        let t = super::one_line("a\nb\r\u{1b}[2Jc");
        assert_eq!(t, "a b c");
        assert!(super::one_line(&"x".repeat(1000)).ends_with("[truncated]"));
    }
}
