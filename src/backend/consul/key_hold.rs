//! A held lock key (default and `consul-lock` layouts): its watch, and its release with the
//! value marked as released cleanly (so the next holder skips the takeover delay).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api::{next_index, LOCK_FLAG_VALUE};
use super::client::ConsulClient;
use super::lease::{declare, BoxFut, Holding, Watch};
use super::value;
use crate::backend::retry::Backoff;
use crate::backend::{BackendError, Layout, LossReason};

/// How long one watch query may block; long, since Consul answers at once on any change.
const WATCH_WAIT: Duration = Duration::from_secs(300);

/// A lock key this process holds.
pub(crate) struct KeyHold {
    /// The KV key actually acquired (`<prefix>/.lock` for the `consul-lock` layout).
    pub lock_key: String,
    pub layout: Layout,
    /// The acquired value, re-sent with `?release` so the entry keeps the last holder's info.
    pub value: Vec<u8>,
}

impl Holding for KeyHold {
    fn watch(&self, w: Watch) -> BoxFut<'static, ()> {
        Box::pin(watch_key(
            w.client,
            self.lock_key.clone(),
            w.session,
            w.index,
            w.monitor_retry,
            w.loss,
            w.stop,
        ))
    }

    fn release<'a>(
        &'a self,
        client: &'a ConsulClient,
        session: &'a str,
        still_held: bool,
        clean: bool,
        patience: Duration,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            // Release only matters while we still hold it; after a loss the key is not ours.
            if !still_held {
                return Ok(());
            }
            let params = [
                ("release", session.to_string()),
                ("flags", LOCK_FLAG_VALUE.to_string()),
            ];
            // An unclean release gives the key back without the `released` marker, so the
            // next holder waits its takeover delay (docs/timing.md).
            let value = if clean {
                value::mark_released(&self.value)
            } else {
                self.value.clone()
            };
            let result = self.release_key(client, &params, value, patience).await;
            if let Err(err) = &result {
                tracing::warn!(key = %self.lock_key, %err, "release failed; destroying the session releases the key anyway");
            }
            result
        })
    }

    fn after_destroy<'a>(&'a self, client: &'a ConsulClient, clean: bool) -> BoxFut<'a, ()> {
        Box::pin(async move {
            // An unclean release keeps the entry: without it the next holder would take the key
            // for never used and skip its takeover wait (docs/timing.md, "First use").
            if self.layout != Layout::ConsulLock || !clean {
                return;
            }
            // Like Go's Lock.Destroy: remove the lock entry if nobody took it meanwhile — and
            // only our own: another holder's unclean release in between must stay on record.
            if let Ok(read) = client.kv_get(&self.lock_key, None).await {
                if let Some(pair) = read
                    .value
                    .filter(|p| value::still_ours_unheld(p, &self.value))
                {
                    let _ = client
                        .kv_delete(&self.lock_key, Some(pair.modify_index))
                        .await;
                }
            }
        })
    }
}

impl KeyHold {
    /// Writes the released value, riding out a short leader election (a failed release leaves
    /// the key to the session destroy, which is retried longer). Releasing twice is harmless,
    /// so an unknown outcome is simply tried again.
    async fn release_key(
        &self,
        client: &ConsulClient,
        params: &[(&str, String)],
        value: Vec<u8>,
        patience: Duration,
    ) -> Result<(), BackendError> {
        let give_up = Instant::now() + patience;
        let mut backoff = Backoff::default();
        loop {
            match client.kv_put(&self.lock_key, value.clone(), params).await {
                Ok(_) => return Ok(()),
                Err(err @ (BackendError::Transient(_) | BackendError::Unknown(_))) => {
                    let pause = backoff.failed("releasing the lock", &err);
                    if Instant::now() + pause >= give_up {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Watches the lock key with blocking queries; loss when the key goes or changes holder.
/// Read errors alone do not end the hold (the renew deadline does, see `docs/timing.md`),
/// unless `monitor_retry` asks to give up after that many consecutive failures.
pub(crate) async fn watch_key(
    client: ConsulClient,
    key: String,
    session: String,
    mut index: u64,
    monitor_retry: Option<u32>,
    loss: Arc<watch::Sender<Option<LossReason>>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = client.kv_get(&key, Some((index, WATCH_WAIT))) => read,
        };
        match read {
            Ok(read) => {
                failures = 0;
                backoff.succeeded("watching the lock");
                match read.value {
                    None => return declare(&loss, LossReason::KeyDeleted),
                    Some(pair) => match pair.holder() {
                        Some(holder) if holder == session => {
                            index = next_index(index, read.index);
                        }
                        Some(other) => {
                            return declare(&loss, LossReason::HolderChanged(other.to_string()))
                        }
                        None => return declare(&loss, LossReason::SessionInvalidated),
                    },
                }
            }
            Err(err) => {
                failures += 1;
                if monitor_retry.is_some_and(|limit| failures > limit) {
                    return declare(&loss, LossReason::ConsulUnreachable(err.to_string()));
                }
                let pause = backoff.failed("watching the lock", &err);
                // After an agent restart the index starts lower; don't block on the old one.
                index = 0;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause.min(Duration::from_secs(1))) => {}
                }
            }
        }
    }
}
