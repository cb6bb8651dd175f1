//! /etc/ollama/model.conf: one `OLLAMA_MODEL=<name>` line, read by our preload/keepalive and by
//! systemd (EnvironmentFile=) alike.
//!
//! The parser follows systemd.exec(5) EnvironmentFile rules (comment lines start with `#` or `;`,
//! `KEY=value`, whitespace around key and value trimmed, `\r` ends a line like `\n`) and is
//! stricter wherever systemd and a shell could read the file differently: a BOM, non-UTF-8 bytes,
//! backslash continuations and escapes, unbalanced or inner quotes, and `export` are errors with
//! a line number instead of being silently reinterpreted. The last duplicate wins, with a warning.

use super::model_name::ModelName;

pub const KEY: &str = "OLLAMA_MODEL";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ConfError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConf {
    pub model: ModelName,
    /// Line the winning OLLAMA_MODEL came from.
    pub line: usize,
    pub warnings: Vec<String>,
}

/// Parses an EnvironmentFile into entries (all keys), or every error found.
pub fn parse_env(bytes: &[u8]) -> Result<Vec<Entry>, Vec<ConfError>> {
    let mut errors = Vec::new();
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        errors.push(ConfError { line: 1, message: "the file starts with a UTF-8 byte order mark (BOM); save it without one".into() });
    }
    let mut entries = Vec::new();
    for (idx, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = idx + 1;
        let raw = if idx == 0 && raw.starts_with(&[0xEF, 0xBB, 0xBF]) { &raw[3..] } else { raw };
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfError { line: line_no, message: format!("not valid UTF-8 (byte {} of the line); save the file as UTF-8", e.valid_up_to() + 1) });
                continue;
            }
        };
        // systemd treats '\r' as a line end too, so CRLF files read the same; a lone '\r' inside
        // a line would split it, which a human reading the file would not expect.
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.contains('\r') {
            errors.push(ConfError { line: line_no, message: "contains a carriage return in the middle of the line".into() });
            continue;
        }
        let t = text.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if t.ends_with('\\') {
            errors.push(ConfError { line: line_no, message: "ends with a backslash (line continuation); put the whole value on one line".into() });
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            errors.push(ConfError { line: line_no, message: format!("expected KEY=value, found {:?}", shorten(t)) });
            continue;
        };
        let key = k.trim();
        if let Some(rest) = key.strip_prefix("export ") {
            errors.push(ConfError { line: line_no, message: format!("`export` is shell syntax that systemd does not accept; write `{}=...`", rest.trim()) });
            continue;
        }
        if !valid_key(key) {
            errors.push(ConfError { line: line_no, message: format!("{key:?} is not a valid variable name (letters, digits and _; not starting with a digit)") });
            continue;
        }
        match unquote(v.trim()) {
            Ok(value) => entries.push(Entry { key: key.to_string(), value, line: line_no }),
            Err(m) => errors.push(ConfError { line: line_no, message: m }),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

fn valid_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Accepts a bare value or one wholly wrapped in one pair of quotes with nothing special inside.
fn unquote(v: &str) -> Result<String, String> {
    let special = |s: &str| s.contains(['\\', '"', '\'', '`', '$']);
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q) {
            return match inner.strip_suffix(q) {
                Some(inner) if !special(inner) => Ok(inner.to_string()),
                Some(_) => Err("quotes, backslashes or `$` inside a quoted value are read differently by systemd and shells; use a bare value".into()),
                None => Err(format!("unbalanced {q} quote; use a bare value like OLLAMA_MODEL=gemma4:e2b-8k")),
            };
        }
    }
    if special(v) {
        return Err("quotes, backslashes, backticks or `$` in a value are read differently by systemd and shells; use a bare value".into());
    }
    Ok(v.to_string())
}

fn shorten(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Parses model.conf and validates OLLAMA_MODEL.
pub fn parse(bytes: &[u8]) -> Result<ModelConf, Vec<ConfError>> {
    let entries = parse_env(bytes)?;
    let mut warnings = Vec::new();
    let hits: Vec<&Entry> = entries.iter().filter(|e| e.key == KEY).collect();
    let Some(last) = hits.last() else {
        // systemd's names are case-sensitive: `ollama_model=` is another variable. Point at
        // that line; otherwise at the file's last line (a final newline starts no new line).
        if let Some(e) = entries.iter().find(|e| e.key.eq_ignore_ascii_case(KEY)) {
            return Err(vec![ConfError { line: e.line, message: format!("{} is not {KEY}: variable names are case-sensitive; write {KEY}={}", e.key, shorten(&e.value)) }]);
        }
        let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let line = text.split(|&b| b == b'\n').count().max(1);
        return Err(vec![ConfError { line, message: format!("no {KEY}= line; add one, e.g. {KEY}=gemma4:e2b-8k") }]);
    };
    if hits.len() > 1 {
        let lines: Vec<String> = hits.iter().map(|e| e.line.to_string()).collect();
        warnings.push(format!("{KEY} is set on lines {}; the last one (line {}) wins", lines.join(", "), last.line));
    }
    for e in &entries {
        if e.key != KEY && !e.key.starts_with("OLLAMA_") {
            warnings.push(format!("line {}: {} is not used by jetson-llmd", e.line, e.key));
        }
    }
    if last.value.is_empty() {
        return Err(vec![ConfError { line: last.line, message: format!("{KEY} is empty; name the model to keep warm, e.g. {KEY}=gemma4:e2b-8k") }]);
    }
    let model = ModelName::parse(&last.value).map_err(|e| vec![ConfError { line: last.line, message: e.to_string() }])?;
    Ok(ModelConf { model, line: last.line, warnings })
}

/// The file with OLLAMA_MODEL set to `model`: the line that wins today is replaced in place
/// (comments, other keys and line endings kept), or one is appended.
pub fn with_model(bytes: &[u8], model: &ModelName) -> Vec<u8> {
    // The last `OLLAMA_MODEL =` line wins, also in a file that does not parse today (then the
    // edit is what repairs it).
    let is_key_line = |raw: &[u8]| {
        let t = String::from_utf8_lossy(raw);
        t.trim_start().strip_prefix(KEY).is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let winner = bytes.split(|&b| b == b'\n').enumerate().filter(|(_, l)| is_key_line(l)).map(|(i, _)| i + 1).last();
    let new_line = format!("{KEY}={model}");
    let mut out = Vec::with_capacity(bytes.len() + new_line.len() + 1);
    let mut replaced = false;
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    for (i, raw) in lines.iter().enumerate() {
        if winner == Some(i + 1) {
            out.extend_from_slice(new_line.as_bytes());
            if raw.ends_with(b"\r") {
                out.push(b'\r');
            }
            replaced = true;
        } else {
            out.extend_from_slice(raw);
        }
        if i + 1 < lines.len() {
            out.push(b'\n');
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(new_line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Renders errors as `path:line: message` lines, each clipped: a message may quote the line,
/// and a 10,000-character line must not flood the terminal or the journal.
pub fn describe(path: &std::path::Path, errors: &[ConfError]) -> String {
    errors.iter().map(|e| crate::text::clip(&format!("{}:{}: {}", path.display(), e.line, e.message), 300)).collect::<Vec<_>>().join("\n")
}

/// Why model.conf cannot be used; shown as `path:line: message` (one per line).
#[derive(Debug, thiserror::Error)]
pub enum ModelConfError {
    #[error("{}: not found; create it with one line: {KEY}=gemma4:e2b-8k", .path.display())]
    NotFound { path: std::path::PathBuf },
    #[error(transparent)]
    Read(crate::host::fs::ReadError),
    #[error("{}", describe(.path, .errors))]
    Invalid { path: std::path::PathBuf, errors: Vec<ConfError> },
}

/// Reads the file (a regular file, at most 64 KiB, never blocking on a FIFO) and parses it.
pub async fn read(path: &std::path::Path) -> Result<ModelConf, ModelConfError> {
    let bytes = read_bytes(path).await?;
    from_bytes(path, &bytes)
}

/// What the bytes of model.conf say (the file's path for the messages).
pub fn from_bytes(path: &std::path::Path, bytes: &[u8]) -> Result<ModelConf, ModelConfError> {
    parse(bytes).map_err(|errors| ModelConfError::Invalid { path: path.to_path_buf(), errors })
}

/// The raw bytes, for noticing a change.
pub async fn read_bytes(path: &std::path::Path) -> Result<Vec<u8>, ModelConfError> {
    crate::host::fs::read_capped(path, crate::host::fs::cap::MODEL_CONF).await.map_err(|e| if e.is_not_found() { ModelConfError::NotFound { path: path.to_path_buf() } } else { ModelConfError::Read(e) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model(s: &str) -> Result<String, Vec<ConfError>> {
        parse(s.as_bytes()).map(|c| c.model.to_string())
    }

    fn first_err(s: &[u8]) -> ConfError {
        parse(s).expect_err("must fail")[0].clone()
    }

    #[test]
    fn with_model_keeps_everything_else() {
        let m = ModelName::parse("gemma3:4b").expect("m");
        let before = b"# the one model\r\nOLLAMA_MODEL=old:1b\r\n# after\r\n";
        let after = with_model(before, &m);
        assert_eq!(after, b"# the one model\r\nOLLAMA_MODEL=gemma3:4b\r\n# after\r\n".to_vec());
        assert_eq!(with_model(b"", &m), b"OLLAMA_MODEL=gemma3:4b\n".to_vec());
        assert_eq!(with_model(b"# c", &m), b"# c\nOLLAMA_MODEL=gemma3:4b\n".to_vec());
        let dup = with_model(b"OLLAMA_MODEL=a\nOLLAMA_MODEL=b\n", &m);
        assert_eq!(dup, b"OLLAMA_MODEL=a\nOLLAMA_MODEL=gemma3:4b\n".to_vec(), "the winning (last) line");
        assert_eq!(parse(&with_model(b"OLLAMA_MODEL=\"bad", &m)).expect("valid").model, m, "an invalid file still ends up naming the model");
    }

    proptest! {
        #[test]
        fn with_model_always_names_the_model(text in "(#[a-z ]{0,10}\n|OLLAMA_MODEL=[a-z0-9:]{1,12}\n|X=y\n){0,6}") {
            let m = ModelName::parse("llama3.2:3b").expect("m");
            let out = with_model(text.as_bytes(), &m);
            prop_assert_eq!(parse(&out).expect("valid").model, m);
            let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("OLLAMA_MODEL")).collect();
            let out_text = String::from_utf8(out).expect("utf8");
            let out_kept: Vec<&str> = out_text.lines().filter(|l| !l.starts_with("OLLAMA_MODEL")).collect();
            prop_assert_eq!(kept, out_kept);
        }
    }

    #[test]
    fn plain_and_commented() {
        assert_eq!(model("OLLAMA_MODEL=gemma4:e2b-8k\n").expect("ok"), "gemma4:e2b-8k");
        assert_eq!(model("# the model\n; also a comment\n\n  OLLAMA_MODEL = gemma4:e2b-8k  \n").expect("ok"), "gemma4:e2b-8k");
        assert_eq!(model("OLLAMA_MODEL=gemma4:e2b-8k").expect("no trailing newline"), "gemma4:e2b-8k");
    }

    #[test]
    fn crlf_is_fine() {
        assert_eq!(model("# c\r\nOLLAMA_MODEL=gemma4:e2b-8k\r\n").expect("ok"), "gemma4:e2b-8k");
    }

    #[test]
    fn simple_quotes_are_accepted() {
        assert_eq!(model("OLLAMA_MODEL=\"gemma4:e2b-8k\"").expect("ok"), "gemma4:e2b-8k");
        assert_eq!(model("OLLAMA_MODEL='gemma4:e2b-8k'").expect("ok"), "gemma4:e2b-8k");
    }

    #[test]
    fn errors_carry_line_numbers() {
        assert_eq!(first_err(b"").line, 1);
        assert!(first_err(b"").message.contains("no OLLAMA_MODEL"));
        assert!(first_err(b"# only a comment\n").message.contains("no OLLAMA_MODEL"));
        // Issue 30: the line a one-line file has, and the case that is wrong.
        let e = first_err(b"ollama_model=x\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("case-sensitive") && e.message.contains("OLLAMA_MODEL=x"), "{}", e.message);
        assert_eq!(first_err(b"# a\n# b\n").line, 2, "the last line, not the one after the final newline");
        let e = first_err(b"# x\nOLLAMA_MODEL=\n");
        assert_eq!((e.line, e.message.contains("empty")), (2, true));
        let e = first_err(b"\xEF\xBB\xBFOLLAMA_MODEL=gemma4:e2b-8k\n");
        assert!(e.message.contains("byte order mark"));
        let e = first_err(b"# x\n# y\nOLLAMA_MODEL=gemma\xff\n");
        assert_eq!((e.line, e.message.contains("UTF-8")), (3, true));
        let e = first_err(b"OLLAMA_MODEL=gemma4:e2b-8k; reboot\n");
        assert!(e.message.contains("not a valid Ollama model name"), "{e}");
        let e = first_err(b"OLLAMA_MODEL=$(reboot)\n");
        assert!(e.message.contains("bare value"), "{e}");
        let e = first_err(b"OLLAMA_MODEL=\"gemma4\n");
        assert!(e.message.contains("unbalanced"), "{e}");
        let e = first_err(b"OLLAMA_MODEL=gemma4:e2b-8k # keep warm\n");
        assert!(e.message.contains("not a valid"), "{e}");
        let e = first_err(b"export OLLAMA_MODEL=gemma4\n");
        assert!(e.message.contains("export"), "{e}");
        let e = first_err(b"OLLAMA_MODEL=gemma4\\\n:e2b\n");
        assert!(e.message.contains("continuation"), "{e}");
        let e = first_err(b"gemma4:e2b-8k\n");
        assert!(e.message.contains("KEY=value"), "{e}");
        let e = first_err(b"OLLAMA MODEL=x\n");
        assert!(e.message.contains("variable name"), "{e}");
    }

    #[test]
    fn last_duplicate_wins_with_warning() {
        let c = parse(b"OLLAMA_MODEL=gemma3:4b-8k\nOLLAMA_MODEL=gemma4:e2b-8k\n").expect("ok");
        assert_eq!((c.model.as_str(), c.line), ("gemma4:e2b-8k", 2));
        assert!(c.warnings[0].contains("lines 1, 2"));
    }

    #[test]
    fn describe_names_file_and_line() {
        let errs = parse(b"OLLAMA_MODEL=\n").expect_err("fails");
        let s = describe(std::path::Path::new("/etc/ollama/model.conf"), &errs);
        assert!(s.starts_with("/etc/ollama/model.conf:1: "), "{s}");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_accepted_value_is_a_valid_model_name(s in "[ -~]{0,40}") {
            if let Ok(c) = parse(format!("OLLAMA_MODEL={s}\n").as_bytes()) {
                prop_assert!(ModelName::parse(c.model.as_str()).is_ok());
                prop_assert!(!c.model.as_str().contains([' ', '$', ';', '`', '"', '\'']));
            }
        }
    }
}
