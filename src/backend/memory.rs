//! An in-memory lock store: the [`LockBackend`] contract without Consul, so the campaign,
//! takeover and sidecar loops can be unit-tested under `tokio::time::pause()`, and library users
//! can test their own code. Faults are injected by hand: [`MemoryBackend::fail_next`] (an outage
//! of the store) and [`MemoryBackend::break_lock`] (a holder losing its lock).
#![cfg(test)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{
    AcquireObserver, Acquired, BackendError, HeldLock, Layout, LockBackend, LockInfo, LockRequest,
    LossReason, Wait,
};

/// A lock store living in this process; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryBackend {
    state: Arc<Mutex<State>>,
    /// Woken on every change, so waiters re-check (like a blocking query).
    changed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    held: HashMap<String, Holder>,
    /// Whether the last release of a key was clean (absent = never held: unclean).
    released_cleanly: HashMap<String, bool>,
    /// The store's index: fencing tokens come from it.
    index: u64,
    /// Acquire calls still to fail with a transient error.
    failures: u32,
}

#[derive(Debug)]
struct Holder {
    info: LockInfo,
    loss: watch::Sender<Option<LossReason>>,
}

impl MemoryBackend {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a test failure already; keep going with the data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next `n` acquire calls fail as if the store were unreachable (transient).
    pub(crate) fn fail_next(&self, n: u32) {
        self.state().failures = n;
    }

    /// Takes `key` away from its holder, as Consul does when a session is invalidated: the
    /// holder's lease reports `reason`, and the next holder sees an unclean release.
    pub(crate) fn break_lock(&self, key: &str, reason: LossReason) -> bool {
        let mut state = self.state();
        let Some(holder) = state.held.remove(key) else {
            return false;
        };
        state.released_cleanly.insert(key.to_string(), false);
        holder.loss.send_replace(Some(reason));
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// The current holder of `key`.
    pub(crate) fn holder(&self, key: &str) -> Option<LockInfo> {
        self.state().held.get(key).map(|h| h.info.clone())
    }

    /// Tries once: `Ok(Some)` held, `Ok(None)` taken by someone else.
    fn try_take(&self, request: &LockRequest) -> Result<Option<MemoryLease>, BackendError> {
        let mut state = self.state();
        if state.failures > 0 {
            state.failures -= 1;
            return Err(BackendError::Transient(
                "memory store: simulated outage".into(),
            ));
        }
        if state.held.contains_key(&request.key) {
            return Ok(None);
        }
        state.index += 1;
        let info = LockInfo {
            key: request.key.clone(),
            session: Some(format!("memory-session-{}", state.index)),
            created: Some(crate::output::now_iso8601()),
            seconds_to_lock: None,
            metadata: request.metadata.clone(),
            holder: None,
            fencing_token: Some(state.index),
            queue: None,
            semaphore: None,
        };
        let (loss, lost) = watch::channel(None);
        let previous_clean = state
            .released_cleanly
            .get(&request.key)
            .copied()
            .unwrap_or(false);
        state.held.insert(
            request.key.clone(),
            Holder {
                info: info.clone(),
                loss,
            },
        );
        Ok(Some(MemoryLease {
            backend: self.clone(),
            info,
            lost,
            previous_clean,
            release_clean: true,
        }))
    }
}

impl LockBackend for MemoryBackend {
    type Lease = MemoryLease;

    async fn acquire(
        &self,
        request: &LockRequest,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
    ) -> Result<Acquired<MemoryLease>, BackendError> {
        let deadline = request.wait.deadline(std::time::Instant::now());
        loop {
            observer.before_attempt(&request.key).await;
            // Registered before the check, so a release in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(lease) = self.try_take(request)? {
                return Ok(Acquired::Held(lease));
            }
            let holder = self.holder(&request.key);
            observer.already_locked(&request.key, holder.as_ref()).await;
            if request.wait == Wait::NonBlocking {
                return Ok(Acquired::Locked(holder));
            }
            let timeout = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return Ok(Acquired::Cancelled),
                _ = timeout => return Ok(Acquired::TimedOut),
                _ = changed => {}
            }
        }
    }

    async fn find(&self, key: &str, _layout: Layout) -> Result<Option<LockInfo>, BackendError> {
        Ok(self.holder(key))
    }

    async fn list(
        &self,
        prefix: &str,
        _layout: Layout,
    ) -> Result<Vec<(String, Option<LockInfo>)>, BackendError> {
        let state = self.state();
        let mut keys: Vec<_> = state
            .held
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, h)| (k.clone(), Some(h.info.clone())))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys)
    }

    async fn release(&self, key: &str, _layout: Layout) -> Result<bool, BackendError> {
        Ok(self.break_lock(key, LossReason::SessionInvalidated))
    }
}

/// A lock held in a [`MemoryBackend`].
#[derive(Debug)]
pub(crate) struct MemoryLease {
    backend: MemoryBackend,
    info: LockInfo,
    lost: watch::Receiver<Option<LossReason>>,
    previous_clean: bool,
    release_clean: bool,
}

impl HeldLock for MemoryLease {
    fn info(&self) -> &LockInfo {
        &self.info
    }

    async fn lost(&mut self) -> LossReason {
        loop {
            if let Some(reason) = self.lost.borrow_and_update().clone() {
                return reason;
            }
            if self.lost.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn release(self) -> Result<(), BackendError> {
        let mut state = self.backend.state();
        let ours = state
            .held
            .get(&self.info.key)
            .is_some_and(|h| h.info.session == self.info.session);
        if ours {
            state.held.remove(&self.info.key);
            state
                .released_cleanly
                .insert(self.info.key.clone(), self.release_clean);
        }
        drop(state);
        self.backend.changed.notify_waiters();
        Ok(())
    }

    fn previous_release_clean(&self) -> bool {
        self.previous_clean
    }

    fn set_release_clean(&mut self, clean: bool) {
        self.release_clean = clean;
    }

    fn detach(self) -> LockInfo {
        self.info.clone()
    }
}
