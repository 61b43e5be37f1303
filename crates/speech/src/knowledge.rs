//! The offline brain: a knowledge file of questions and their answers. It answers a question
//! it knows with the answer's exact text and says it does not know anything else — it never
//! makes an answer up.
//!
//! ```toml
//! greeting = "Hello, I am the oracle. Ask me a question."
//! unknown = "I don't know that yet."
//!
//! [[entry]]
//! questions = ["What is the capital of France?", "Which city is France's capital?"]
//! answer = "The capital of France is Paris."
//! ```
//!
//! A question matches an entry when the words that carry meaning in one of the entry's
//! questions (not "what", "is", "the"…) are all in what the person said (one may be missing
//! from five or more); the entry whose question fits best wins. "Repeat that" gives the last answer again.

use std::collections::BTreeSet;
use std::path::Path;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::engine::{Brain, Message, Role, TextStream};
use crate::error::{ConfigError, EngineError};
use crate::text::SentenceSplitter;

/// The file's contents.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeFile {
    /// What the oracle says when the call starts (empty: nothing).
    #[serde(default)]
    pub greeting: String,
    /// What it says to a question it does not know.
    #[serde(default = "default_unknown")]
    pub unknown: String,
    /// What it knows.
    #[serde(default, rename = "entry")]
    pub entries: Vec<Entry>,
}

fn default_unknown() -> String {
    "I'm sorry, I don't know that yet.".into()
}

/// One thing the oracle knows.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Ways a person may ask for it.
    pub questions: Vec<String>,
    /// The answer, spoken as written.
    pub answer: String,
}

/// Words that carry no meaning of their own in a question.
const STOP: &[&str] = &[
    "a", "about", "all", "am", "an", "and", "any", "are", "as", "at", "be", "by", "can", "could",
    "did", "do", "does", "for", "from", "give", "has", "have", "hey", "i", "in", "into", "is",
    "it", "its", "know", "let", "like", "me", "my", "of", "on", "or", "oracle", "please", "s",
    "say", "so", "tell", "that", "the", "there", "this", "to", "us", "was", "we", "what", "whats",
    "which", "will", "with", "would", "you", "your",
];

/// An entry question's meaningful words must all be heard, but for one in every this many
/// (a long question survives one word the speech-to-text got wrong; a short one does not:
/// "how many legs does a dog have" is not the spider's question).
const WORDS_PER_MISS: usize = 5;

/// Lower-case words, apostrophes dropped ("what's" → "whats").
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace(['\'', '’'], "")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The words that carry meaning, a plural "s" dropped ("legs" → "leg").
fn meaningful(text: &str) -> BTreeSet<String> {
    words(text)
        .into_iter()
        .filter(|w| !STOP.contains(&w.as_str()))
        .map(|w| {
            if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
                w.get(..w.len() - 1).unwrap_or(&w).to_owned()
            } else {
                w
            }
        })
        .collect()
}

/// The knowledge-file brain.
#[derive(Clone, Debug)]
pub struct KnowledgeBrain {
    file: KnowledgeFile,
    index: Vec<(usize, BTreeSet<String>)>,
}

/// What a person's line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Intent {
    Entry(usize),
    Repeat,
    Greeting,
    Goodbye,
    Unknown,
}

impl KnowledgeBrain {
    /// Reads a knowledge file.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid knowledge file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("knowledge file {}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|e| ConfigError(format!("knowledge file {}: {}", path.display(), e.0)))
    }

    /// Parses a knowledge file's text.
    ///
    /// # Errors
    /// Not TOML of the documented shape, an entry without questions or answer, or a question
    /// with no meaningful word.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: KnowledgeFile = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        Self::new(file)
    }

    /// Builds the brain from a parsed file.
    ///
    /// # Errors
    /// As [`parse`](Self::parse).
    pub fn new(file: KnowledgeFile) -> Result<Self, ConfigError> {
        let mut index = Vec::new();
        for (i, e) in file.entries.iter().enumerate() {
            if e.answer.trim().is_empty() || e.questions.is_empty() {
                return Err(ConfigError(format!(
                    "entry {} needs questions and an answer",
                    i + 1
                )));
            }
            for q in &e.questions {
                let m = meaningful(q);
                if m.is_empty() {
                    return Err(ConfigError(format!(
                        "entry {}: the question {q:?} has no word that carries meaning",
                        i + 1
                    )));
                }
                index.push((i, m));
            }
        }
        if file.unknown.trim().is_empty() {
            return Err(ConfigError("`unknown` must say something".into()));
        }
        Ok(Self { file, index })
    }

    /// The greeting (may be empty).
    pub fn greeting(&self) -> &str {
        &self.file.greeting
    }

    /// The questions this brain knows, as a hint for speech-to-text (Whisper's `prompt`
    /// leans its guesses towards these words: "legs", not "links"), at most `max` characters.
    pub fn vocabulary(&self, max: usize) -> String {
        let mut out = String::new();
        for q in self.file.entries.iter().flat_map(|e| e.questions.iter()) {
            if out.len() + q.len() + 1 > max {
                break;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(q.trim());
        }
        out
    }

    fn intent(&self, said: &str) -> Intent {
        let all = words(said);
        let heard = meaningful(said);
        let has = |w: &str| all.iter().any(|x| x == w);
        if (has("repeat") || (has("again") && (has("say") || has("that")))) && heard.len() <= 3 {
            return Intent::Repeat;
        }
        let mut best: Option<(f64, f64, usize)> = None;
        for (entry, q) in &self.index {
            let common = q.intersection(&heard).count();
            if q.len() - common > q.len() / WORDS_PER_MISS {
                continue;
            }
            let (common, recall) = (common as f64, common as f64 / q.len() as f64);
            let f1 = 2.0 * common / (q.len() + heard.len()) as f64;
            if best.is_none_or(|(r, f, _)| (recall, f1) > (r, f)) {
                best = Some((recall, f1, *entry));
            }
        }
        if let Some((_, _, e)) = best {
            return Intent::Entry(e);
        }
        let greetings = [
            "hello",
            "hi",
            "hey",
            "morning",
            "afternoon",
            "evening",
            "good",
        ];
        if !all.is_empty()
            && all
                .iter()
                .all(|w| greetings.contains(&w.as_str()) || STOP.contains(&w.as_str()))
        {
            return Intent::Greeting;
        }
        if has("bye") || has("goodbye") {
            return Intent::Goodbye;
        }
        Intent::Unknown
    }

    /// The answer to the last line of `conversation`, as text.
    pub fn reply(&self, conversation: &[Message]) -> String {
        let said = conversation
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        match self.intent(said) {
            Intent::Entry(i) => self
                .file
                .entries
                .get(i)
                .map_or_else(|| self.file.unknown.clone(), |e| e.answer.clone()),
            Intent::Repeat => conversation
                .iter()
                .rev()
                .find(|m| m.role == Role::Assistant && !m.content.is_empty())
                .map_or_else(
                    || "I haven't said anything yet.".to_owned(),
                    |m| m.content.clone(),
                ),
            Intent::Greeting => {
                if self.file.greeting.is_empty() {
                    "Hello.".to_owned()
                } else {
                    self.file.greeting.clone()
                }
            }
            Intent::Goodbye => "Goodbye.".to_owned(),
            Intent::Unknown => self.file.unknown.clone(),
        }
    }
}

#[async_trait]
impl Brain for KnowledgeBrain {
    async fn answer(&self, conversation: Vec<Message>) -> Result<TextStream, EngineError> {
        let text = self.reply(&conversation);
        // Sentence by sentence, like a model's stream, so speech starts after the first.
        let mut split = SentenceSplitter::new();
        let mut parts: Vec<String> = split.push(&text);
        parts.extend(split.finish());
        let parts: Vec<Result<String, EngineError>> =
            parts.into_iter().map(|s| Ok(format!("{s} "))).collect();
        Ok(futures_util::stream::iter(parts).boxed())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const FILE: &str = r#"
greeting = "Hello, I am the oracle."
unknown = "I don't know that yet."

[[entry]]
questions = ["What is the capital of France?", "Which city is France's capital?"]
answer = "The capital of France is Paris. It lies on the Seine."

[[entry]]
questions = ["How many legs does a spider have?"]
answer = "A spider has eight legs."

[[entry]]
questions = ["What is the capital of Italy?"]
answer = "The capital of Italy is Rome."
"#;

    fn ask(b: &KnowledgeBrain, q: &str) -> String {
        b.reply(&[Message::user(q)])
    }

    #[test]
    fn known_questions_get_their_exact_answer_however_they_are_asked() {
        let b = KnowledgeBrain::parse(FILE).unwrap();
        let paris = "The capital of France is Paris. It lies on the Seine.";
        for q in [
            "What is the capital of France?",
            "what's the capital of france",
            "Tell me, oracle, what is the capital city of France, please?",
            "Which city is France's capital?",
        ] {
            assert_eq!(ask(&b, q), paris, "{q}");
        }
        assert_eq!(
            ask(&b, "How many legs does a spider have?"),
            "A spider has eight legs."
        );
        assert_eq!(
            ask(&b, "and the capital of Italy?"),
            "The capital of Italy is Rome."
        );
    }

    #[test]
    fn anything_else_is_not_known() {
        let b = KnowledgeBrain::parse(FILE).unwrap();
        for q in [
            "What is the capital of Spain?",
            "How many legs does a dog have?",
            "Tell me a story about a robot.",
            "France",
        ] {
            assert_eq!(ask(&b, q), "I don't know that yet.", "{q}");
        }
    }

    #[test]
    fn greetings_repeats_and_goodbyes() {
        let b = KnowledgeBrain::parse(FILE).unwrap();
        assert_eq!(ask(&b, "Hello!"), "Hello, I am the oracle.");
        assert_eq!(ask(&b, "Good morning"), "Hello, I am the oracle.");
        assert_eq!(ask(&b, "Okay, bye."), "Goodbye.");
        let conv = vec![
            Message::user("How many legs does a spider have?"),
            Message::assistant("A spider has eight legs."),
            Message::user("Sorry, can you repeat that?"),
        ];
        assert_eq!(b.reply(&conv), "A spider has eight legs.");
        assert_eq!(ask(&b, "Say that again."), "I haven't said anything yet.");
    }

    #[tokio::test]
    async fn the_answer_streams_sentence_by_sentence() {
        let b = KnowledgeBrain::parse(FILE).unwrap();
        let parts: Vec<String> = b
            .answer(vec![Message::user("What is the capital of France?")])
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(
            parts,
            vec!["The capital of France is Paris. ", "It lies on the Seine. "]
        );
    }

    #[test]
    fn the_demo_oracles_knowledge_file_loads_and_answers() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../speech/knowledge/oracle.toml");
        let b = KnowledgeBrain::load(&path).unwrap();
        assert_eq!(
            ask(&b, "What is the capital of France?"),
            "The capital of France is Paris."
        );
        assert_eq!(ask(&b, "Who are you?").split_whitespace().next(), Some("I"));
        assert_eq!(
            ask(&b, "What is the price of a bicycle?"),
            "I'm sorry, I don't know that yet."
        );
        assert!(b.greeting().starts_with("Hello"));
    }

    #[test]
    fn the_vocabulary_hint_lists_the_questions_within_its_bound() {
        let b = KnowledgeBrain::parse(FILE).unwrap();
        let v = b.vocabulary(1000);
        assert!(
            v.starts_with("What is the capital of France? Which city"),
            "{v}"
        );
        assert!(v.contains("spider"));
        let short = b.vocabulary(40);
        assert_eq!(short, "What is the capital of France?");
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        for (text, why) in [
            (
                "[[entry]]\nquestions = []\nanswer = \"x\"",
                "needs questions",
            ),
            (
                "[[entry]]\nquestions = [\"what is it?\"]\nanswer = \"x\"",
                "no word",
            ),
            ("unknown = \"\"", "must say"),
            ("colour = \"blue\"", "unknown field"),
        ] {
            let e = KnowledgeBrain::parse(text).unwrap_err();
            assert!(e.0.contains(why), "{text}: {e}");
        }
    }
}
