//! Event hooks: executables called as `EXE <key>` with the `LOCKWRAP_*` environment, bounded by
//! a timeout, failures logged and ignored; and an optional webhook receiving each event as a
//! JSON POST. Nothing here can delay the lock path beyond the hook timeout, and webhooks never.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::backend::{AcquireObserver, LockInfo};
use crate::supervisor::{CommandSpec, Spawner, StdinMode, Tree};

/// The lock events hooks can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    BeforeLock,
    AlreadyLocked,
    Acquired,
    Lost,
    Released,
}

impl Event {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Event::BeforeLock => "before-lock",
            Event::AlreadyLocked => "already-locked",
            Event::Acquired => "acquired",
            Event::Lost => "lost",
            Event::Released => "released",
        }
    }
}

/// Hook executables per event.
#[derive(Debug, Clone, Default)]
pub(crate) struct HookSet {
    pub before_lock: Vec<String>,
    pub already_locked: Vec<String>,
    pub acquired: Vec<String>,
    pub lost: Vec<String>,
    pub released: Vec<String>,
    pub webhook: Option<String>,
}

impl HookSet {
    fn for_event(&self, event: Event) -> &[String] {
        match event {
            Event::BeforeLock => &self.before_lock,
            Event::AlreadyLocked => &self.already_locked,
            Event::Acquired => &self.acquired,
            Event::Lost => &self.lost,
            Event::Released => &self.released,
        }
    }
}

/// Runs hooks; cheap to clone.
#[derive(Clone)]
pub(crate) struct Hooks {
    set: Arc<HookSet>,
    spawner: Spawner,
    timeout: Duration,
    /// Built only when a webhook is configured: a TLS-capable client costs memory.
    http: Option<reqwest::Client>,
}

/// The lock facts hooks receive in their environment and webhooks in their body.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventContext {
    pub key: String,
    pub session: Option<String>,
    pub fencing_token: Option<u64>,
    pub detail: Option<String>,
}

impl EventContext {
    pub(crate) fn for_key(key: &str) -> Self {
        EventContext {
            key: key.to_string(),
            ..Default::default()
        }
    }

    pub(crate) fn from_info(info: &LockInfo) -> Self {
        EventContext {
            key: info.key.clone(),
            session: info.session.clone(),
            fencing_token: info.fencing_token,
            detail: None,
        }
    }
}

impl Hooks {
    pub(crate) fn new(set: HookSet, spawner: Spawner, timeout: Duration) -> Self {
        let http = set.webhook.as_ref().and_then(|_| {
            reqwest::Client::builder()
                .timeout(timeout)
                .use_rustls_tls()
                .build()
                .ok()
        });
        Hooks {
            set: Arc::new(set),
            spawner,
            timeout,
            http,
        }
    }

    /// Runs every hook of `event` one after the other and waits for them (each bounded by the
    /// hook timeout); fires the webhook in the background.
    pub(crate) async fn fire(&self, event: Event, ctx: &EventContext) {
        self.fire_until(event, ctx, None).await;
    }

    /// [`Hooks::fire`], ended early by `stop`: the running hook gets SIGTERM, then SIGKILL after
    /// the grace, and the rest do not start.
    async fn fire_until(
        &self,
        event: Event,
        ctx: &EventContext,
        stop: Option<(&CancellationToken, Duration)>,
    ) {
        self.post_webhook(event, ctx);
        for exe in self.set.for_event(event) {
            if stop.is_some_and(|(token, _)| token.is_cancelled()) {
                return;
            }
            self.run_one(event, exe, ctx, stop).await;
        }
    }

    /// Hooks that must end with a term of leadership (a sidecar's on-acquired hooks, whose
    /// "command" is the application beside it): they run in the background from the acquisition
    /// on, so the loss watch starts at once, and `stop` (the term's end) stops them with `grace`
    /// before the release (README, "The supervisor").
    pub(crate) fn fire_detached_until(
        &self,
        event: Event,
        ctx: &EventContext,
        stop: CancellationToken,
        grace: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let hooks = self.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move { hooks.fire_until(event, &ctx, Some((&stop, grace))).await })
    }

    /// Like [`Hooks::fire`] but does not wait: used on lock loss, where stopping the child
    /// must not wait for a hook.
    pub(crate) fn fire_detached(
        &self,
        event: Event,
        ctx: &EventContext,
    ) -> tokio::task::JoinHandle<()> {
        let hooks = self.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move { hooks.fire(event, &ctx).await })
    }

    async fn run_one(
        &self,
        event: Event,
        exe: &str,
        ctx: &EventContext,
        stop: Option<(&CancellationToken, Duration)>,
    ) {
        let mut env: Vec<(OsString, OsString)> = vec![
            ("LOCKWRAP_KEY".into(), ctx.key.clone().into()),
            ("LOCKWRAP_EVENT".into(), event.as_str().into()),
        ];
        if let Some(session) = &ctx.session {
            env.push(("LOCKWRAP_SESSION".into(), session.into()));
        }
        if let Some(token) = ctx.fencing_token {
            env.push(("LOCKWRAP_FENCING_TOKEN".into(), token.to_string().into()));
        }
        let spec = CommandSpec {
            program: exe.into(),
            args: vec![ctx.key.clone().into()],
            env,
            stdin: StdinMode::Null,
            stdout_to_stderr: true,
            own_process_group: true,
            // On-acquired hooks run beside the command and die with it; the others report the
            // end of a hold and must survive the command's stop (README, "The supervisor").
            tree: if event == Event::Acquired {
                Tree::Attached
            } else {
                Tree::Own
            },
        };
        let mut child = match self.spawner.spawn(&spec) {
            Ok(child) => child,
            Err(err) => {
                tracing::warn!(hook = exe, event = event.as_str(), %err, "hook could not start (ignored)");
                return;
            }
        };
        let stopped = async {
            match stop {
                Some((token, _)) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let waited = tokio::select! {
            waited = tokio::time::timeout(self.timeout, child.wait()) => waited,
            () = stopped => {
                let grace = stop.map_or(Duration::ZERO, |(_, grace)| grace);
                tracing::info!(hook = exe, event = event.as_str(), ?grace, "the term ended; stopping the hook");
                child.stop(grace).await;
                return;
            }
        };
        match waited {
            Ok(status) if status.success() => {
                tracing::debug!(hook = exe, event = event.as_str(), "hook ran");
            }
            Ok(status) => {
                tracing::warn!(
                    hook = exe,
                    event = event.as_str(),
                    code = status.code(),
                    "hook failed (ignored)"
                );
            }
            Err(_) => {
                tracing::warn!(hook = exe, event = event.as_str(), timeout = ?self.timeout, "hook timed out; stopping it");
                // A hook gets a short grace: it already had the whole hook timeout.
                child.stop(Duration::from_secs(1)).await;
            }
        }
    }

    fn post_webhook(&self, event: Event, ctx: &EventContext) {
        let (Some(url), Some(http)) = (self.set.webhook.clone(), self.http.clone()) else {
            return;
        };
        let body = json!({
            "event": event.as_str(),
            "key": ctx.key,
            "session": ctx.session,
            "fencingToken": ctx.fencing_token,
            "detail": ctx.detail,
            "holder": crate::backend::consul::value::Identity::current().to_json(),
            "timestamp": crate::output::now_iso8601(),
        });
        tokio::spawn(async move {
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::debug!(url, event = event.as_str(), "webhook delivered")
                }
                Ok(r) => {
                    tracing::warn!(url, event = event.as_str(), status = %r.status(), "webhook refused (ignored)")
                }
                Err(err) => {
                    tracing::warn!(url, event = event.as_str(), %err, "webhook failed (ignored)")
                }
            }
        });
    }
}

/// The acquire observer that calls `--on-before-lock` / `--on-already-locked`.
pub(crate) struct AcquireHooks {
    pub hooks: Hooks,
}

impl AcquireObserver for AcquireHooks {
    fn before_attempt<'a>(&'a self, key: &'a str) -> futures_lite::future::Boxed<()> {
        let hooks = self.hooks.clone();
        let ctx = EventContext::for_key(key);
        Box::pin(async move { hooks.fire(Event::BeforeLock, &ctx).await })
    }

    fn already_locked<'a>(
        &'a self,
        key: &'a str,
        holder: Option<&'a LockInfo>,
    ) -> futures_lite::future::Boxed<()> {
        let hooks = self.hooks.clone();
        let mut ctx = EventContext::for_key(key);
        ctx.detail = holder.map(LockInfo::holder_summary);
        Box::pin(async move { hooks.fire(Event::AlreadyLocked, &ctx).await })
    }
}
