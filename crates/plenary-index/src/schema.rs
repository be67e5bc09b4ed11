//! The only place field names, tokenizers and options are defined.
//!
//! Subject and body are indexed in one pair of fields per [`Language`], each with that
//! language's analyzer (stemming where Snowball has a stemmer, character bigrams for
//! Chinese, plain folding otherwise). A message goes into the pair of its list's language;
//! a search scoped to one list reads that pair, a site-wide search reads them all.

use crate::stem::CachedStemmer;
use frostem::Algorithm as Stem;
use plenary_core::list::Language;
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING, TEXT,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, NgramTokenizer, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, TokenizerManager,
};

/// Handles of every field, built once with the schema.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// [`plenary_core::MessageKey::to_u64`]: the exact-match id used to delete and re-add.
    pub key: Field,
    /// List id, for scoping and visibility.
    pub list: Field,
    /// Index of the message's [`Language`] in [`Language::ALL`].
    pub lang: Field,
    /// Unix seconds.
    pub date: Field,
    pub message_id: Field,
    /// Redacted author name and obfuscated address.
    pub from: Field,
    /// Redacted To and Cc.
    pub to: Field,
    /// Attachment names.
    pub attachment: Field,
    /// Per language (in [`Language::ALL`] order): subject and redacted body (stored, for
    /// snippets and hit lists).
    pub subject: [Field; 9],
    pub body: [Field; 9],
}

impl Fields {
    pub fn lang_index(l: Language) -> usize {
        Language::ALL.iter().position(|x| *x == l).unwrap_or(0)
    }
}

/// Version of the schema; a different one on disk triggers a rebuild from the store.
pub const SCHEMA_VERSION: u32 = 2;

fn tokenizer_name(l: Language) -> String {
    format!("plenary_{}", l.name())
}

fn stem(l: Language) -> Option<Stem> {
    Some(match l {
        Language::English => Stem::English,
        Language::French => Stem::French,
        Language::Spanish => Stem::Spanish,
        Language::Portuguese => Stem::Portuguese,
        Language::Russian => Stem::Russian,
        Language::Arabic => Stem::Arabic,
        Language::German => Stem::German,
        Language::Chinese | Language::Other => return None,
    })
}

/// Register the analyzers the schema names.
pub fn register(manager: &TokenizerManager) {
    for l in Language::ALL {
        let analyzer = match (l, stem(l)) {
            // Overlapping character pairs: finds words in scripts written without spaces.
            (Language::Chinese, _) => TextAnalyzer::builder(
                NgramTokenizer::all_ngrams(1, 2).unwrap_or_else(|e| unreachable!("constant n-gram bounds: {e}")),
            )
            .filter(LowerCaser)
            .build(),
            // Stemming follows the language's own rules on the lower-cased word; accents are
            // folded after, so "é" and "e" meet (Arabic and Russian letters are untouched).
            (_, Some(s)) => TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(RemoveLongFilter::limit(60))
                .filter(LowerCaser)
                .filter(CachedStemmer::new(s))
                .filter(AsciiFoldingFilter)
                .build(),
            (_, None) => TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(RemoveLongFilter::limit(60))
                .filter(LowerCaser)
                .filter(AsciiFoldingFilter)
                .build(),
        };
        manager.register(&tokenizer_name(l), analyzer);
    }
}

pub fn build() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = |l: Language, stored: bool| {
        let idx = TextFieldIndexing::default()
            .set_tokenizer(&tokenizer_name(l))
            .set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let o = TextOptions::default().set_indexing_options(idx);
        if stored {
            o.set_stored()
        } else {
            o
        }
    };
    let key = b.add_u64_field("key", INDEXED | STORED | FAST);
    let list = b.add_u64_field("list", INDEXED | STORED | FAST);
    let lang = b.add_u64_field("lang", STORED);
    let date = b.add_i64_field("date", INDEXED | STORED | FAST);
    let message_id = b.add_text_field("message_id", STRING | STORED);
    let from = b.add_text_field("from", TEXT | STORED);
    let to = b.add_text_field("to", TEXT);
    let attachment = b.add_text_field("attachment", TEXT | STORED);
    let subject = Language::ALL.map(|l| b.add_text_field(&format!("subject_{}", l.name()), text(l, true)));
    let body = Language::ALL.map(|l| b.add_text_field(&format!("body_{}", l.name()), text(l, true)));
    let fields = Fields {
        key,
        list,
        lang,
        date,
        message_id,
        from,
        to,
        attachment,
        subject,
        body,
    };
    (b.build(), fields)
}
