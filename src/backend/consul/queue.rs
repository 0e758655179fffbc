//! The fair queue (`--queue`): waiters are served in arrival order, and a handoff costs the same
//! whatever the queue's length (README, "Fair queue").
//!
//! Each waiter writes an entry `<key>/.queue/<session>` acquired by a short-TTL session of its
//! own (behavior `delete`, so the entry disappears when the waiter dies). Consul's `CreateIndex`
//! orders the entries. A waiter watches only the entry just ahead of it, with a blocking query;
//! the head of the queue runs the ordinary acquire recipe on the lock key. Exclusion still rests
//! on the lock key alone, so queue users and non-queue users exclude each other.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api::KvPair;
use super::client::ConsulClient;
use super::session::{self, OwnedSession};
use super::wait::{interruptible, lock_key, Interrupt, STANDBY_WAIT};
use super::{value, ConsulBackend};
use crate::backend::retry::{self, Backoff};
use crate::backend::{
    BackendError, Behavior, Checks, LockInfo, LockRequest, QueuedWaiter, SessionSettings, Wait,
};

/// The TTL of a waiter's queue session: a waiter that dies leaves the queue within 2× this
/// (Consul's TTL grace), so it never blocks those behind it for longer.
const QUEUE_TTL_MAX: Duration = Duration::from_secs(15);

/// The prefix under which `key`'s queue entries live.
pub(crate) fn queue_prefix(key: &str) -> String {
    format!("{}/.queue/", key.trim_end_matches('/'))
}

/// Whether a KV key is a queue entry (not a lock): listings skip them.
pub(crate) fn is_queue_entry(kv_key: &str) -> bool {
    kv_key.contains("/.queue/")
}

/// A waiter's place in the queue: its entry and the session that keeps it alive.
pub(crate) struct Ticket {
    session: OwnedSession,
    entry_key: String,
    /// Stops the renew task.
    stop: CancellationToken,
    /// Becomes true when the queue session is gone (renew answered 404).
    gone: watch::Receiver<bool>,
    /// For the cleanup of a ticket dropped without [`ConsulBackend::leave`].
    client: ConsulClient,
    left: bool,
}

impl Drop for Ticket {
    /// An acquisition dropped while queued (a library caller's timeout) must leave the queue:
    /// its renew task would otherwise keep the entry, and everyone behind it, waiting for as
    /// long as the process lives.
    fn drop(&mut self) {
        if self.left {
            return;
        }
        self.stop.cancel();
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (client, session, entry) = (
            self.client.clone(),
            self.session.clone(),
            self.entry_key.clone(),
        );
        crate::backend::cleanup::spawn(async move {
            let _ = client.kv_delete(&entry, None).await;
            session::destroy(&client, &session).await;
        });
    }
}

/// How waiting in the queue ended.
pub(crate) enum QueueWait {
    /// This waiter is first in line.
    Head(Ticket),
    /// Not first and `--non-blocking`: the current holder, if any.
    Behind(Option<LockInfo>),
    TimedOut,
    Cancelled,
}

impl ConsulBackend {
    /// Joins the queue and waits until first in line; rides out transient trouble and
    /// re-joins (at the back) if the queue session was lost.
    pub(crate) async fn queue_until_head(
        &self,
        request: &LockRequest,
        stop: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<QueueWait, BackendError> {
        let mut backoff = Backoff::default();
        let mut ticket: Option<Ticket> = None;
        loop {
            let result = async {
                if ticket.is_none() {
                    ticket = Some(self.enqueue(request).await?);
                }
                let mine = ticket.as_ref().expect("ticket was just set");
                self.wait_for_turn(request, mine, stop, deadline).await
            };
            let err = match result.await {
                Ok(Some(())) => {
                    backoff.succeeded("waiting in the queue");
                    let head = ticket.take().expect("a head has a ticket");
                    return Ok(QueueWait::Head(head));
                }
                Ok(None) => {
                    let outcome = self.why_not_head(request, stop, deadline).await;
                    if let Some(t) = ticket.take() {
                        self.leave(t).await;
                    }
                    return outcome;
                }
                Err(err) => err,
            };
            if matches!(err, BackendError::SessionGone(_)) {
                if let Some(t) = ticket.take() {
                    self.leave(t).await;
                }
            } else if !(err.is_transient() && self.client.answered()) {
                if let Some(t) = ticket.take() {
                    self.leave(t).await;
                }
                return Err(err);
            }
            let pause = backoff.failed("waiting in the queue", &err);
            match interruptible(tokio::time::sleep(pause), stop, deadline).await {
                Ok(()) => {}
                Err(interrupt) => {
                    if let Some(t) = ticket.take() {
                        self.leave(t).await;
                    }
                    return Ok(match interrupt {
                        Interrupt::Cancelled => QueueWait::Cancelled,
                        Interrupt::TimedOut => QueueWait::TimedOut,
                    });
                }
            }
        }
    }

    /// After [`Self::wait_for_turn`] returned `None`: stopped, timed out, or (non-blocking)
    /// someone is ahead.
    async fn why_not_head(
        &self,
        request: &LockRequest,
        stop: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<QueueWait, BackendError> {
        if stop.is_cancelled() {
            return Ok(QueueWait::Cancelled);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(QueueWait::TimedOut);
        }
        let holder = self
            .client
            .kv_get(&lock_key(&request.key, request.layout), None)
            .await
            .ok()
            .and_then(|read| read.value)
            .filter(|p| p.holder().is_some())
            .map(|p| value::decode(&request.key, &p));
        Ok(QueueWait::Behind(holder))
    }

    /// Writes this waiter's entry, acquired by a fresh queue session that a background task
    /// renews until [`Self::leave`].
    async fn enqueue(&self, request: &LockRequest) -> Result<Ticket, BackendError> {
        let ttl = request
            .session
            .ttl
            .unwrap_or(QUEUE_TTL_MAX)
            .min(QUEUE_TTL_MAX);
        let settings = SessionSettings {
            name: Some(format!(
                "lockwrap queue {} on {} pid {}",
                request.key, self.identity.hostname, self.identity.pid
            )),
            ttl: Some(ttl),
            lock_delay: Duration::ZERO,
            // The entry goes with the session: a dead waiter leaves the queue by itself.
            behavior: Behavior::Delete,
            checks: Checks::None,
            health_check_ttl: None,
        };
        let owned = session::create(
            &self.client,
            &request.key,
            &settings,
            &self.identity,
            None,
            None,
        )
        .await?;
        let entry_key = format!("{}{}", queue_prefix(&request.key), owned.id);
        let entry = json!({
            "holder": self.identity.to_json(),
            "since": value::now_iso8601(),
        });
        let body = serde_json::to_vec(&entry).unwrap_or_default();
        let params = [("acquire", owned.id.clone())];
        match self.client.kv_put(&entry_key, body, &params).await {
            Ok(true) => {}
            Ok(false) => {
                session::destroy(&self.client, &owned).await;
                return Err(BackendError::Transient(format!(
                    "could not write the queue entry {entry_key}"
                )));
            }
            Err(err) => {
                session::destroy(&self.client, &owned).await;
                let _ = self.client.kv_delete(&entry_key, None).await;
                return Err(err);
            }
        }
        let stop = CancellationToken::new();
        let (tx, gone) = watch::channel(false);
        tokio::spawn(renew_queue_session(
            self.client.clone(),
            owned.id.clone(),
            ttl,
            tx,
            stop.clone(),
        ));
        tracing::debug!(entry = %entry_key, "joined the queue");
        Ok(Ticket {
            session: owned,
            entry_key,
            stop,
            gone,
            client: self.client.clone(),
            left: false,
        })
    }

    /// Waits until `ticket` is first in line (`Some`), or until stopped, timed out, or found
    /// behind someone with `--non-blocking` (`None`). Watches only the entry just ahead.
    async fn wait_for_turn(
        &self,
        request: &LockRequest,
        ticket: &Ticket,
        stop: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<Option<()>, BackendError> {
        let prefix = queue_prefix(&request.key);
        let mut last_position: Option<usize> = None;
        loop {
            if *ticket.gone.borrow() {
                return Err(BackendError::SessionGone(ticket.session.id.clone()));
            }
            let listed = self.client.kv_list(&prefix, None).await?;
            let live = live_entries(listed.value);
            let Some(position) = live.iter().position(|p| p.key == ticket.entry_key) else {
                // Our entry is gone (session lost, or removed by hand): join again.
                return Err(BackendError::SessionGone(ticket.session.id.clone()));
            };
            self.telemetry.queue_waiters(Some(live.len()));
            if last_position != Some(position) {
                tracing::info!(
                    event = "queued",
                    position = position + 1,
                    waiting = live.len(),
                    "waiting in the queue: position {} of {}",
                    position + 1,
                    live.len()
                );
                last_position = Some(position);
            }
            if position == 0 {
                return Ok(Some(()));
            }
            if request.wait == Wait::NonBlocking {
                return Ok(None);
            }
            let ahead = &live[position - 1];
            let watch = self
                .client
                .kv_get(&ahead.key, Some((ahead.modify_index, STANDBY_WAIT)));
            let mut gone = ticket.gone.clone();
            let woke = async {
                tokio::select! {
                    read = watch => read.map(|_| ()),
                    _ = gone.wait_for(|g| *g) => Ok(()),
                }
            };
            match interruptible(woke, stop, deadline).await {
                Ok(read) => read?,
                Err(_) => return Ok(None),
            }
        }
    }

    /// Removes the entry and destroys the queue session; best effort (the session's TTL and
    /// behavior `delete` clean up whatever this cannot).
    pub(crate) async fn leave(&self, mut ticket: Ticket) {
        ticket.stop.cancel();
        self.telemetry.queue_waiters(None);
        if let Err(err) = self.client.kv_delete(&ticket.entry_key, None).await {
            tracing::debug!(entry = %ticket.entry_key, %err, "could not remove the queue entry; it goes with its session");
        }
        session::destroy(&self.client, &ticket.session).await;
        // Only now: dropped midway, the ticket's own drop finishes the job.
        ticket.left = true;
    }

    /// The queue of `key` in order, for `status`.
    pub(crate) async fn read_queue(&self, key: &str) -> Result<Vec<QueuedWaiter>, BackendError> {
        let listed = self.client.kv_list(&queue_prefix(key), None).await?;
        Ok(live_entries(listed.value)
            .into_iter()
            .enumerate()
            .map(|(i, pair)| {
                let entry: Option<serde_json::Value> =
                    serde_json::from_slice(&pair.value_bytes()).ok();
                let field = |name: &str| entry.as_ref().and_then(|e| e.get(name)).cloned();
                QueuedWaiter {
                    position: i + 1,
                    session: pair.holder().unwrap_or_default().to_string(),
                    holder: field("holder"),
                    since: field("since").and_then(|v| v.as_str().map(str::to_string)),
                }
            })
            .collect())
    }
}

/// Entries still held by a live session, in arrival order.
fn live_entries(mut pairs: Vec<KvPair>) -> Vec<KvPair> {
    pairs.retain(|p| p.holder().is_some());
    pairs.sort_by_key(|p| p.create_index);
    pairs
}

/// Renews a queue session every TTL/2 (retrying sooner after a failure); reports a 404.
async fn renew_queue_session(
    client: super::ConsulClient,
    id: String,
    ttl: Duration,
    gone: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut pause = ttl / 2;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        match client.session_renew(&id, ttl / 3).await {
            Ok(()) => pause = ttl / 2,
            Err(BackendError::SessionGone(_)) => {
                gone.send_replace(true);
                return;
            }
            Err(err) => {
                tracing::debug!(%err, "queue session renew failed; retrying");
                pause = retry::jitter(ttl / 6);
            }
        }
    }
}
