//! Lyrics support for the editor: the section tags the model knows and the validation shown
//! under the lyrics field.
//!
//! Validation belongs to the engine (`songgen_engine::lyrics`, shared with the CLI); [`check`]
//! is the single place the plugin calls it, so the editor never depends on its details.

/// Section tags offered by the editor's insert buttons, grouped as the buttons show them.
pub const VOCAL_TAGS: [&str; 3] = ["[verse]", "[chorus]", "[bridge]"];
/// Instrumental sections (no text allowed), each in three lengths.
pub const INSTRUMENTAL_TAGS: [(&str, [&str; 3]); 3] = [
    ("intro", ["[intro-short]", "[intro-medium]", "[intro-long]"]),
    ("inst", ["[inst-short]", "[inst-medium]", "[inst-long]"]),
    ("outro", ["[outro-short]", "[outro-medium]", "[outro-long]"]),
];

/// One message for the user, tied to a 1-based line of the lyrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub line: usize,
    pub message: String,
    pub fix: String,
}

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

/// Checks lyrics with the engine's lyric checker.
pub fn check(lyrics: &str) -> Check {
    fallback::check(lyrics)
}

/// A minimal structural check used until `songgen_engine::lyrics` is available in this branch:
/// unknown tags, text before the first tag, text in instrumental sections, empty vocal sections.
mod fallback {
    use super::{Check, Issue, INSTRUMENTAL_TAGS, VOCAL_TAGS};

    fn known(tag: &str) -> Option<bool> {
        if VOCAL_TAGS.contains(&tag) || tag == "[silence]" {
            return Some(tag != "[silence]");
        }
        INSTRUMENTAL_TAGS
            .iter()
            .any(|(_, tags)| tags.contains(&tag))
            .then_some(false)
    }

    pub fn check(lyrics: &str) -> Check {
        let mut out = Check::default();
        // (line of the tag, vocal?, has text)
        let mut section: Option<(usize, &str, bool, bool)> = None;
        let close = |s: Option<(usize, &str, bool, bool)>, out: &mut Check| {
            if let Some((line, tag, true, false)) = s {
                out.errors.push(Issue {
                    line,
                    message: format!("{tag} has no lyrics"),
                    fix: "add sung lines or use an instrumental tag".into(),
                });
            }
        };
        for (i, raw) in lyrics.lines().enumerate() {
            let line = i + 1;
            let text = raw.trim();
            if text.is_empty() {
                continue;
            }
            if text.starts_with('[') {
                let end = text.find(']').map(|e| e + 1).unwrap_or(text.len());
                let tag = text[..end].to_lowercase();
                match known(&tag) {
                    Some(vocal) => {
                        close(section.take(), &mut out);
                        let rest = text[end..].trim();
                        section = Some((line, &text[..end], vocal, !rest.is_empty()));
                        if !vocal && !rest.is_empty() {
                            out.errors.push(Issue {
                                line,
                                message: format!("{tag} is instrumental but has text"),
                                fix: "move the text into a [verse], [chorus] or [bridge]".into(),
                            });
                        }
                    }
                    None => out.errors.push(Issue {
                        line,
                        message: format!("unknown section tag {}", &text[..end]),
                        fix: "use one of the insert buttons' tags".into(),
                    }),
                }
                continue;
            }
            match &mut section {
                None => out.errors.push(Issue {
                    line,
                    message: "text before the first section tag".into(),
                    fix: "start the lyrics with a tag such as [verse]".into(),
                }),
                Some((_, tag, false, _)) => out.errors.push(Issue {
                    line,
                    message: format!("{tag} is instrumental but has text"),
                    fix: "move the text into a [verse], [chorus] or [bridge]".into(),
                }),
                Some((_, _, true, has_text)) => *has_text = true,
            }
        }
        close(section, &mut out);
        if !lyrics.lines().any(|l| l.trim_start().starts_with('[')) {
            out.errors.push(Issue {
                line: 1,
                message: "no section tags".into(),
                fix: "insert at least one [verse] or [chorus] with lyrics".into(),
            });
        }
        out
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
        let c = check("oops\n[verse]\n\n[inst-short]\nnot allowed\n[pre-chorus]\n");
        let lines: Vec<usize> = c.errors.iter().map(|i| i.line).collect();
        assert!(lines.contains(&1), "{c:?}");
        assert!(lines.contains(&2), "{c:?}");
        assert!(lines.contains(&5), "{c:?}");
        assert!(lines.contains(&6), "{c:?}");
    }
}
