//! `lockwrap unlock [-r]` and `lockwrap status [-r]`: read-only or forcing commands that need no
//! session of their own.

use crate::backend::LockBackend;
use crate::config::Query;
use crate::exit::{Outcome, Result};
use crate::locks::LockManager;
use crate::output;

/// Prints the released key (or `null`), or with `-r` the sorted list of released keys.
pub(super) async fn unlock<B: LockBackend>(
    query: &Query,
    manager: &LockManager<B>,
) -> Result<Outcome> {
    let key = &query.key;
    if query.regex {
        // `status -r` lists a semaphore under its prefix; `unlock` frees locks only, so the
        // semaphores are left out (README, "Key layouts").
        let locked = manager
            .find_regex(key)
            .await?
            .into_iter()
            .filter(|(_, info)| info.as_ref().is_some_and(|i| i.semaphore.is_none()))
            .map(|(k, _)| k);
        let mut released = manager.release_all(locked).await?;
        released.sort();
        output::print(&released);
    } else if manager.release(key).await? {
        output::print(key);
    } else {
        output::null();
    }
    Ok(Outcome::Success)
}

/// Prints the holder info of a key (or `null`), or with `-r` a map of key → info/null. A
/// semaphore shows as one entry under its prefix, with `limit` and `holders`.
pub(super) async fn status<B: LockBackend>(
    query: &Query,
    manager: &LockManager<B>,
) -> Result<Outcome> {
    let key = &query.key;
    if query.regex {
        output::print(&manager.find_regex(key).await?);
    } else {
        output::print(&manager.find(key).await?);
    }
    Ok(Outcome::Success)
}
