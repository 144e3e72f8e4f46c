//! Banned words (protocol §5): a list the operator changes at run time
//! through the admin API. A message holding one is refused with
//! `forbidden_content`.
//!
//! Matching is by whole words, ignoring case: text is split into runs of
//! letters and digits, lowercased, and an entry matches a run (or, for an
//! entry of several words, consecutive runs). So `ass` refuses "Ass!" but
//! not "class", and `buy now` refuses "BUY   now" but not "buy nowhere".
//!
//! Matching runs in time linear in the text, whatever the number of
//! entries: the text is normalised once to ` word word … ` (each run
//! lowercased, one space between, one at each end) and searched with an
//! Aho-Corasick automaton of every entry as ` entry `, so that spaces mark
//! where words begin and end.

use aho_corasick::AhoCorasick;

use crate::error::{ApiError, ErrorCode};
use crate::limits::{BANNED_ENTRIES_MAX, BANNED_ENTRY_CHARS_MAX};

/// The meta key the list is kept under, as `{"version", "words"}` JSON.
pub const META_KEY: &str = "banned-words";

/// A change to the banned words, as the operator asks it.
#[derive(Debug, Clone)]
pub enum BannedChange {
    /// The whole list.
    Replace(Vec<String>),
    /// Entries to add and to remove.
    Patch {
        /// Added.
        add: Vec<String>,
        /// Removed.
        remove: Vec<String>,
    },
}

/// One version of the list, ready to match.
#[derive(Debug, Clone, Default)]
pub struct BannedWords {
    /// Bumped by every change; a core keeps the highest it has seen.
    pub version: u64,
    /// The entries, normalised (lowercase, words joined by one space), sorted.
    entries: Vec<String>,
    /// Every entry as ` entry `, pattern `i` for `entries[i]`; `None` when
    /// there are none.
    matcher: Option<AhoCorasick>,
}

impl PartialEq for BannedWords {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.entries == other.entries
    }
}

impl Eq for BannedWords {}

/// `text`'s runs of letters and digits, lowercased, each with one space
/// before it, and one space at the end (or an empty string).
fn spaced_words(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len() + 2);
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty()) {
        spaced.push(' ');
        spaced.extend(word.chars().flat_map(char::to_lowercase));
    }
    if !spaced.is_empty() {
        spaced.push(' ');
    }
    spaced
}

/// An entry in its matching form: lowercase words joined by one space.
pub fn normalize(entry: &str) -> Result<String, ApiError> {
    if entry.chars().count() > BANNED_ENTRY_CHARS_MAX {
        return Err(ApiError::bad_request(format!("a banned word holds at most {BANNED_ENTRY_CHARS_MAX} chars")));
    }
    let spaced = spaced_words(entry);
    let joined = spaced.trim().to_string();
    if joined.is_empty() {
        return Err(ApiError::bad_request(format!("banned word {entry:?} has no letters or digits")));
    }
    Ok(joined)
}

impl BannedWords {
    /// A list from entries as given (normalised, deduplicated).
    pub fn new(version: u64, entries: &[String]) -> Result<Self, ApiError> {
        let mut normalized = entries.iter().map(|entry| normalize(entry)).collect::<Result<Vec<_>, _>>()?;
        normalized.sort();
        normalized.dedup();
        if normalized.len() > BANNED_ENTRIES_MAX {
            return Err(ApiError::bad_request(format!("at most {BANNED_ENTRIES_MAX} banned words")));
        }
        let matcher = if normalized.is_empty() {
            None
        } else {
            let patterns = normalized.iter().map(|entry| format!(" {entry} "));
            Some(
                AhoCorasick::new(patterns)
                    .map_err(|error| ApiError::internal(format!("building the banned-word matcher: {error}")))?,
            )
        };
        Ok(BannedWords { version, entries: normalized, matcher })
    }

    /// Its version (numbered by shard 0, one more per change).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The entries, normalised and sorted.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// The first entry `text` holds, if any.
    pub fn find(&self, text: &str) -> Option<&str> {
        let matcher = self.matcher.as_ref()?;
        let found = matcher.find(&spaced_words(text))?;
        self.entries.get(found.pattern().as_usize()).map(String::as_str)
    }

    /// The next version: this list with `change` applied.
    pub fn changed(&self, change: BannedChange) -> Result<BannedWords, ApiError> {
        let entries = match change {
            BannedChange::Replace(words) => words,
            BannedChange::Patch { add, remove } => {
                let remove: Vec<String> = remove.iter().map(|entry| normalize(entry)).collect::<Result<_, _>>()?;
                self.entries.iter().filter(|entry| !remove.contains(entry)).cloned().chain(add).collect()
            }
        };
        BannedWords::new(self.version + 1, &entries)
    }

    /// The list as stored and as the admin API shows it: `{"version", "words"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "version": self.version, "words": self.entries })
    }

    /// `forbidden_content` if `text` holds an entry.
    pub fn check(&self, text: &str) -> Result<(), ApiError> {
        match self.find(text) {
            Some(_) => Err(ApiError::new(ErrorCode::ForbiddenContent, "the message holds a banned word")),
            None => Ok(()),
        }
    }
}

/// The list kept in storage (empty, version 0, if none was ever set).
pub fn load(store: &chatgw_storage::Store) -> Result<BannedWords, ApiError> {
    let Some(stored) = store.meta(META_KEY)? else { return Ok(BannedWords::default()) };
    let value: serde_json::Value = serde_json::from_slice(&stored)
        .map_err(|error| ApiError::internal(format!("stored banned words are not JSON: {error}")))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let words: Vec<String> = value
        .get("words")
        .and_then(serde_json::Value::as_array)
        .map(|words| words.iter().filter_map(|word| word.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    BannedWords::new(version, &words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> BannedWords {
        BannedWords::new(1, &entries.iter().map(|entry| entry.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn whole_words_match_ignoring_case_and_punctuation() {
        let banned = list(&["Spam", "buy now"]);
        assert_eq!(banned.entries(), ["buy now", "spam"]);
        assert_eq!(banned.find("this is SPAM!"), Some("spam"));
        assert_eq!(banned.find("spam"), Some("spam"));
        assert_eq!(banned.find("spammer and antispam"), None, "not a whole word");
        assert_eq!(banned.find("please BUY   now."), Some("buy now"));
        assert_eq!(banned.find("buy nowhere"), None);
        assert_eq!(banned.find("now buy"), None);
        assert!(banned.check("hello").is_ok());
        assert_eq!(banned.check("spam").unwrap_err().code, ErrorCode::ForbiddenContent);
        assert_eq!(list(&[]).find("anything spam"), None);
    }

    #[test]
    fn letters_beyond_ascii_are_words_too() {
        let banned = list(&["Ärger", "스팸"]);
        assert_eq!(banned.find("kein ÄRGER bitte"), Some("ärger"));
        assert_eq!(banned.find("이건 스팸 입니다"), Some("스팸"));
    }

    #[test]
    fn thousands_of_phrases_in_a_long_text_match_in_one_pass() {
        let entries: Vec<String> = (0..5_000).map(|n| format!("bad phrase {n}")).collect();
        let banned = BannedWords::new(1, &entries).unwrap();
        let mut text = "clean words and more ".repeat(5_000);
        assert_eq!(banned.find(&text), None);
        text.push_str("then BAD phrase 4321!");
        assert_eq!(banned.find(&text), Some("bad phrase 4321"));
        assert_eq!(banned.find("bad phrase 43210"), None, "whole words only");
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(BannedWords::new(1, &["  ".to_string()]).is_err());
        assert!(BannedWords::new(1, &["!!!".to_string()]).is_err());
        assert!(BannedWords::new(1, &["x".repeat(BANNED_ENTRY_CHARS_MAX + 1)]).is_err());
        let many: Vec<String> = (0..=BANNED_ENTRIES_MAX).map(|n| format!("w{n}")).collect();
        assert!(BannedWords::new(1, &many).is_err());
        assert_eq!(list(&["a", "A", " a "]).entries(), ["a"], "deduplicated after normalising");
    }

    #[test]
    fn changes_make_the_next_version() {
        let first = list(&["spam", "eggs"]);
        let patched =
            first.changed(BannedChange::Patch { add: vec!["Ham".into()], remove: vec!["EGGS".into()] }).unwrap();
        assert_eq!((patched.version, patched.entries()), (2, &["ham".to_string(), "spam".to_string()][..]));
        let replaced = patched.changed(BannedChange::Replace(vec!["x".into()])).unwrap();
        assert_eq!((replaced.version, replaced.entries()), (3, &["x".to_string()][..]));
        assert_eq!(replaced.to_json(), serde_json::json!({ "version": 3, "words": ["x"] }));
    }
}
