//! A Snowball stemming filter that remembers the words it has stemmed.
//!
//! Why: stemming was the largest single cost of indexing a message (about a quarter of the
//! indexing thread's time in `bench/` ingest profiles), and mail repeats its words: the same
//! few thousand words make up most of every body. Each thread keeps a bounded map from word
//! to stem per language, shared by every analyzer instance on that thread, so a word is run
//! through the Snowball algorithm once per thread (until the map fills) instead of once per
//! occurrence.
//!
//! Why per thread and not per analyzer instance: tantivy clones the analyzer for every
//! segment writer and every snippet generator, so a map per instance started empty for each
//! search, and the snippets of one page of results stemmed every word afresh (the Snowball
//! stemmer alone was an eighth of the CPU of a site-wide search in a profile of the web
//! benchmark). The web server's threads live as long as the daemon and keep their maps; the
//! indexing thread tantivy starts per commit begins with an empty one, as before.
//!
//! The map holds words and stems inline (at most [`MAX_WORD_LEN`] bytes each) and hashes them
//! with foldhash: with boxed strings and SipHash, finding a word (hashing it, then following a
//! pointer per probe to compare) was still a sixth of the indexing thread's time in a profile
//! of `plenary index rebuild`.
//!
//! The stems are those of tantivy's own `Stemmer` filter (the same `frostem` algorithms; a
//! test compares the two on real text), so an index built with either gives the same terms.

use std::cell::RefCell;
use std::collections::HashMap;
use tantivy::tokenizer::{Token, TokenFilter, TokenStream, Tokenizer};

/// Most words remembered per thread and language; the map is emptied when it fills up (mail
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

thread_local! {
    /// This thread's maps, one per stemming algorithm used on it (at most the few languages
    /// the schema knows, so a short list).
    static CACHES: RefCell<Vec<(frostem::Algorithm, Cache)>> = const { RefCell::new(Vec::new()) };
    /// Words this thread ran through the Snowball algorithm (for tests).
    #[cfg(test)]
    static STEMMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Run `f` on this thread's map for `algorithm`, or return None if it is in use (it never
/// is: nothing stems while a lookup is under way; the caller then stems without the map).
fn with_cache<R>(algorithm: frostem::Algorithm, f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
    CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let i = match caches.iter().position(|(a, _)| *a == algorithm) {
                Some(i) => i,
                None => {
                    caches.push((algorithm, Cache::default()));
                    caches.len() - 1
                }
            };
            Some(f(&mut caches[i].1))
        })
        .ok()
        .flatten()
}

/// Replace `text` by its stem, from `cache` when it holds the word, else by the Snowball
/// algorithm, remembering the result.
fn stem_through(cache: &mut Cache, stemmer: frostem::Stemmer, text: &mut String) {
    let word = Word::new(text);
    if let Some(stem) = word.as_ref().and_then(|w| cache.get(w)) {
        if Some(stem) == word.as_ref() {
            return;
        }
        // Always whole UTF-8 (cut from a `&str` on insert); were it not, stem afresh.
        if let Ok(s) = std::str::from_utf8(stem.as_bytes()) {
            text.clear();
            text.push_str(s);
            return;
        }
    }
    let stem = snowball(stemmer, text);
    if let (Some(w), Some(st)) = (word, Word::new(&stem)) {
        if cache.len() >= MAX_WORDS {
            cache.clear();
        }
        cache.insert(w, st);
    }
    *text = stem;
}

/// The Snowball algorithm itself (counted in tests).
fn snowball(stemmer: frostem::Stemmer, text: &str) -> String {
    #[cfg(test)]
    STEMMED.with(|n| n.set(n.get() + 1));
    stemmer.stem(text).into_owned()
}

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
            algorithm: self.algorithm,
            stemmer: frostem::Stemmer::new(self.algorithm),
            inner: tokenizer,
        }
    }
}

/// A tokenizer followed by the stemmer (the cache is the thread's, see the module docs).
#[derive(Clone)]
pub struct CachedStemmerFilter<T> {
    algorithm: frostem::Algorithm,
    stemmer: frostem::Stemmer,
    inner: T,
}

impl<T: Tokenizer> Tokenizer for CachedStemmerFilter<T> {
    type TokenStream<'a> = CachedStemmerTokenStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        CachedStemmerTokenStream {
            tail: self.inner.token_stream(text),
            algorithm: self.algorithm,
            stemmer: self.stemmer,
        }
    }
}

pub struct CachedStemmerTokenStream<T> {
    tail: T,
    algorithm: frostem::Algorithm,
    stemmer: frostem::Stemmer,
}

impl<T: TokenStream> TokenStream for CachedStemmerTokenStream<T> {
    fn advance(&mut self) -> bool {
        if !self.tail.advance() {
            return false;
        }
        let stemmer = self.stemmer;
        let text = &mut self.tail.token_mut().text;
        if with_cache(self.algorithm, |cache| stem_through(cache, stemmer, text)).is_none() {
            *text = snowball(stemmer, text);
        }
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

    /// An analyzer cloned later on the same thread (as tantivy does for every snippet
    /// generator, so for every search) finds the words already stemmed; another thread
    /// starts afresh.
    #[test]
    fn clones_on_one_thread_share_the_stems() {
        let text = "organisations organised meetings were generously generalised";
        let a = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(CachedStemmer::new(frostem::Algorithm::English))
            .build();
        let stemmed = || STEMMED.with(|n| n.get());
        let before = stemmed();
        let first = tokens(&mut a.clone(), text);
        assert_eq!(stemmed() - before, 6, "the first analyzer stems every word");
        let before = stemmed();
        assert_eq!(tokens(&mut a.clone(), text), first);
        assert_eq!(stemmed(), before, "a second clone stemmed words the first had");
        let mut other = a.clone();
        let on_other = std::thread::spawn(move || {
            let before = stemmed();
            let t = tokens(&mut other, text);
            (t, stemmed() - before)
        })
        .join()
        .unwrap_or_else(|_| panic!("thread panicked"));
        assert_eq!(on_other, (first, 6), "another thread has its own map");
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
