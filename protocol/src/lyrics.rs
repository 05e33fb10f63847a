//! Lyrics validation and normalisation into the format the model was trained on.
//!
//! The model reads one string of sections, `[tag] sentence. sentence ; [tag] ...`: lowercase
//! structure tags from a fixed vocabulary of 13 (each one is a single token of the lyrics
//! tokenizer, so `[Verse]` or `[pre-chorus]` are plain text to the model), sections joined by
//! `" ; "`, sentences by `.`, and no text in instrumental sections. Users type lyrics the way
//! they write them (one line per sentence, blank lines between sections, any punctuation), so
//! [`normalize`] accepts both forms, fixes what it can (reporting a warning with the line) and
//! rejects what it cannot guess (reporting every problem with its line and a suggested fix).
//!
//! (About 490 lines of code plus tests: the checker's rules and their messages belong together.)

use std::fmt;

/// How long an intro, outro or instrumental section should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionLength {
    Short,
    Medium,
    Long,
}

/// A structure tag of the model's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    Verse,
    Chorus,
    Bridge,
    Intro(SectionLength),
    Outro(SectionLength),
    Inst(SectionLength),
    Silence,
}

/// The model's 13 structure tags with their kinds, in the order of the reference's
/// `conf/vocab.yaml` (their token ids follow it): the one list every other spelling derives from.
pub const SECTIONS: [(&str, SectionKind); 13] = {
    use SectionKind::*;
    use SectionLength::*;
    [
        ("[verse]", Verse),
        ("[chorus]", Chorus),
        ("[bridge]", Bridge),
        ("[intro-short]", Intro(Short)),
        ("[intro-medium]", Intro(Medium)),
        ("[intro-long]", Intro(Long)),
        ("[outro-short]", Outro(Short)),
        ("[outro-medium]", Outro(Medium)),
        ("[outro-long]", Outro(Long)),
        ("[inst-short]", Inst(Short)),
        ("[inst-medium]", Inst(Medium)),
        ("[inst-long]", Inst(Long)),
        ("[silence]", Silence),
    ]
};

/// The 13 tags alone, in vocabulary order.
pub const SECTION_TAGS: [&str; 13] = {
    let mut tags = [""; 13];
    let mut i = 0;
    while i < 13 {
        tags[i] = SECTIONS[i].0;
        i += 1;
    }
    tags
};

impl SectionKind {
    /// The tag as the model's tokenizer spells it.
    pub fn tag(self) -> &'static str {
        SECTIONS
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(t, _)| *t)
            .expect("every kind has a tag")
    }

    /// Parses an exact tag (`[verse]`, with brackets).
    pub fn from_tag(tag: &str) -> Option<Self> {
        SECTIONS.iter().find(|(t, _)| *t == tag).map(|(_, k)| *k)
    }

    /// Verse, chorus and bridge are sung; every other section is instrumental and takes no text.
    pub fn is_vocal(self) -> bool {
        matches!(
            self,
            SectionKind::Verse | SectionKind::Chorus | SectionKind::Bridge
        )
    }
}

/// One problem in the lyrics, tied to a line of the input (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LyricsIssue {
    pub line: usize,
    pub message: String,
    /// What to change, in words the user can act on.
    pub fix: String,
}

impl fmt::Display for LyricsIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {} ({})", self.line, self.message, self.fix)
    }
}

/// Lyrics the model cannot take as they are; lists every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LyricsError {
    pub issues: Vec<LyricsIssue>,
}

impl fmt::Display for LyricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid lyrics:")?;
        for issue in &self.issues {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

/// One section after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionKind,
    /// Sentences without their final punctuation.
    pub sentences: Vec<String>,
    /// Input line of the tag.
    pub line: usize,
}

/// Language of the lyrics, for choosing an auto-prompt subset and for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Zh,
    En,
    Ja,
    Ko,
    /// Latin-script text that is not recognisably English, or a mix.
    Other,
}

impl Language {
    /// The auto-prompt library only has `zh` and `en` subsets; like the reference, everything that
    /// is not Chinese uses the English one.
    pub fn auto_prompt_subset(self) -> &'static str {
        match self {
            Language::Zh => "zh",
            _ => "en",
        }
    }
}

/// Lyrics ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The model string: `[tag] s1. s2 ; [tag] ...`.
    pub text: String,
    pub sections: Vec<Section>,
    /// Things that were fixed automatically.
    pub warnings: Vec<LyricsIssue>,
    pub language: Language,
}

/// Validates `input` (either the model's one-line format or free text with one sentence per line
/// and blank lines between sections) and returns the model string.
pub fn normalize(input: &str) -> Result<Normalized, LyricsError> {
    let mut parser = Parser::default();
    for (i, line) in input.lines().enumerate() {
        parser.line(i + 1, line);
    }
    parser.finish(input)
}

#[derive(Default)]
struct Parser {
    sections: Vec<Section>,
    errors: Vec<LyricsIssue>,
    warnings: Vec<LyricsIssue>,
    /// The current sentence being assembled (sentences may continue across `[` checks only).
    pending: String,
    pending_line: usize,
    /// Text seen before any tag (reported once).
    orphan_reported: bool,
}

impl Parser {
    fn line(&mut self, no: usize, line: &str) {
        let mut rest = line;
        while !rest.is_empty() {
            let (text, after) = match rest.find(['[', ';']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            self.text(no, text);
            if after.is_empty() {
                break;
            }
            if let Some(after_sep) = after.strip_prefix(';') {
                self.end_sentence();
                // `;` separates sections; right before a tag (or at the end) it is redundant.
                let next = after_sep.trim_start();
                if !next.is_empty() && !next.starts_with('[') {
                    self.warnings.push(LyricsIssue {
                        line: no,
                        message: "`;` separates sections but no [tag] follows it".into(),
                        fix: "treated as the end of a sentence; start a new section with a tag such as [verse]".into(),
                    });
                }
                rest = after_sep;
                continue;
            }
            // A tag.
            let Some(close) = after.find(']') else {
                self.errors.push(LyricsIssue {
                    line: no,
                    message: format!("unclosed `[` in `{}`", after.trim()),
                    fix: "close the tag with `]`, e.g. [verse]".into(),
                });
                break;
            };
            self.tag(no, &after[..=close]);
            rest = &after[close + 1..];
        }
        // One input line is one sentence.
        self.end_sentence();
    }

    fn tag(&mut self, no: usize, raw: &str) {
        self.end_sentence();
        let inner = raw[1..raw.len() - 1].trim();
        let lower = format!("[{}]", inner.to_lowercase().replace([' ', '_'], "-"));
        let aliased = match lower.as_str() {
            "[intro]" => Some("[intro-short]"),
            "[outro]" => Some("[outro-short]"),
            "[inst]" | "[instrumental]" | "[interlude]" => Some("[inst-short]"),
            _ => None,
        };
        let kind = if let Some(alias) = aliased {
            self.warnings.push(LyricsIssue {
                line: no,
                message: format!("{raw} has no length"),
                fix: format!("used {alias}; write -medium or -long for a longer section"),
            });
            SectionKind::from_tag(alias)
        } else if let Some(kind) = SectionKind::from_tag(&lower) {
            if lower != raw {
                self.warnings.push(LyricsIssue {
                    line: no,
                    message: format!("{raw} is not spelt as the model's tag"),
                    fix: format!("used {lower} (tags are lowercase)"),
                });
            }
            Some(kind)
        } else {
            self.errors.push(LyricsIssue {
                line: no,
                message: format!("unknown section tag {raw}"),
                fix: format!(
                    "did you mean {}? known tags: {}",
                    closest(&lower, &SECTION_TAGS),
                    SECTION_TAGS.join(" ")
                ),
            });
            None
        };
        if let Some(kind) = kind {
            self.sections.push(Section {
                kind,
                sentences: Vec::new(),
                line: no,
            });
        }
    }

    fn text(&mut self, no: usize, text: &str) {
        for c in text.chars() {
            if is_sentence_end(c) {
                self.end_sentence();
            } else if c == ']' {
                self.errors.push(LyricsIssue {
                    line: no,
                    message: "`]` without a matching `[`".into(),
                    fix: "write tags as [verse], [chorus], ...".into(),
                });
            } else {
                if self.pending.is_empty() {
                    self.pending_line = no;
                }
                self.pending.push(c);
            }
        }
    }

    fn end_sentence(&mut self) {
        let raw = std::mem::take(&mut self.pending);
        let line = self.pending_line;
        let mut removed = Vec::new();
        let cleaned: String = raw
            .chars()
            .map(|c| {
                if keep_in_sentence(c) {
                    c
                } else {
                    removed.push(c);
                    ' '
                }
            })
            .collect();
        let sentence = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
        let sentence = sentence.trim_matches(|c: char| c == ',' || c == '，' || c.is_whitespace());
        if !removed.is_empty() {
            removed.dedup();
            self.warnings.push(LyricsIssue {
                line,
                message: format!(
                    "removed the characters {}",
                    removed
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                fix: "the model was trained on lyrics with only `.` between sentences and `,` inside them".into(),
            });
        }
        if sentence.is_empty() {
            return;
        }
        match self.sections.last_mut() {
            Some(section) => section.sentences.push(sentence.to_string()),
            None if !self.orphan_reported => {
                self.orphan_reported = true;
                self.errors.push(LyricsIssue {
                    line,
                    message: format!("lyrics before the first section tag: `{sentence}`"),
                    fix: "start the lyrics with a section tag such as [verse]".into(),
                });
            }
            None => {}
        }
    }

    fn finish(mut self, input: &str) -> Result<Normalized, LyricsError> {
        self.end_sentence();
        if self.sections.is_empty() && self.errors.is_empty() {
            self.errors.push(LyricsIssue {
                line: 1,
                message: "no section tags".into(),
                fix: "structure the lyrics, e.g. `[intro-short] ; [verse] first line. second line ; [chorus] ... ; [outro-short]`".into(),
            });
        }
        for s in &self.sections {
            if s.kind.is_vocal() && s.sentences.is_empty() {
                self.errors.push(LyricsIssue {
                    line: s.line,
                    message: format!("{} has no lyrics", s.kind.tag()),
                    fix: "add the sung lines, or use an instrumental tag such as [inst-short]"
                        .into(),
                });
            }
            if !s.kind.is_vocal() && !s.sentences.is_empty() {
                self.errors.push(LyricsIssue {
                    line: s.line,
                    message: format!(
                        "{} is instrumental but has lyrics: `{}`",
                        s.kind.tag(),
                        s.sentences[0]
                    ),
                    fix: "move the text into a [verse], [chorus] or [bridge] section".into(),
                });
            }
        }
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|e| e.line);
            return Err(LyricsError {
                issues: self.errors,
            });
        }
        let text = self
            .sections
            .iter()
            .map(|s| {
                if s.sentences.is_empty() {
                    s.kind.tag().to_string()
                } else {
                    format!("{} {}", s.kind.tag(), join_sentences(&s.sentences))
                }
            })
            .collect::<Vec<_>>()
            .join(" ; ");
        Ok(Normalized {
            text,
            sections: self.sections,
            warnings: self.warnings,
            language: detect_language(input),
        })
    }
}

/// Sentences are joined by `". "` in space-separated scripts and by a bare `.` between CJK text,
/// as in the reference's sample lyrics.
fn join_sentences(sentences: &[String]) -> String {
    let mut out = String::new();
    for s in sentences {
        if !out.is_empty() {
            let prev_cjk = out.chars().last().is_some_and(is_cjk);
            let next_cjk = s.chars().next().is_some_and(is_cjk);
            out.push_str(if prev_cjk && next_cjk { "." } else { ". " });
        }
        out.push_str(s);
    }
    out
}

fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '…' | '\n' | '\r')
}

/// Letters of any script (incl. CJK, kana, hangul), combining marks, digits, spaces, and the
/// punctuation that appears inside sung lines (apostrophes, hyphens, commas).
fn keep_in_sentence(c: char) -> bool {
    c.is_alphanumeric()
        || c.is_whitespace()
        || matches!(
            c,
            '\'' | '’' | '-' | ',' | '，' | '、' | '\u{0300}'..='\u{036f}' | '\u{3099}'..='\u{309a}'
        )
}

/// CJK ideographs, kana and hangul syllables: scripts written without spaces between words.
fn is_cjk(c: char) -> bool {
    is_han(c)
        || matches!(c, '\u{3040}'..='\u{30ff}' | '\u{ac00}'..='\u{d7af}' | '\u{3400}'..='\u{4dbf}')
}

fn is_han(c: char) -> bool {
    matches!(c, '\u{4e00}'..='\u{9fff}')
}

/// Language of a lyric text. Chinese uses the reference's rule (at least 20% of all characters
/// are CJK ideographs U+4E00..U+9FFF), so the auto-prompt subset matches the reference's choice;
/// kana and hangul tell Japanese and Korean apart first.
pub fn detect_language(text: &str) -> Language {
    let total = text.chars().count();
    if total == 0 {
        return Language::En;
    }
    let count = |f: fn(char) -> bool| text.chars().filter(|&c| f(c)).count();
    let kana = count(|c| matches!(c, '\u{3040}'..='\u{30ff}'));
    let hangul = count(|c| matches!(c, '\u{ac00}'..='\u{d7af}' | '\u{1100}'..='\u{11ff}'));
    let han = count(is_han);
    let ascii_letters = count(|c| c.is_ascii_alphabetic());
    let latin_extra = count(|c| c.is_alphabetic() && !c.is_ascii() && (c as u32) < 0x0250);
    if kana * 10 >= total {
        Language::Ja
    } else if hangul * 5 >= total {
        Language::Ko
    } else if han * 5 >= total {
        Language::Zh
    } else if ascii_letters * 2 >= total && latin_extra * 50 < ascii_letters.max(1) {
        Language::En
    } else {
        Language::Other
    }
}

/// The candidate closest to `word` by edit distance (for "did you mean" suggestions).
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> &'a str {
    candidates
        .iter()
        .copied()
        .min_by_key(|c| edit_distance(word, c))
        .unwrap_or("")
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_format_round_trips() {
        let s = "[intro-short] ; [verse] These faded memories of us. I can't erase the tears ; [chorus] Like a fool begs for supper ; [outro-short]";
        let n = normalize(s).unwrap();
        assert_eq!(n.text, s);
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
        assert_eq!(n.language, Language::En);
        assert_eq!(n.sections.len(), 4);
    }

    #[test]
    fn reference_samples_are_accepted_with_small_fixes() {
        // Trailing dots before `;`, a missing space after a tag, `[intro-medium];`.
        let s = "[intro-medium]; [verse]Silhouettes where you once stood. Numb to whispers. ; [chorus] Oh-oh-oh, we’re fading echoes. ; [outro-short]";
        let n = normalize(s).unwrap();
        assert_eq!(
            n.text,
            "[intro-medium] ; [verse] Silhouettes where you once stood. Numb to whispers ; [chorus] Oh-oh-oh, we’re fading echoes ; [outro-short]"
        );
        let zh = "[intro-medium] ; [verse] 漂泊在无尽的沧海.寻觅那颗失落的心 ; [chorus] 让一切重新开始.我不想再次坠落 ; [outro-medium]";
        let n = normalize(zh).unwrap();
        assert_eq!(n.text, zh);
        assert_eq!(n.language, Language::Zh);
        assert_eq!(n.language.auto_prompt_subset(), "zh");
    }

    #[test]
    fn free_text_becomes_model_format() {
        let s = "[Intro]\n\n[Verse]\nHello world!\nHow are you?\n\n[chorus]\n\"Sing\" along (yeah)\n\n[outro-short]\n";
        let n = normalize(s).unwrap();
        assert_eq!(
            n.text,
            "[intro-short] ; [verse] Hello world. How are you ; [chorus] Sing along yeah ; [outro-short]"
        );
        let lines: Vec<usize> = n.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![1, 3, 8], "{:?}", n.warnings);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let s = "hello there\n[verse]\n\n[prechorus]\nla la\n[intro-short] spoken words\n[chorus]";
        let err = normalize(s).unwrap_err();
        let lines: Vec<usize> = err.issues.iter().map(|i| i.line).collect();
        // `la la` after the unknown tag still counts as [verse]'s text.
        assert_eq!(lines, vec![1, 4, 6, 7], "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("line 4: unknown section tag [prechorus]"),
            "{msg}"
        );
        assert!(msg.contains("did you mean [chorus]?"), "{msg}");
        assert!(msg.contains("line 7: [chorus] has no lyrics"), "{msg}");
        assert!(
            msg.contains("line 6: [intro-short] is instrumental"),
            "{msg}"
        );
        assert!(normalize("").is_err());
        assert!(normalize("[verse")
            .unwrap_err()
            .to_string()
            .contains("unclosed"));
    }

    #[test]
    fn language_detection_follows_the_reference_rule() {
        assert_eq!(detect_language("[verse] 我们的歌 la la"), Language::Zh);
        assert_eq!(detect_language("[verse] hello my friend"), Language::En);
        assert_eq!(detect_language("[verse] こんにちは 世界"), Language::Ja);
        assert_eq!(detect_language("[verse] 안녕하세요 친구"), Language::Ko);
        assert_eq!(
            detect_language("[verse] canción de la mañana, corazón"),
            Language::Other
        );
        assert_eq!(Language::Ja.auto_prompt_subset(), "en");
    }
}
