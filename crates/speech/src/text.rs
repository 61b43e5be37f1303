//! Cutting the brain's streamed text into sentences, so speech of the first sentence starts
//! while the rest is still being generated.

/// Words that end with a full stop without ending a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "no", "approx", "jr", "sr",
];

/// A sentence longer than this is cut at its last comma or space before it, so one run-on
/// sentence cannot hold back speech.
const MAX_SENTENCE: usize = 240;

/// Collects text deltas and gives back whole sentences.
#[derive(Debug, Default, Clone)]
pub struct SentenceSplitter {
    buf: String,
}

impl SentenceSplitter {
    /// A splitter with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a delta; returns the sentences it completes, trimmed, in order.
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        while let Some(end) = self.sentence_end() {
            let rest = self.buf.split_off(end);
            let s = std::mem::replace(&mut self.buf, rest);
            let s = s.trim();
            if !s.is_empty() {
                out.push(s.to_owned());
            }
        }
        out
    }

    /// The text left when the answer is complete.
    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_owned())
    }

    /// Byte offset just past the first complete sentence (its end mark and the space after).
    fn sentence_end(&self) -> Option<usize> {
        let b = &self.buf;
        let mut chars = b.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\n' {
                return Some(i + 1);
            }
            if !matches!(c, '.' | '!' | '?' | '…' | ';' | ':') {
                if i >= MAX_SENTENCE {
                    return Some(cut_long(b, i));
                }
                continue;
            }
            // Closing quotes and brackets stay with the sentence.
            let mut end = i + c.len_utf8();
            while let Some(&(j, q)) = chars.peek() {
                if matches!(q, '"' | '\'' | ')' | ']' | '”' | '’' | '.' | '!' | '?') {
                    end = j + q.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            // The mark ends a sentence only when whitespace follows; without anything after
            // it yet, wait for more text.
            let next = b.get(end..).and_then(|r| r.chars().next());
            match next {
                None => return None,
                Some(n) if n.is_whitespace() => {
                    if c == '.' && is_abbreviation(b.get(..i).unwrap_or_default()) {
                        continue;
                    }
                    return Some(end);
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// Cuts a run-on sentence at the last comma (or else space) before `at`.
fn cut_long(b: &str, at: usize) -> usize {
    let head = b.get(..at).unwrap_or(b);
    head.rfind(", ")
        .map(|p| p + 2)
        .or_else(|| head.rfind(' ').map(|p| p + 1))
        .filter(|p| *p > 0)
        .unwrap_or(at)
}

fn is_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if word.len() == 1 && word.chars().all(|c| c.is_ascii_alphabetic()) {
        return true; // an initial: "J. R. R. Tolkien"
    }
    ABBREVIATIONS.contains(&word.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(deltas: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::new();
        let mut out: Vec<String> = deltas.iter().flat_map(|d| s.push(d)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_they_are_complete() {
        let mut s = SentenceSplitter::new();
        assert!(s.push("The capital of").is_empty());
        assert!(
            s.push(" France is Paris.").is_empty(),
            "wait: 'Paris.x' is no end"
        );
        assert_eq!(s.push(" It is"), vec!["The capital of France is Paris."]);
        assert!(s.push(" big").is_empty());
        assert_eq!(s.finish().as_deref(), Some("It is big"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn decimals_abbreviations_and_initials_do_not_end_sentences() {
        assert_eq!(
            split(&[
                "It costs 3.5 euros. Dr. Smith and J. R. Tolkien agree! Really?",
                " Yes."
            ]),
            vec![
                "It costs 3.5 euros.",
                "Dr. Smith and J. R. Tolkien agree!",
                "Really?",
                "Yes."
            ]
        );
    }

    #[test]
    fn quotes_and_newlines_and_ellipses() {
        assert_eq!(
            split(&["He said \"stop.\" Then", " left...\nNext line"]),
            vec!["He said \"stop.\"", "Then left...", "Next line"]
        );
    }

    #[test]
    fn a_run_on_sentence_is_cut_at_a_comma() {
        let long = format!("{}, and then {}", "word ".repeat(30), "more ".repeat(30));
        let out = split(&[&long]);
        assert!(out.len() >= 2, "{out:?}");
        assert!(out.iter().all(|s| s.len() <= MAX_SENTENCE + 1), "{out:?}");
        assert_eq!(out.concat().replace(' ', ""), long.replace(' ', ""));
    }

    #[test]
    fn any_split_of_the_text_gives_the_same_sentences() {
        let text = "One. Two! Three? Four; five: six.\nSeven, eight. Mr. Nine";
        let whole = split(&[text]);
        for cut in 0..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let (a, b) = text.split_at(cut);
            assert_eq!(split(&[a, b]), whole, "cut at {cut}");
        }
    }
}
