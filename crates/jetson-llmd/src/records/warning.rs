//! The warnings in state.json, typed by what they are about: the supervisor replaces or clears
//! one kind at a time, and readers (`switch`, `status`) find them by kind and model, never by
//! the first words of their text.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningKind {
    /// model.conf is invalid; the model in use stays.
    ModelConf,
    /// model.conf names a model that was refused (does not fit), could not be made present or
    /// could not be loaded; `model` says which. The model in use stays.
    ModelRefused,
    /// config.toml is invalid or a change needs a restart.
    ConfigToml,
    /// The GPU verdict stands but something is to fix (libraries not the JetPack 6 ones).
    Gpu,
    /// Another model was loaded before ours at boot and was unloaded.
    AtBoot,
    /// The keepalive did not start.
    Keepalive,
    /// The board's own warnings (swap-ins, memory under the reserve, heat, fragmentation).
    Board,
    /// Re-warms keep happening: the eviction back-off holds back.
    Eviction,
    /// A kind written by a newer jetson-llmd (or a plain string from an older one).
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct Warning {
    pub kind: WarningKind,
    /// The model it is about, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub text: String,
}

/// state.json of jetson-llmd before the kinds held plain strings: still read.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Typed {
        kind: WarningKind,
        #[serde(default)]
        model: Option<String>,
        text: String,
    },
    Plain(String),
}

impl From<Stored> for Warning {
    fn from(s: Stored) -> Warning {
        match s {
            Stored::Typed { kind, model, text } => Warning { kind, model, text },
            Stored::Plain(text) => Warning { kind: WarningKind::Other, model: None, text },
        }
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Warning {
    pub fn new(kind: WarningKind, text: impl Into<String>) -> Warning {
        Warning { kind, model: None, text: text.into() }
    }

    pub fn about(kind: WarningKind, model: &str, text: impl Into<String>) -> Warning {
        Warning { kind, model: Some(model.to_string()), text: text.into() }
    }
}

/// The warnings of one state, replaced a kind at a time.
pub trait Warnings {
    /// Drops every warning of these kinds.
    fn drop_kinds(&mut self, kinds: &[WarningKind]);
    /// The warnings of `kind` are now these (none clears it).
    fn set_kind(&mut self, kind: WarningKind, now: impl IntoIterator<Item = Warning>);
    fn of_kind(&self, kind: WarningKind) -> impl Iterator<Item = &Warning>;
}

impl Warnings for Vec<Warning> {
    fn drop_kinds(&mut self, kinds: &[WarningKind]) {
        self.retain(|w| !kinds.contains(&w.kind));
    }

    fn set_kind(&mut self, kind: WarningKind, now: impl IntoIterator<Item = Warning>) {
        self.drop_kinds(&[kind]);
        self.extend(now.into_iter().map(|mut w| {
            w.kind = kind;
            w
        }));
    }

    fn of_kind(&self, kind: WarningKind) -> impl Iterator<Item = &Warning> {
        self.iter().filter(move |w| w.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_both_ways_and_old_plain_strings_still_read() {
        let w = Warning::about(WarningKind::ModelRefused, "typo:model", "model.conf names typo:model, which could not be made ready");
        let j = serde_json::to_string(&w).expect("json");
        assert_eq!(j, r#"{"kind":"model-refused","model":"typo:model","text":"model.conf names typo:model, which could not be made ready"}"#);
        assert_eq!(serde_json::from_str::<Warning>(&j).expect("back"), w);
        let old: Vec<Warning> = serde_json::from_str(r#"["board: 80 pages swapped in", {"kind":"from-the-future","text":"x"}]"#).expect("old");
        assert_eq!((old[0].kind, old[0].text.as_str()), (WarningKind::Other, "board: 80 pages swapped in"));
        assert_eq!(old[1].kind, WarningKind::Other);
        let mut v = vec![Warning::new(WarningKind::Board, "a"), Warning::new(WarningKind::Gpu, "g"), Warning::new(WarningKind::Board, "b")];
        v.set_kind(WarningKind::Board, [Warning::new(WarningKind::Other, "c")]);
        assert_eq!(v.iter().map(|w| (w.kind, w.text.as_str())).collect::<Vec<_>>(), [(WarningKind::Gpu, "g"), (WarningKind::Board, "c")]);
        v.drop_kinds(&[WarningKind::Gpu]);
        assert_eq!(v.of_kind(WarningKind::Board).count(), 1);
    }
}
