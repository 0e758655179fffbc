//! Everything Consul-specific: the HTTP client, API types, sessions, the lock and semaphore
//! recipes, and the [`Lease`] that holds a lock.

pub(crate) mod api;
pub(crate) mod client;
mod crossed;
pub(crate) mod env;
pub(crate) mod inspect;
pub(crate) mod key_hold;
pub(crate) mod lease;
pub(crate) mod lock;
mod naming;
pub(crate) mod queue;
pub(crate) mod scope;
pub(crate) mod semaphore;
pub(crate) mod session;
pub(crate) mod settings;
pub(crate) mod value;
pub(crate) mod wait;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use client::{ConsulClient, ConsulSettings, HttpAuth, SettingsError};
pub use lease::Lease;

use crate::backend::retry;
use crate::backend::timing::TimingPlan;
use crate::backend::{
    AcquireObserver, Acquired, BackendError, Layout, LockBackend, LockInfo, LockRequest, WaitingFor,
};
use crate::backend::{BackendEvents, NoEvents};
use value::Identity;

/// The Consul lock store.
#[derive(Clone, Debug)]
pub struct ConsulBackend {
    pub(crate) client: ConsulClient,
    pub(crate) identity: Identity,
    /// Where renewals, health and observed holders are reported.
    pub(crate) telemetry: Arc<dyn BackendEvents>,
}

impl ConsulBackend {
    pub(crate) fn new(client: ConsulClient) -> Self {
        Self::with_events(client, Arc::new(NoEvents))
    }

    pub(crate) fn with_events(client: ConsulClient, telemetry: Arc<dyn BackendEvents>) -> Self {
        let identity = Identity::current().in_scope(client.namespace(), client.partition());
        ConsulBackend {
            client,
            identity,
            telemetry,
        }
    }
}

impl ConsulBackend {
    /// The semaphore recipe, retried whole through transient Consul trouble the way the lock's
    /// acquire loop retries its steps (docs/timing.md, "Consul trouble"): each failed attempt
    /// has already destroyed its session, and removed its contender key unless `.lock` may
    /// list it.
    async fn acquire_semaphore_riding_out(
        &self,
        request: &LockRequest,
        plan: &TimingPlan,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
    ) -> Result<Acquired<Lease>, BackendError> {
        let started = std::time::Instant::now();
        let non_blocking = request.wait == crate::backend::Wait::NonBlocking;
        let give_up = if non_blocking {
            Some(started + retry::NON_BLOCKING_PATIENCE)
        } else {
            request.wait.deadline(started)
        };
        let mut backoff = retry::Backoff::default();
        let mut history = semaphore::PrefixHistory::default();
        loop {
            let err = match self
                .acquire_semaphore(request, plan, observer, stop, &mut history)
                .await
            {
                Err(err) if err.is_transient() && self.client.answered() => err,
                // Our waiting session vanished (the agent lost its state, or it expired while
                // we could not renew): wait again with a new one, as a lock's waiter does.
                Err(err @ BackendError::SessionGone(_)) => {
                    history.session_gone(&request.key);
                    err
                }
                other => return other,
            };
            let pause = backoff.failed("acquiring the semaphore", &err);
            if give_up.is_some_and(|at| std::time::Instant::now() + pause >= at) {
                return if non_blocking {
                    Err(err)
                } else {
                    Ok(Acquired::TimedOut)
                };
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(Acquired::Cancelled),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

impl LockBackend for ConsulBackend {
    type Lease = Lease;

    async fn acquire(
        &self,
        request: &LockRequest,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
    ) -> Result<Acquired<Lease>, BackendError> {
        // The timing plan, once per acquisition and before anything is created: what the
        // session's check and the lease's cadences follow (docs/timing.md). Configuration
        // validation refuses unsafe plans first, so an error here is a library caller's.
        let plan = request
            .timing_plan()
            .map_err(|unsafe_plan| BackendError::Invalid(unsafe_plan.message))?;
        if request.limit > 1 {
            self.acquire_semaphore_riding_out(request, &plan, observer, stop)
                .await
        } else {
            self.acquire_lock(request, &plan, observer, stop).await
        }
    }

    async fn find(&self, key: &str, layout: Layout) -> Result<Option<LockInfo>, BackendError> {
        let read = self
            .client
            .kv_get_retry(&wait::lock_key(key, layout))
            .await?;
        // A semaphore (`-n N`) lives under its prefix: `status PREFIX` shows its holders.
        let maybe_semaphore = match read.value.as_ref() {
            None => layout == Layout::Default,
            Some(pair) => inspect::is_semaphore_entry(pair),
        };
        if maybe_semaphore {
            if let Some(found) = self.find_semaphore(key).await? {
                return Ok(found);
            }
        }
        let Some(mut info) = read
            .value
            .filter(|p| p.holder().is_some())
            .map(|p| value::decode(key, &p))
        else {
            return Ok(None);
        };
        let queue = self.read_queue(key).await?;
        info.queue = (!queue.is_empty()).then_some(queue);
        Ok(Some(info))
    }

    async fn list(
        &self,
        prefix: &str,
        layout: Layout,
    ) -> Result<Vec<(String, Option<LockInfo>)>, BackendError> {
        let read = self.client.kv_list(prefix, None).await?;
        let mut out = Vec::new();
        for pair in &read.value {
            if queue::is_queue_entry(&pair.key) {
                continue;
            }
            // A semaphore is listed once, under its prefix, with its holders; its `.lock` and
            // contender keys are not locks (README, "Key layouts").
            if inspect::is_semaphore_entry(pair) {
                if let Some(sem) = inspect::semaphore_prefix(pair) {
                    let info = inspect::semaphore_info(sem, pair, &read.value);
                    out.push((sem.to_string(), info));
                }
                continue;
            }
            let key = match layout {
                Layout::Default => pair.key.clone(),
                Layout::ConsulLock => match pair.key.strip_suffix("/.lock") {
                    Some(prefix) => prefix.to_string(),
                    None => continue,
                },
            };
            let info = pair.holder().map(|_| value::decode(&key, pair));
            out.push((key, info));
        }
        Ok(out)
    }

    async fn release(&self, key: &str, layout: Layout) -> Result<bool, BackendError> {
        self.force_release(key, layout).await
    }

    async fn waiting_for(&self, request: &LockRequest) -> Result<WaitingFor, BackendError> {
        self.describe_wait(request).await
    }
}
