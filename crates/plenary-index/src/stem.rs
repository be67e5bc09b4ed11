//! A Snowball stemming filter that remembers the words it has stemmed.
//!
//! Why: stemming was the largest single cost of indexing a message (about a quarter of the
//! indexing thread's time in `bench/` ingest profiles), and mail repeats its words: the same
//! few thousand words make up most of every body. Each analyzer instance (tantivy clones one
//! per segment writer, and one per query) keeps a bounded map from word to stem, so a word is
//! run through the Snowball algorithm once per segment instead of once per occurrence.
//!
//! The map holds words and stems inline (at most [`MAX_WORD_LEN`] bytes each) and hashes them
//! with foldhash: with boxed strings and SipHash, finding a word (hashing it, then following a
//! pointer per probe to compare) was still a sixth of the indexing thread's time in a profile
//! of `plenary index rebuild`.
//!
//! The stems are those of tantivy's own `Stemmer` filter (the same `frostem` algorithms; a
//! test compares the two on real text), so an index built with either gives the same terms.

use std::collections::HashMap;
use tantivy::tokenizer::{Token, TokenFilter, TokenStream, Tokenizer};

/// Most words remembered per analyzer instance; the map is emptied when it fills up (mail
/// has a long tail of one-off words, and a clear is cheaper than tracking recency).
const MAX_WORDS: usize = 8 * 1024;

/// Longest word worth remembering (longer ones are rare and would only crowd the map).
const MAX_WORD_LEN: usize = 24;

/// A word or stem of at most [`MAX_WORD_LEN`] bytes, kept inline so that comparing two of
/// them touches no other memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Word {
    len: u8,
    bytes: [u8; MAX_WORD_LEN],
}

impl Word {
    fn new(s: &str) -> Option<Word> {
        let b = s.as_bytes();
        if b.len() > MAX_WORD_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_WORD_LEN];
        bytes[..b.len()].copy_from_slice(b);
        Some(Word {
            len: b.len() as u8,
            bytes,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

type Cache = HashMap<Word, Word, foldhash::fast::RandomState>;

/// The token filter: stems each token, through a cache.
#[derive(Clone)]
pub struct CachedStemmer {
    algorithm: frostem::Algorithm,
}

impl CachedStemmer {
    pub fn new(algorithm: frostem::Algorithm) -> CachedStemmer {
        CachedStemmer { algorithm }
    }
}

impl TokenFilter for CachedStemmer {
    type Tokenizer<T: Tokenizer> = CachedStemmerFilter<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> CachedStemmerFilter<T> {
        CachedStemmerFilter {
            stemmer: frostem::Stemmer::new(self.algorithm),
            cache: Cache::default(),
            inner: tokenizer,
        }
    }
}

/// A tokenizer followed by the stemmer; owns the cache (one per analyzer instance).
pub struct CachedStemmerFilter<T> {
    stemmer: frostem::Stemmer,
    cache: Cache,
    inner: T,
}

impl<T: Clone> Clone for CachedStemmerFilter<T> {
    /// A clone starts with an empty cache: clones go to other threads and segments.
    fn clone(&self) -> Self {
        CachedStemmerFilter {
            stemmer: self.stemmer,
            cache: Cache::default(),
            inner: self.inner.clone(),
        }
    }
}

impl<T: Tokenizer> Tokenizer for CachedStemmerFilter<T> {
    type TokenStream<'a> = CachedStemmerTokenStream<'a, T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        CachedStemmerTokenStream {
            tail: self.inner.token_stream(text),
            stemmer: self.stemmer,
            cache: &mut self.cache,
        }
    }
}

pub struct CachedStemmerTokenStream<'a, T> {
    tail: T,
    stemmer: frostem::Stemmer,
    cache: &'a mut Cache,
}

impl<T: TokenStream> TokenStream for CachedStemmerTokenStream<'_, T> {
    fn advance(&mut self) -> bool {
        if !self.tail.advance() {
            return false;
        }
        let token = self.tail.token_mut();
        let word = Word::new(&token.text);
        if let Some((w, stem)) = word.as_ref().and_then(|w| self.cache.get(w).map(|s| (w, s))) {
            if stem == w {
                return true;
            }
            // Always whole UTF-8 (cut from a `&str` on insert); were it not, stem afresh.
            if let Ok(s) = std::str::from_utf8(stem.as_bytes()) {
                token.text.clear();
                token.text.push_str(s);
                return true;
            }
        }
        let stem = self.stemmer.stem(&token.text).into_owned();
        if let (Some(w), Some(st)) = (word, Word::new(&stem)) {
            if self.cache.len() >= MAX_WORDS {
                self.cache.clear();
            }
            self.cache.insert(w, st);
        }
        token.text = stem;
        true
    }

    fn token(&self) -> &Token {
        self.tail.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.tail.token_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::tokenizer::{Language, LowerCaser, SimpleTokenizer, Stemmer, TextAnalyzer};

    fn tokens(a: &mut TextAnalyzer, text: &str) -> Vec<(String, usize, usize, usize)> {
        let mut out = Vec::new();
        let mut s = a.token_stream(text);
        while s.advance() {
            let t = s.token();
            out.push((t.text.clone(), t.offset_from, t.offset_to, t.position));
        }
        out
    }

    /// Same terms, offsets and positions as tantivy's own stemmer, for every language, on
    /// text long enough to fill and clear the cache, run twice through one analyzer.
    #[test]
    fn gives_the_terms_of_tantivys_stemmer() {
        let samples = [
            (frostem::Algorithm::English, Language::English, "Running runners ran; the meetings were organised and organizing continues. Generously, generalities generalize."),
            (frostem::Algorithm::French, Language::French, "Les gouvernements continuent à gouverner; la continuité des décisions était décidée."),
            (frostem::Algorithm::Spanish, Language::Spanish, "Los gobiernos continúan gobernando; las decisiones fueron decididas rápidamente."),
            (frostem::Algorithm::Portuguese, Language::Portuguese, "Os governos continuam governando; as decisões foram decididas rapidamente."),
            (frostem::Algorithm::Russian, Language::Russian, "Правительства продолжают управлять; решения были приняты быстро и решительно."),
            (frostem::Algorithm::Arabic, Language::Arabic, "الحكومة والحكومات تواصل الحكم والقرارات اتخذت بسرعة"),
            (frostem::Algorithm::German, Language::German, "Die Regierungen regieren weiter; Entscheidungen wurden schnell entschieden."),
        ];
        for (ours, theirs, text) in samples {
            // More distinct words (numbered, two per round) than the cache holds, so it
            // fills and is cleared on the way.
            let mut long = String::new();
            for i in 0..(MAX_WORDS / 2 + 100) {
                long.push_str(text);
                long.push_str(&format!(" word{i}s organisations{i} "));
            }
            let mut a = TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(LowerCaser)
                .filter(CachedStemmer::new(ours))
                .build();
            let mut b = TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(LowerCaser)
                .filter(Stemmer::new(theirs))
                .build();
            let expected = tokens(&mut b, &long);
            // Distinct words as the cache sees them (lower-cased, before stemming).
            let mut lower = TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(LowerCaser)
                .build();
            let distinct: std::collections::HashSet<String> =
                tokens(&mut lower, &long).into_iter().map(|t| t.0).collect();
            assert!(
                distinct.len() > MAX_WORDS,
                "{ours:?}: the sample must overflow the cache"
            );
            assert_eq!(tokens(&mut a, &long), expected, "{ours:?}, first pass");
            assert_eq!(
                tokens(&mut a, &long),
                expected,
                "{ours:?}, second pass (from the cache)"
            );
            let mut c = a.clone();
            assert_eq!(tokens(&mut c, text), tokens(&mut b, text), "{ours:?}, a clone");
        }
    }

    #[test]
    fn changes_words_and_keeps_stems() {
        let mut a = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(CachedStemmer::new(frostem::Algorithm::English))
            .build();
        let got: Vec<String> = tokens(&mut a, "meetings meeting meetings run")
            .into_iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(got, ["meet", "meet", "meet", "run"]);
    }
}
