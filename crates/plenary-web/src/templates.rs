//! The template environment: built-in templates from `archive-templates/`, each replaceable
//! by a file of the same name in the configured override directory (read once at start-up),
//! and the translation functions `_` and `_n` (see [`crate::i18n`]).

use crate::i18n::{fill, Catalogs};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, State};
use std::path::Path;
use std::sync::Arc;

/// Every built-in template, by name.
pub const BUILTIN: [(&str, &str); 17] = [
    ("access.html", include_str!("../../../archive-templates/access.html")),
    ("base.html", include_str!("../../../archive-templates/base.html")),
    ("index.html", include_str!("../../../archive-templates/index.html")),
    ("list.html", include_str!("../../../archive-templates/list.html")),
    ("threads.html", include_str!("../../../archive-templates/threads.html")),
    ("pager.html", include_str!("../../../archive-templates/pager.html")),
    ("month.html", include_str!("../../../archive-templates/month.html")),
    ("authors.html", include_str!("../../../archive-templates/authors.html")),
    ("author.html", include_str!("../../../archive-templates/author.html")),
    ("message.html", include_str!("../../../archive-templates/message.html")),
    ("thread.html", include_str!("../../../archive-templates/thread.html")),
    ("search.html", include_str!("../../../archive-templates/search.html")),
    (
        "search_help.html",
        include_str!("../../../archive-templates/search_help.html"),
    ),
    ("error.html", include_str!("../../../archive-templates/error.html")),
    ("confirm.html", include_str!("../../../archive-templates/confirm.html")),
    ("atom.xml", include_str!("../../../archive-templates/atom.xml")),
    ("robots.txt", include_str!("../../../archive-templates/robots.txt")),
];
const BUILTIN_CSS: &str = include_str!("../../../archive-templates/style.css");

/// Compiled templates, the stylesheet and the translations.
pub struct Templates {
    env: Environment<'static>,
    css: String,
    catalogs: Arc<Catalogs>,
}

fn kwargs_list(kwargs: &Kwargs) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for k in kwargs.args() {
        let v: Value = kwargs.get(k)?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn ui_lang(state: &State) -> String {
    state
        .lookup("ui_lang")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "en".into())
}

impl Templates {
    /// Load the templates; a broken override is an error naming the file.
    pub fn load(override_dir: Option<&Path>) -> Result<Templates, String> {
        let catalogs = Arc::new(Catalogs::load(override_dir)?);
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") || name.ends_with(".xml") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        // HTML escaping of &, <, >, " and ' only: minijinja's default also escapes `/`, which
        // made every URL three times longer (all our attributes are quoted, so `/` is safe).
        env.set_formatter(|out, state, value| {
            if matches!(state.auto_escape(), minijinja::AutoEscape::Html) && !value.is_safe() {
                if let Some(s) = value.as_str() {
                    let mut buf = String::with_capacity(s.len() + 16);
                    crate::render::escape(s, &mut buf);
                    return Ok(std::fmt::Write::write_str(out, &buf)?);
                }
            }
            minijinja::escape_formatter(out, state, value)
        });
        let c = catalogs.clone();
        env.add_function(
            "_",
            move |state: &State, msgid: String, kwargs: Kwargs| -> Result<String, Error> {
                let args = kwargs_list(&kwargs)?;
                Ok(fill(c.get(&ui_lang(state), &msgid, None), &args))
            },
        );
        let c = catalogs.clone();
        env.add_function(
            "_n",
            move |state: &State, one: String, many: String, n: i64, kwargs: Kwargs| -> Result<String, Error> {
                let args = kwargs_list(&kwargs)?;
                let n = u64::try_from(n).unwrap_or(0);
                Ok(fill(c.get(&ui_lang(state), &one, Some((&many, n))), &args))
            },
        );
        for (name, builtin) in BUILTIN {
            let source = match override_dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read template {}: {e}", path.display()))?,
                None => builtin.to_string(),
            };
            env.add_template_owned(name.to_string(), source)
                .map_err(|e| format!("template {name}: {e:#}"))?;
        }
        let css = match override_dir.map(|d| d.join("style.css")).filter(|p| p.is_file()) {
            Some(path) => std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            None => BUILTIN_CSS.to_string(),
        };
        // Check every template compiles now, not on the first request.
        for (name, _) in BUILTIN {
            env.get_template(name).map_err(|e| format!("template {name}: {e:#}"))?;
        }
        Ok(Templates { env, css, catalogs })
    }

    pub fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }

    pub fn css(&self) -> &str {
        &self.css
    }

    pub fn catalogs(&self) -> &Catalogs {
        &self.catalogs
    }

    /// Translate a text produced in Rust (not in a template).
    pub fn tr(&self, lang: &str, msgid: &str) -> String {
        self.catalogs.get(lang, msgid, None).to_string()
    }
}
