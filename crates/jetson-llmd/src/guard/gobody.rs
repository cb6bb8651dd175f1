//! A request body as Ollama's handlers will see it. Ollama binds bodies with gin's
//! ShouldBindJSON, which is Go's `json.NewDecoder(body).Decode(&req)` into a struct
//! (gin binding/json.go decodeJSON; api/types.go for the structs). The guard must decide on
//! that reading, not on serde's, or a client picks the reading that suits it:
//!
//! - Only the first JSON value counts; whatever follows it is never read.
//! - Struct fields match keys without regard to case, with Go's folding (encoding/json
//!   fold.go: `ſ` U+017F is an `s`, the Kelvin sign U+212A a `k`), and for one field the key
//!   that comes last wins: `{"model":"a","MODEL":"b"}` asks for b.
//! - Invalid UTF-8 in strings is read as U+FFFD.
//!
//! [`decode`] returns the top-level object with every key folded to the lower-case tag it
//! matches (Ollama's request tags are lower-case ASCII) and the last value for each, plus
//! whether the bytes already said exactly that (then they can be forwarded unchanged). Nested
//! values are kept as sent: `options` is a Go map, matched key by key exactly
//! (api/types.go Options.FromMap).

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The decoded top level.
#[derive(Debug, Clone, PartialEq)]
pub struct GoBody {
    pub fields: Map<String, Value>,
    /// The client's bytes mean exactly `fields`, key for key: valid UTF-8, keys already in
    /// their folded form and each once, nothing after the object.
    pub plain: bool,
}

/// Why a body cannot be read as Ollama would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("missing request body")]
    Empty,
    #[error("the request body is not a JSON object ({0})")]
    NotAnObject(&'static str),
    #[error("the request body is not valid JSON: {0}")]
    Syntax(String),
}

/// The key as encoding/json compares it with a lower-case ASCII tag.
pub fn fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

pub fn decode(bytes: &[u8]) -> Result<GoBody, BodyError> {
    let (text, valid_utf8) = match std::str::from_utf8(bytes) {
        Ok(t) => (std::borrow::Cow::Borrowed(t), true),
        Err(_) => (String::from_utf8_lossy(bytes), false),
    };
    let start = text.trim_start_matches([' ', '\t', '\r', '\n']);
    if start.is_empty() {
        return Err(BodyError::Empty);
    }
    let mut de = serde_json::Deserializer::from_str(start);
    let top = TopLevel.deserialize(&mut de).map_err(|e| BodyError::Syntax(e.to_string()))?;
    let (fields, folded_or_repeated) = match top {
        Top::Object(f, changed) => (f, changed),
        // `null` decodes into a struct as nothing at all: every field empty.
        Top::Null => (Map::new(), true),
        Top::Other(kind) => return Err(BodyError::NotAnObject(kind)),
    };
    // Anything but whitespace after the value is data Ollama never reads.
    let trailing = de.end().is_err();
    Ok(GoBody { fields, plain: valid_utf8 && !folded_or_repeated && !trailing })
}

enum Top {
    /// The folded fields, and whether any key was folded or repeated.
    Object(Map<String, Value>, bool),
    Null,
    Other(&'static str),
}

struct TopLevel;

impl<'de> DeserializeSeed<'de> for TopLevel {
    type Value = Top;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut fields = Map::new();
        let mut changed = false;
        while let Some(key) = map.next_key::<String>()? {
            let value: Value = map.next_value()?;
            let folded = fold(&key);
            changed |= folded != key;
            // Document order: a later key for the same field replaces the earlier value.
            changed |= fields.insert(folded, value).is_some();
        }
        Ok(Top::Object(fields, changed))
    }
    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Null)
    }
    fn visit_none<E>(self) -> Result<Top, E> {
        Ok(Top::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Top, E> {
        Ok(Top::Other("a string"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Top::Other("an array"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(b: &[u8]) -> Value {
        Value::Object(decode(b).expect("decodes").fields)
    }

    #[test]
    fn reads_as_go_does() {
        assert_eq!(fields(br#"{"Model":"other"}"#), json!({"model": "other"}));
        assert_eq!(fields(br#"{"model":"a","MODEL":"b"}"#), json!({"model": "b"}));
        assert_eq!(fields(br#"{"model":"a","KEEP_ALIVE":0}"#), json!({"model": "a", "keep_alive": 0}));
        assert_eq!(fields("{\"\u{212A}eep_alive\":0}".as_bytes()), json!({"keep_alive": 0}));
        assert_eq!(fields(br#"{"Options":{"NUM_CTX":1}}"#), json!({"options": {"NUM_CTX": 1}}));
        assert_eq!(fields(br#"{"model":"a"} {"model":"b"} trailing"#), json!({"model": "a"}));
        assert_eq!(fields(b"{\"model\":\"a\xff\"}"), json!({"model": "a\u{FFFD}"}));
        assert_eq!(fields(b"null"), json!({}));
    }

    #[test]
    fn plain_only_when_the_bytes_say_it_all() {
        assert!(decode(br#" {"model":"a","options":{"NUM_CTX":1}} "#).expect("ok").plain);
        for b in [&br#"{"Model":"a"}"#[..], br#"{"model":"a","model":"b"}"#, br#"{"model":"a"}x"#, b"{\"model\":\"\xff\"}", b"null"] {
            assert!(!decode(b).expect("ok").plain, "{}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(decode(b""), Err(BodyError::Empty));
        assert_eq!(decode(b" \r\n"), Err(BodyError::Empty));
        assert_eq!(decode(b"[1,2]"), Err(BodyError::NotAnObject("an array")));
        assert_eq!(decode(b"\"x\""), Err(BodyError::NotAnObject("a string")));
        assert!(matches!(decode(b"{\"model\":"), Err(BodyError::Syntax(_))));
        assert!(matches!(decode(b"model=a"), Err(BodyError::Syntax(_))));
    }
}
