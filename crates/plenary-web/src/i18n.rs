//! Translations of the interface text: gettext `.po` catalogs, one per language.
//!
//! Templates write `{{ _("Recent threads") }}`, `{{ _("{n} replies", n=3) }}` or, for
//! plurals, `{{ _n("{n} message", "{n} messages", count, n=count) }}`. The English text is
//! the key, so a missing translation shows English, never a blank. Catalogs are built in
//! (`archive-templates/i18n/*.po`) and a deployer can replace or add one by putting
//! `i18n/LANG.po` in the templates override directory. Values substituted into `{name}`
//! placeholders, and the translations themselves, are escaped like any template value.
//!
//! The page language is the reader's choice (the `plenary_lang` cookie, set by `/lang`)
//! or else the best match in `Accept-Language`, else English.

use std::collections::HashMap;
use std::path::Path;

/// Built-in catalogs.
const BUILTIN: [(&str, &str); 1] = [("fr", include_str!("../../../archive-templates/i18n/fr.po"))];

/// Languages the interface offers, with their own names.
pub const NAMES: [(&str, &str); 2] = [("en", "English"), ("fr", "Français")];

/// One language's translations: msgid → forms (one, or one per plural form).
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: HashMap<String, Vec<String>>,
    plural: fn(u64) -> usize,
}

fn plural_en(n: u64) -> usize {
    usize::from(n != 1)
}

fn plural_fr(n: u64) -> usize {
    usize::from(n > 1)
}

/// Every catalog, by language tag.
#[derive(Debug, Default, Clone)]
pub struct Catalogs {
    langs: HashMap<String, Catalog>,
}

impl Catalogs {
    pub fn load(override_dir: Option<&Path>) -> Result<Catalogs, String> {
        let mut langs = HashMap::new();
        let mut sources: Vec<(String, String, String)> = BUILTIN
            .iter()
            .map(|(l, s)| (l.to_string(), s.to_string(), format!("built-in {l}.po")))
            .collect();
        if let Some(dir) = override_dir.map(|d| d.join("i18n")).filter(|d| d.is_dir()) {
            let rd = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            for e in rd.flatten() {
                let p = e.path();
                let Some(lang) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".po"))
                else {
                    continue;
                };
                let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                sources.retain(|(l, _, _)| l != lang);
                sources.push((lang.to_ascii_lowercase(), text, p.display().to_string()));
            }
        }
        for (lang, text, origin) in sources {
            let entries = parse_po(&text).map_err(|e| format!("{origin}: {e}"))?;
            let plural = if lang == "fr" || lang == "pt" {
                plural_fr
            } else {
                plural_en
            };
            langs.insert(lang, Catalog { entries, plural });
        }
        Ok(Catalogs { langs })
    }

    /// Whether `lang` has its own entry for `msgid` (even one equal to the English).
    pub fn translates(&self, lang: &str, msgid: &str) -> bool {
        self.langs.get(lang).is_some_and(|c| c.entries.contains_key(msgid))
    }

    /// Every language the interface can be shown in, English first, with its own name (the
    /// tag, for a catalog a deployer added that we have no name for).
    pub fn languages(&self) -> Vec<(String, String)> {
        let mut codes: Vec<&String> = self.langs.keys().collect();
        codes.sort();
        let name = |c: &str| {
            NAMES
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|| c.to_string())
        };
        std::iter::once(("en".to_string(), name("en")))
            .chain(codes.into_iter().filter(|c| *c != "en").map(|c| (c.clone(), name(c))))
            .collect()
    }

    /// Whether the interface can be shown in `lang`.
    pub fn has(&self, lang: &str) -> bool {
        lang == "en" || self.langs.contains_key(lang)
    }

    /// Translate `msgid` (plural form for `n` when given).
    pub fn get<'a>(&'a self, lang: &str, msgid: &'a str, plural: Option<(&'a str, u64)>) -> &'a str {
        let english = match plural {
            Some((p, n)) if plural_en(n) == 1 => p,
            _ => msgid,
        };
        let Some(c) = self.langs.get(lang) else { return english };
        let Some(forms) = c.entries.get(msgid) else {
            return english;
        };
        let i = plural.map(|(_, n)| (c.plural)(n)).unwrap_or(0);
        match forms.get(i).or(forms.first()) {
            Some(t) if !t.is_empty() => t,
            _ => english,
        }
    }

    /// The page language: a valid cookie choice, else the best `Accept-Language` match.
    pub fn negotiate(&self, cookie: Option<&str>, accept: Option<&str>) -> String {
        if let Some(c) = cookie.map(str::to_ascii_lowercase).filter(|c| self.has(c)) {
            return c;
        }
        let mut best: Option<(f32, String)> = None;
        for item in accept.unwrap_or("").split(',').take(20) {
            let mut parts = item.trim().split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()))
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("").to_string();
            if q > 0.0 && self.has(&primary) && best.as_ref().is_none_or(|(bq, _)| q > *bq) {
                best = Some((q, primary));
            }
        }
        best.map(|(_, l)| l).unwrap_or_else(|| "en".into())
    }
}

/// Substitute `{name}` placeholders.
pub fn fill(text: &str, args: &[(String, String)]) -> String {
    let mut s = text.to_string();
    for (k, v) in args {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Parse a `.po` file: `msgid`, `msgid_plural`, `msgstr` and `msgstr[N]`, with continued
/// string lines and C escapes. Fuzzy or obsolete entries are skipped.
pub fn parse_po(text: &str) -> Result<HashMap<String, Vec<String>>, String> {
    #[derive(PartialEq)]
    enum Field {
        None,
        Id,
        Plural,
        Str(usize),
    }
    let mut out = HashMap::new();
    let (mut id, mut forms, mut field, mut fuzzy) = (None::<String>, Vec::<String>::new(), Field::None, false);
    let mut flush = |id: &mut Option<String>, forms: &mut Vec<String>, fuzzy: &mut bool| {
        if let Some(i) = id.take() {
            if !i.is_empty() && !*fuzzy {
                out.insert(i, std::mem::take(forms));
            }
            forms.clear();
            *fuzzy = false;
        }
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let err = |m: &str| format!("line {}: {m}", n + 1);
        if line.is_empty() || line.starts_with("#~") {
            continue;
        }
        if let Some(flags) = line.strip_prefix("#,") {
            if id.is_some() && field != Field::Id {
                flush(&mut id, &mut forms, &mut fuzzy);
                field = Field::None;
            }
            fuzzy |= flags.contains("fuzzy");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (key, rest) = match line.split_once(char::is_whitespace) {
            Some((k, r)) if !line.starts_with('"') => (k, r.trim()),
            _ => ("", line),
        };
        let value = unquote(rest).ok_or_else(|| err("expected a quoted string"))?;
        match key {
            "msgid" => {
                flush(&mut id, &mut forms, &mut fuzzy);
                id = Some(value);
                field = Field::Id;
            }
            "msgid_plural" => field = Field::Plural,
            "msgstr" => {
                forms.push(value);
                field = Field::Str(forms.len() - 1);
            }
            k if k.starts_with("msgstr[") => {
                let i: usize = k[7..k.len().saturating_sub(1)]
                    .parse()
                    .map_err(|_| err("bad plural index"))?;
                if forms.len() <= i {
                    forms.resize(i + 1, String::new());
                }
                forms[i] = value;
                field = Field::Str(i);
            }
            "" => match field {
                Field::Id => {
                    if let Some(i) = id.as_mut() {
                        i.push_str(&value)
                    }
                }
                Field::Str(i) => forms[i].push_str(&value),
                Field::Plural => {}
                Field::None => return Err(err("a string outside any entry")),
            },
            other => return Err(err(&format!("unknown keyword {other}"))),
        }
    }
    flush(&mut id, &mut forms, &mut fuzzy);
    Ok(out)
}

fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                other => {
                    out.push('\\');
                    out.push(other)
                }
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn po_files_parse_with_plurals_and_continuations() {
        let po = "# comment\nmsgid \"\"\nmsgstr \"Content-Type: text/plain\\n\"\n\nmsgid \"Search\"\nmsgstr \"Rechercher\"\n\nmsgid \"{n} message\"\nmsgid_plural \"{n} messages\"\nmsgstr[0] \"{n} message\"\nmsgstr[1] \"{n} \"\n\"messages\"\n\n#, fuzzy\nmsgid \"Old\"\nmsgstr \"Vieux\"\n";
        let e = parse_po(po).expect("parses");
        assert_eq!(e["Search"], vec!["Rechercher"]);
        assert_eq!(e["{n} message"], vec!["{n} message", "{n} messages"]);
        assert!(!e.contains_key("Old"), "fuzzy entries are not used");
        assert!(parse_po("msgid \"x\nmsgstr \"y\"").is_err());
    }

    #[test]
    fn builtin_french_is_complete_and_negotiated() {
        let c = Catalogs::load(None).expect("catalogs");
        assert_eq!(c.get("fr", "Search", None), "Rechercher");
        assert_eq!(c.get("fr", "{n} message", Some(("{n} messages", 0))), "{n} message");
        assert_eq!(c.get("fr", "{n} message", Some(("{n} messages", 2))), "{n} messages");
        assert_eq!(c.get("en", "{n} message", Some(("{n} messages", 2))), "{n} messages");
        assert_eq!(c.get("de", "Search", None), "Search");
        assert_eq!(c.negotiate(None, Some("de-DE,fr-CH;q=0.8,en;q=0.5")), "fr");
        assert_eq!(c.negotiate(None, Some("en-GB,fr;q=0.9")), "en");
        assert_eq!(c.negotiate(Some("fr"), Some("en")), "fr");
        assert_eq!(c.negotiate(Some("xx"), None), "en");
        assert_eq!(fill("{n} replies", &[("n".into(), "3".into())]), "3 replies");
    }

    #[test]
    fn a_deployer_can_replace_or_add_a_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("i18n")).expect("mkdir");
        std::fs::write(dir.path().join("i18n/fr.po"), "msgid \"Search\"\nmsgstr \"Chercher\"\n").expect("write");
        std::fs::write(dir.path().join("i18n/es.po"), "msgid \"Search\"\nmsgstr \"Buscar\"\n").expect("write");
        let c = Catalogs::load(Some(dir.path())).expect("catalogs");
        assert_eq!(c.get("fr", "Search", None), "Chercher");
        assert_eq!(c.get("es", "Search", None), "Buscar");
        assert_eq!(c.negotiate(None, Some("es-MX")), "es");
        std::fs::write(dir.path().join("i18n/de.po"), "msgid \"Search\nmsgstr \"Suchen\"\n").expect("write");
        let err = Catalogs::load(Some(dir.path())).expect_err("a broken catalog is refused");
        assert!(err.contains("de.po") && err.contains("line 1"), "{err}");
    }
}
