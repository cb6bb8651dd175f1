//! Request bodies decoded the way Ollama's handlers see them: gin's ShouldBindJSON runs Go's
//! encoding/json (`json.NewDecoder(body).Decode(&req)`, gin/binding/json.go decodeJSON) into
//! Ollama's request structs (api/types.go). What that means, and what serde_json alone would
//! get wrong (the guard once relied on the emulator's strictness):
//!
//! - Only the first JSON value is read: text after it is never looked at (Decoder.Decode).
//! - Object keys match struct fields case-insensitively, with Go's folding (encoding/json
//!   fold.go foldName: `ſ` U+017F folds with `s`, the Kelvin sign U+212A with `k`), and a key
//!   seen later overwrites an earlier one for the same field: `{"model":"a","Model":"b"}` is b.
//! - Map-typed fields keep their keys as sent: `options` (map[string]any, matched exactly by
//!   Options.FromMap), `format` (json.RawMessage).
//! - Invalid UTF-8 inside strings becomes U+FFFD (decode.go unquoteBytes).
//! - An empty body (or only whitespace) is io.EOF, which Ollama answers "missing request body".
//!
//! The result is a serde_json Value whose struct-field keys are folded to lower case, so the
//! handlers can look fields up by their json tag.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Stands for the request struct's Go type in messages; the caller names it (api.ChatRequest).
pub const GO_TYPE: &str = "<request type>";

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// io.EOF: nothing but whitespace.
    Empty,
    /// A syntax or type error (the message is serde_json's, not Go's wording).
    Invalid(String),
}

/// Folds a key the way encoding/json compares it with a field's tag, for ASCII tags: the tags
/// of Ollama's request structs are all lower-case ASCII.
pub fn fold_key(k: &str) -> String {
    k.chars()
        .map(|c| match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Decodes a request body as Ollama's handler would receive it (see the module comment).
pub fn decode_request(body: &[u8]) -> Result<Value, DecodeError> {
    // Go replaces each invalid byte of a string with U+FFFD; invalid bytes outside strings are
    // a syntax error either way. from_utf8_lossy replaces maximal invalid sequences, which can
    // differ in the number of U+FFFD: no handler's decision depends on that.
    let text = String::from_utf8_lossy(body);
    if text.trim_matches([' ', '\t', '\r', '\n']).is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut de = serde_json::Deserializer::from_str(&text);
    // The first value only: Decoder.Decode stops there and the rest of the body is ignored.
    let v = Seed { fold: true }.deserialize(&mut de).map_err(|e| DecodeError::Invalid(go_syntax_error(&text, &e)))?;
    match v {
        Value::Object(_) => Ok(v),
        // A JSON null decodes into a struct as a no-op: every field keeps its zero value.
        Value::Null => Ok(Value::Object(Map::new())),
        other => Err(DecodeError::Invalid(format!("json: cannot unmarshal {} into Go value of type {GO_TYPE}", go_kind(&other)))),
    }
}

/// encoding/json's words for the two syntax errors clients meet most (scanner.go: "invalid
/// character 'x' looking for beginning of value"; a body cut short: io.ErrUnexpectedEOF);
/// serde_json's own message otherwise.
fn go_syntax_error(text: &str, e: &serde_json::Error) -> String {
    if e.is_eof() {
        return "unexpected EOF".into();
    }
    if e.to_string().starts_with("expected value") {
        let line = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("");
        if let Some(c) = line.chars().nth(e.column().saturating_sub(1)) {
            return format!("invalid character {c:?} looking for beginning of value");
        }
    }
    e.to_string()
}

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        _ => "object",
    }
}

/// Fields whose value is a Go map or raw JSON: their keys are kept as sent.
fn keeps_keys(field: &str) -> bool {
    matches!(field, "options" | "format" | "parameters" | "properties" | "metadata")
}

#[derive(Clone, Copy)]
struct Seed {
    fold: bool,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let key = if self.fold { fold_key(&k) } else { k };
            let v = map.next_value_seed(Seed { fold: self.fold && !keeps_keys(&key) })?;
            // Later keys overwrite earlier ones for the same field, in document order.
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_fold_and_the_last_one_wins() {
        let v = decode_request(br#"{"model":"a","Model":"b","KEEP_ALIVE":0}"#).expect("decodes");
        assert_eq!(v, json!({"model": "b", "keep_alive": 0}));
        let v = decode_request("{\"\u{212A}eep_alive\":0,\"\u{017F}tream\":false}".as_bytes()).expect("decodes");
        assert_eq!(v, json!({"keep_alive": 0, "stream": false}));
        let v = decode_request(br#"{"messages":[{"ROLE":"user","Content":"hi"}]}"#).expect("decodes");
        assert_eq!(v["messages"][0], json!({"role": "user", "content": "hi"}));
    }

    #[test]
    fn options_keep_their_keys() {
        let v = decode_request(br#"{"Options":{"NUM_CTX":1,"num_ctx":2}}"#).expect("decodes");
        assert_eq!(v, json!({"options": {"NUM_CTX": 1, "num_ctx": 2}}));
    }

    #[test]
    fn trailing_text_is_ignored_and_bad_utf8_is_replaced() {
        assert_eq!(decode_request(br#"{"model":"a"} {"model":"b"} garbage"#), Ok(json!({"model": "a"})));
        assert_eq!(decode_request(b"{\"prompt\":\"a\xffb\"}"), Ok(json!({"prompt": "a\u{FFFD}b"})));
    }

    #[test]
    fn empty_null_and_non_objects() {
        assert_eq!(decode_request(b""), Err(DecodeError::Empty));
        assert_eq!(decode_request(b" \n\t"), Err(DecodeError::Empty));
        assert_eq!(decode_request(b"null"), Ok(json!({})));
        assert!(matches!(decode_request(b"[1]"), Err(DecodeError::Invalid(m)) if m.contains("array")));
        assert_eq!(decode_request(b"{\"model\":"), Err(DecodeError::Invalid("unexpected EOF".into())));
        assert_eq!(decode_request(b"model=a"), Err(DecodeError::Invalid("invalid character 'm' looking for beginning of value".into())));
    }
}
