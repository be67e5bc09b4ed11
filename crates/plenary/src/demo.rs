//! `plenary serve --demo`: a demo list with a small archive, so a newcomer has something to
//! look at. Seeded only when the store has no lists yet.

use crate::config::Config;
use crate::import::{self, ImportLimits};
use plenary_core::ListAddress;
use plenary_store::Store;

const DEMO_MBOX: &str = include_str!("../../../config/demo.mbox");
pub const DEMO_LIST: &str = "demo@plenary.localhost";

pub async fn seed(store: &Store, config: &Config) -> Result<(), String> {
    if !store.lists().map_err(|e| e.to_string())?.is_empty() {
        return Ok(());
    }
    let addr = ListAddress::parse(DEMO_LIST).map_err(|e| e.to_string())?;
    let list = store
        .create_list(
            &addr,
            "Demo coalition",
            "A demonstration list with a few messages. Send mail to it over SMTP to see it appear.",
        )
        .map_err(|e| e.to_string())?;
    // Open posting: the README's first step is to post to it and watch the post appear,
    // which a members-only list (the default) would hold for a moderator instead.
    let mut settings = list.settings.clone();
    settings.posting = plenary_core::list::PostingPolicy::Open;
    store
        .set_list_settings(DEMO_LIST, settings)
        .map_err(|e| e.to_string())?;
    let path = config.data_dir.join("demo.mbox");
    std::fs::write(&path, DEMO_MBOX).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let limits = ImportLimits {
        max_message_size: config.smtp.max_message_size,
        mime: config.smtp.mime,
    };
    let s = import::import(store.clone(), list.id, vec![path], limits, tx).await?;
    tracing::info!(list = DEMO_LIST, imported = s.imported, "seeded the demo list");
    Ok(())
}
