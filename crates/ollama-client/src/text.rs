//! Text that came from outside (Ollama's answers, log lines, files) made safe for a terminal, the
//! journal and sd_notify: control characters and ANSI escape sequences removed, length capped.

/// Longest text kept from one outside string (an error message, a status line).
pub const MAX_TEXT: usize = 2000;

/// Removes control characters (tab excepted) and ANSI escape sequences.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_TEXT * 4));
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // CSI (ESC [ ... final) and other two-byte escapes; OSC (ESC ] ... BEL/ST) too.
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    while let Some(n) = chars.next() {
                        if n == '\u{7}' || n == '\u{9c}' {
                            break;
                        }
                        if n == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\t' => out.push(c),
            // Multi-line texts (llama-server's captured error lines) stay readable on one line.
            '\n' => out.push(' '),
            c if c.is_control() => {}
            // Bidi overrides can reorder what a reader sees on a terminal.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {}
            c => out.push(c),
        }
    }
    out
}

/// [`clean`], then at most `max` characters, with a marker when cut.
pub fn clip(s: &str, max: usize) -> String {
    let c = clean(s);
    if c.chars().count() <= max {
        return c;
    }
    let mut out: String = c.chars().take(max).collect();
    out.push_str("…[truncated]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_escapes_and_controls() {
        assert_eq!(clean("a\u{1b}[2Jb\u{1b}[31mc\u{7}d\r\ne\tf"), "abcd e\tf");
        assert_eq!(clean("x\u{1b}]0;title\u{7}y"), "xy");
        assert_eq!(clean("x\u{1b}]8;;http://e\u{1b}\\y"), "xy");
        assert_eq!(clean("\u{202e}evil"), "evil");
        assert_eq!(clean("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn clip_marks_the_cut() {
        assert_eq!(clip("abcdef", 3), "abc…[truncated]");
        assert_eq!(clip("abc", 3), "abc");
    }

    proptest::proptest! {
        #[test]
        fn never_leaves_controls(s in ".*") {
            let c = clean(&s);
            proptest::prop_assert!(!c.chars().any(|ch| ch.is_control() && ch != '\t'));
        }
    }
}
