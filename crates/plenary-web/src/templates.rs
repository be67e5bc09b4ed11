//! The template environment: built-in templates from `archive-templates/`, each replaceable
//! by a file of the same name in the configured override directory (read once at start-up).

use minijinja::Environment;
use std::path::Path;

const BUILTIN: [(&str, &str); 9] = [
    ("base.html", include_str!("../../../archive-templates/base.html")),
    ("index.html", include_str!("../../../archive-templates/index.html")),
    ("list.html", include_str!("../../../archive-templates/list.html")),
    ("month.html", include_str!("../../../archive-templates/month.html")),
    ("message.html", include_str!("../../../archive-templates/message.html")),
    ("thread.html", include_str!("../../../archive-templates/thread.html")),
    ("search.html", include_str!("../../../archive-templates/search.html")),
    ("error.html", include_str!("../../../archive-templates/error.html")),
    ("confirm.html", include_str!("../../../archive-templates/confirm.html")),
];
const BUILTIN_CSS: &str = include_str!("../../../archive-templates/style.css");

/// Compiled templates plus the stylesheet.
pub struct Templates {
    env: Environment<'static>,
    css: String,
}

impl Templates {
    /// Load the templates; a broken override is an error naming the file.
    pub fn load(override_dir: Option<&Path>) -> Result<Templates, String> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
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
        // Check every template renders its structure now, not on the first request.
        for (name, _) in BUILTIN {
            env.get_template(name).map_err(|e| format!("template {name}: {e:#}"))?;
        }
        Ok(Templates { env, css })
    }

    pub fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }

    pub fn css(&self) -> &str {
        &self.css
    }
}
