//! Lyrics support for the editor: the section tags the model knows and the validation shown
//! under the lyrics field.
//!
//! Validation lives in `songgen_protocol::lyrics` (shared with the engine and the CLI); [`check`]
//! is the single place the plugin calls it.

/// Section tags offered by the editor's insert buttons, grouped as the buttons show them.
pub const VOCAL_TAGS: [&str; 3] = ["[verse]", "[chorus]", "[bridge]"];
/// Instrumental sections (no text allowed), each in three lengths.
pub const INSTRUMENTAL_TAGS: [(&str, [&str; 3]); 3] = [
    ("intro", ["[intro-short]", "[intro-medium]", "[intro-long]"]),
    ("inst", ["[inst-short]", "[inst-medium]", "[inst-long]"]),
    ("outro", ["[outro-short]", "[outro-medium]", "[outro-long]"]),
];

/// One message for the user, tied to a 1-based line of the lyrics.
pub use songgen_protocol::lyrics::LyricsIssue as Issue;

/// The outcome of checking lyrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Check {
    /// Problems that block generation.
    pub errors: Vec<Issue>,
    /// Things the engine fixes by itself.
    pub warnings: Vec<Issue>,
}

impl Check {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks lyrics with the engine's lyric checker (the same one `songgen generate` and the engine
/// service apply to every job).
pub fn check(lyrics: &str) -> Check {
    match songgen_protocol::lyrics::normalize(lyrics) {
        Ok(n) => Check {
            errors: Vec::new(),
            warnings: n.warnings,
        },
        Err(e) => Check {
            errors: e.issues,
            warnings: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_lyrics() {
        let c = check("[intro-short]\n\n[verse]\nhello there\nsecond line\n\n[chorus]\nla la\n");
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn reports_each_problem_with_its_line() {
        let c = check("[verse]\nfine\n\n[inst-short]\nnot allowed here\n");
        assert!(!c.is_ok(), "{c:?}");
        assert!(
            c.errors
                .iter()
                .any(|i| i.line == 4 && i.message.contains("[inst-short]")),
            "{c:?}"
        );
    }
}
