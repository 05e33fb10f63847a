//! Style tags (`descriptions`): the comma-separated text that sets gender, timbre, genre,
//! emotion, instruments and BPM, e.g. `female, dark, pop, sad, piano and drums, the bpm is 125.`
//!
//! The model accepts any text here, but it follows the tags it was trained on much more
//! reliably, so a typo (`jaz`) silently weakens the result. [`check_style`] splits a description,
//! classifies each tag against the vocabularies in `protocol/assets/tags/` and reports the unknown
//! ones with the closest known tag; callers decide whether unknown tags are an error.

use std::fmt;
use std::sync::OnceLock;

use crate::lyrics::{closest, edit_distance};

/// Genres of the auto-prompt library (`auto_prompt_audio_type` of the reference's v2 inputs).
pub const AUTO_PROMPT_GENRES: [&str; 14] = [
    "Pop",
    "Latin",
    "Rock",
    "Electronic",
    "Metal",
    "Country",
    "R&B/Soul",
    "Ballad",
    "Jazz",
    "World",
    "Hip-Hop",
    "Funk",
    "Soundtrack",
    "Auto",
];

/// Which musical dimension a tag sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Gender,
    Timbre,
    Genre,
    Emotion,
    Instrument,
    Bpm,
}

impl Dimension {
    pub const ALL: [Dimension; 6] = [
        Dimension::Gender,
        Dimension::Timbre,
        Dimension::Genre,
        Dimension::Emotion,
        Dimension::Instrument,
        Dimension::Bpm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dimension::Gender => "gender",
            Dimension::Timbre => "timbre",
            Dimension::Genre => "genre",
            Dimension::Emotion => "emotion",
            Dimension::Instrument => "instrument",
            Dimension::Bpm => "bpm",
        }
    }

    /// The known tags of this dimension (BPM is a pattern, `the bpm is N`, and has none).
    pub fn vocabulary(self) -> &'static [&'static str] {
        static VOCABS: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
        let vocabs = VOCABS.get_or_init(|| {
            [
                include_str!("../assets/tags/gender.txt"),
                include_str!("../assets/tags/timbre.txt"),
                include_str!("../assets/tags/genre.txt"),
                include_str!("../assets/tags/emotion.txt"),
                include_str!("../assets/tags/instrument.txt"),
            ]
            .iter()
            .map(|file| {
                file.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect()
            })
            .collect()
        });
        match self {
            Dimension::Gender => &vocabs[0],
            Dimension::Timbre => &vocabs[1],
            Dimension::Genre => &vocabs[2],
            Dimension::Emotion => &vocabs[3],
            Dimension::Instrument => &vocabs[4],
            Dimension::Bpm => &[],
        }
    }
}

/// Beats per minute the `the bpm is N` tag accepts.
pub const BPM_RANGE: std::ops::RangeInclusive<u32> = 40..=240;

/// A tag outside the vocabularies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTag {
    pub tag: String,
    /// The closest known tag.
    pub suggestion: String,
}

impl fmt::Display for UnknownTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown style tag `{}` (did you mean `{}`?)",
            self.tag, self.suggestion
        )
    }
}

/// The result of checking a description.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleCheck {
    /// Lowercased tags joined by `", "` and ending with `.` (the reference's style).
    pub normalized: String,
    /// Every recognised tag with its dimension.
    pub known: Vec<(Dimension, String)>,
    pub unknown: Vec<UnknownTag>,
    /// A BPM outside [`BPM_RANGE`] or an unreadable number.
    pub errors: Vec<String>,
}

impl StyleCheck {
    pub fn is_clean(&self) -> bool {
        self.unknown.is_empty() && self.errors.is_empty()
    }

    /// Every problem, one per line, with the known tags listed for the unknown ones.
    pub fn report(&self) -> String {
        let mut lines: Vec<String> = self.errors.clone();
        lines.extend(self.unknown.iter().map(ToString::to_string));
        lines.join("\n")
    }
}

/// Splits and classifies a description such as `"Female, dark, pop, piano and drums, the bpm is 125."`.
pub fn check_style(description: &str) -> StyleCheck {
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    let mut errors = Vec::new();
    let mut items = Vec::new();
    for item in description.split([',', '，', ';', '\n']) {
        let item = item
            .trim()
            .trim_end_matches(['.', '。'])
            .trim()
            .to_lowercase();
        let item = item.split_whitespace().collect::<Vec<_>>().join(" ");
        if item.is_empty() {
            continue;
        }
        if let Some(bpm) = item
            .strip_prefix("the bpm is")
            .or_else(|| item.strip_prefix("bpm"))
            .or_else(|| item.strip_suffix("bpm"))
        {
            let bpm = bpm.trim().trim_start_matches(':').trim();
            match bpm.parse::<u32>() {
                Ok(n) if BPM_RANGE.contains(&n) => {
                    known.push((Dimension::Bpm, n.to_string()));
                    items.push(format!("the bpm is {n}"));
                }
                _ => errors.push(format!(
                    "style tag `{item}`: the BPM must be a whole number from {} to {} (write `the bpm is 120`)",
                    BPM_RANGE.start(),
                    BPM_RANGE.end()
                )),
            }
            continue;
        }
        // "piano and drums" names two instruments; other tags may contain "and" themselves.
        let parts: Vec<&str> = if classify(&item).is_some() {
            vec![item.as_str()]
        } else {
            item.split(" and ").map(str::trim).collect()
        };
        for part in parts {
            match classify(part) {
                Some(dim) => known.push((dim, part.to_string())),
                None => unknown.push(UnknownTag {
                    tag: part.to_string(),
                    suggestion: suggest(part).to_string(),
                }),
            }
        }
        items.push(item);
    }
    let normalized = if items.is_empty() {
        String::new()
    } else {
        format!("{}.", items.join(", "))
    };
    StyleCheck {
        normalized,
        known,
        unknown,
        errors,
    }
}

fn classify(tag: &str) -> Option<Dimension> {
    Dimension::ALL
        .into_iter()
        .find(|d| d.vocabulary().contains(&tag))
}

fn suggest(tag: &str) -> &'static str {
    let all: Vec<&'static str> = Dimension::ALL
        .iter()
        .flat_map(|d| d.vocabulary().iter().copied())
        .collect();
    let best = closest(tag, &all);
    if edit_distance(tag, best) * 2 > tag.chars().count().max(3) {
        // Nothing close: point at the format instead of a random tag.
        "see `songgen tags` for the known tags"
    } else {
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_reference_examples() {
        let c = check_style("Female, dark, pop, sad, piano and drums, the bpm is 125.");
        assert!(c.is_clean(), "{}", c.report());
        assert_eq!(
            c.normalized,
            "female, dark, pop, sad, piano and drums, the bpm is 125."
        );
        let dims: Vec<Dimension> = c.known.iter().map(|(d, _)| *d).collect();
        assert_eq!(
            dims,
            vec![
                Dimension::Gender,
                Dimension::Timbre,
                Dimension::Genre,
                Dimension::Emotion,
                Dimension::Instrument,
                Dimension::Instrument,
                Dimension::Bpm
            ]
        );
        let v2 = check_style("gufeng, rock, heartbroken, guzheng, electric guitar, percussion.");
        assert!(v2.is_clean(), "{}", v2.report());
    }

    #[test]
    fn unknown_tags_come_with_a_suggestion() {
        let c = check_style("femal, jaz, the bpm is 500, zzzzqqq");
        assert_eq!(c.unknown.len(), 3);
        assert_eq!(c.unknown[0].suggestion, "female");
        assert_eq!(c.unknown[1].suggestion, "jazz");
        assert!(c.unknown[2].suggestion.contains("songgen tags"));
        assert_eq!(c.errors.len(), 1);
        assert!(c
            .report()
            .contains("unknown style tag `jaz` (did you mean `jazz`?)"));
        assert!(check_style("").normalized.is_empty());
    }
}
