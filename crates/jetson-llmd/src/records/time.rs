//! Times in the shared records: typed (ordered, compared, computed with), written as RFC 3339 in
//! UTC as before, so files of older versions read the same.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }
}

impl Default for Timestamp {
    /// The epoch: "never" in a file that lacks the field.
    fn default() -> Timestamp {
        Timestamp(OffsetDateTime::UNIX_EPOCH)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0.unix_timestamp()),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(Timestamp::default());
        }
        OffsetDateTime::parse(&s, &Rfc3339).map(Timestamp).map_err(|e| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_both_ways_ordered_and_empty_is_never() {
        let a: Timestamp = serde_json::from_str("\"2026-11-30T01:40:00Z\"").expect("a");
        let b: Timestamp = serde_json::from_str("\"2026-11-30T01:40:00.5+00:00\"").expect("b");
        assert!(a < b, "ordered by time, not by text");
        assert_eq!(serde_json::to_string(&a).expect("json"), "\"2026-11-30T01:40:00Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>("\"\"").expect("empty"), Timestamp::default());
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }
}
