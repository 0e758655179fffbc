//! The campaign, takeover and sidecar loops on the in-memory backend, under
//! `tokio::time::pause()`: loss, outage, takeover delay and signals, with no Consul, no process
//! and no real waiting.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::acquire::{self, OnUnreachable};
use crate::backend::memory::MemoryBackend;
use crate::backend::{Acquired, HeldLock, LockRequest, LossReason, NoObserver};
use crate::cli::Cli;
use crate::config::{Supervised, Task};
use crate::exit::{ErrorKind, Outcome};
use crate::locks::LockManager;
use crate::supervisor::{ProcessControl, Signal};
use crate::telemetry::Telemetry;

fn manager() -> (MemoryBackend, LockManager<MemoryBackend>) {
    let store = MemoryBackend::new();
    (store.clone(), LockManager::new(store))
}

/// One campaign for key `k` with no observer, listening to `signals`.
async fn campaign(
    manager: &LockManager<MemoryBackend>,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
    policy: OnUnreachable,
) -> (
    crate::exit::Result<Acquired<crate::backend::memory::MemoryLease>>,
    Option<Signal>,
) {
    acquire::campaign(
        manager,
        &LockRequest::new("k"),
        &NoObserver,
        signals,
        &Telemetry::new("k"),
        policy,
    )
    .await
}

/// The validated configuration of a sidecar invocation. Loaded in figment's `Jail`, which the
/// config tests hold while they set `LOCKWRAP_*` variables, so none can leak in here.
// `Jail` fixes the closure's error type (figment's, which is large); it is never built here.
#[allow(clippy::result_large_err)]
fn config(args: &[&str]) -> Supervised {
    let cli = Cli::try_parse_from(std::iter::once("lockwrap").chain(args.iter().copied()))
        .expect("valid arguments");
    let mut loaded = None;
    figment::Jail::expect_with(|_| {
        loaded = Some(crate::config::load(cli).expect("valid configuration"));
        Ok(())
    });
    match loaded.map(|config| config.task) {
        Some(Task::Sidecar(job)) => job,
        other => panic!("expected a sidecar configuration, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn campaign_rides_out_an_outage_with_growing_back_off() {
    let (store, manager) = manager();
    store.fail_next(3);
    let (_tx, mut signals) = mpsc::unbounded_channel();
    let started = Instant::now();
    let (result, signal) = campaign(&manager, &mut signals, OnUnreachable::Retry).await;
    assert!(matches!(result, Ok(Acquired::Held(_))));
    assert!(signal.is_none());
    // 0.5 + 1 + 2 s of back-off, then the 6 s takeover wait of a key never held before.
    assert_eq!(started.elapsed(), Duration::from_millis(9500));
}

#[tokio::test(start_paused = true)]
async fn campaign_gives_up_on_a_store_that_never_answered_when_asked_to() {
    let (store, manager) = manager();
    store.fail_next(1);
    let (_tx, mut signals) = mpsc::unbounded_channel();
    let (result, _) = campaign(&manager, &mut signals, OnUnreachable::RetryAfterFirstAnswer).await;
    let Err(err) = result else {
        panic!("expected to give up");
    };
    assert_eq!(err.kind, ErrorKind::ConsulUnavailable);
}

#[tokio::test(start_paused = true)]
async fn a_stop_signal_ends_the_back_off_at_once() {
    let (store, manager) = manager();
    store.fail_next(100);
    let (tx, mut signals) = mpsc::unbounded_channel();
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = tx.send(Signal::HUP);
    });
    let started = Instant::now();
    let (result, signal) = campaign(&manager, &mut signals, OnUnreachable::Retry).await;
    assert!(matches!(result, Ok(Acquired::Cancelled)));
    assert_eq!(signal, Some(Signal::HUP));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let _ = sender.await;
}

#[tokio::test(start_paused = true)]
async fn a_waiting_campaign_takes_the_lock_when_the_holder_releases() {
    let (_store, manager) = manager();
    let first = manager.acquire("k").await.expect("first holder");
    let (_tx, mut signals) = mpsc::unbounded_channel();
    let waiter = async { campaign(&manager, &mut signals, OnUnreachable::Retry).await };
    let releaser = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        first.release().await.expect("release");
    };
    let ((result, _), ()) = tokio::join!(waiter, releaser);
    let Ok(Acquired::Held(lease)) = result else {
        panic!("not held");
    };
    // A clean handoff: no takeover delay is due.
    assert!(lease.previous_release_clean());
}

#[tokio::test(start_paused = true)]
async fn takeover_waits_the_delay_only_after_an_unclean_release() {
    let (store, manager) = manager();
    // Never held before: unclean. The library's default takeover delay is 6 s.
    let started = Instant::now();
    let lease = manager.acquire("k").await.expect("held");
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    drop(lease);

    // Broken away from the holder: the next one waits too; a clean release does not.
    assert!(store.break_lock("k", LossReason::KeyDeleted));
    let started = Instant::now();
    let lease = manager.acquire("k").await.expect("held again");
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    lease.release().await.expect("release");
    let started = Instant::now();
    let lease = manager
        .acquire("k")
        .await
        .expect("held after a clean release");
    assert_eq!(started.elapsed(), Duration::ZERO);
    lease.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_the_takeover_wait_leaves_the_wait_owed() {
    let (store, manager) = manager();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.cancel();
        }
    };
    let request = LockRequest::new("k");
    let (result, ()) = tokio::join!(manager.acquire_with(&request, &NoObserver, &stop), stopper);
    assert!(matches!(result, Ok(Acquired::Cancelled)));
    assert!(store.holder("k").is_none(), "given back");
    // The wait was not over: the next holder owes the whole of it.
    let started = Instant::now();
    let lease = manager.acquire("k").await.expect("held");
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    lease.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn a_loss_during_the_takeover_wait_campaigns_again() {
    let (store, manager) = manager();
    let breaker = {
        let store = store.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(store.break_lock("k", LossReason::SessionInvalidated));
        }
    };
    let started = Instant::now();
    let (lease, ()) = tokio::join!(manager.acquire("k"), breaker);
    let lease = lease.expect("held in the end");
    // 1 s into the first wait, then a whole new wait.
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    lease.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn a_release_marked_unclean_makes_the_next_holder_wait() {
    let (_store, manager) = manager();
    let mut lease = manager.acquire("k").await.expect("held");
    lease.set_release_clean(false);
    lease.release().await.expect("release");
    let started = Instant::now();
    let lease = manager.acquire("k").await.expect("held");
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    lease.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn sidecar_campaigns_again_after_a_loss_and_steps_down_on_sigterm() {
    let (store, manager) = manager();
    let config = config(&["sidecar", "--key", "svc/leader", "--kill-grace", "1s"]);
    let (tx, signals) = mpsc::unbounded_channel();
    let process = ProcessControl::detached(signals).expect("process control");
    let telemetry = Arc::new(Telemetry::new("svc/leader"));
    let script = {
        let store = store.clone();
        let telemetry = telemetry.clone();
        async move {
            // First term: takeover delay (kill grace + 1 s, the key was never held) then leader.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(
                telemetry.status().is_leader,
                "leader after the takeover delay: {:?} {:?}",
                telemetry.status(),
                store.holder("svc/leader")
            );
            let first = store.holder("svc/leader").expect("held");
            store.break_lock("svc/leader", LossReason::SessionInvalidated);
            // The sidecar campaigns again after a 1 s pause and holds for the 2 s takeover
            // delay (the loss was unclean): a new session, a higher fencing token.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let second = store.holder("svc/leader").expect("held again");
            assert!(second.fencing_token > first.fencing_token);
            assert!(telemetry.status().is_leader);
            tx.send(Signal::TERM).expect("send");
        }
    };
    let (outcome, ()) = tokio::join!(
        super::sidecar::run(&config, &manager, process, telemetry.clone()),
        script
    );
    assert_eq!(outcome.expect("sidecar ran"), Outcome::Success);
    assert!(store.holder("svc/leader").is_none(), "released on SIGTERM");
    assert!(!telemetry.status().is_leader);
}

#[tokio::test(start_paused = true)]
async fn sidecar_exit_on_loss_exits_101() {
    let (store, manager) = manager();
    let config = config(&["sidecar", "--key", "svc/once", "--exit-on-loss"]);
    let (_tx, signals) = mpsc::unbounded_channel();
    let process = ProcessControl::detached(signals).expect("process control");
    let telemetry = Arc::new(Telemetry::new("svc/once"));
    let breaker = {
        let store = store.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            store.break_lock("svc/once", LossReason::KeyDeleted);
        }
    };
    let (outcome, ()) = tokio::join!(
        super::sidecar::run(&config, &manager, process, telemetry),
        breaker
    );
    let outcome = outcome.expect("sidecar ran");
    assert_eq!(outcome.exit_code(), 101, "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stop_signal_that_races_the_acquisition_is_never_lost() {
    // The signal and a free lock at the same instant: whichever wins, either the wait is
    // cancelled and the lock given back, or the lock is held and the signal is still there
    // for the supervisor to act on. Many rounds, since select! picks its branch at random.
    for round in 0..50 {
        let (store, manager) = manager();
        let (tx, mut signals) = mpsc::unbounded_channel();
        tx.send(Signal::TERM).expect("send");
        let (result, signal) =
            acquire::until_signal(&manager, &LockRequest::new("k"), &NoObserver, &mut signals)
                .await;
        match result {
            Ok(Acquired::Cancelled) => {
                assert_eq!(signal, Some(Signal::TERM), "round {round}");
                assert!(store.holder("k").is_none(), "round {round}: lock kept");
            }
            Ok(Acquired::Held(_)) => {
                assert!(signal.is_none(), "round {round}");
                assert_eq!(
                    signals.try_recv().ok(),
                    Some(Signal::TERM),
                    "round {round}: lost"
                );
            }
            _ => panic!("round {round}: unexpected outcome"),
        }
    }
}

#[tokio::test]
async fn library_execute_refuses_to_run_without_the_guardian() {
    let (_store, manager) = manager();
    let (_tx, signals) = mpsc::unbounded_channel();
    let process = ProcessControl::detached(signals).expect("process control");
    let err = manager
        .execute("lib/k", "true", &process.spawner())
        .await
        .expect_err("no guardian: refused");
    assert_eq!(err.kind(), crate::exit::ErrorKind::Internal);
    assert!(err.to_string().contains("install(true)"), "{err}");
    // Refused before anything changed in the store.
    assert_eq!(manager.find("lib/k").await.expect("find"), None);
}

/// One library acquisition of `request`, with no observer and no stop.
async fn acquire_once(
    manager: &LockManager<MemoryBackend>,
    request: &crate::backend::LockRequest,
) -> Result<Acquired<crate::backend::memory::MemoryLease>, crate::locks::Error> {
    manager
        .acquire_with(
            request,
            &crate::backend::NoObserver,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
}

#[tokio::test]
async fn library_refuses_a_deleting_session_for_a_supervised_hold() {
    let (_store, manager) = manager();
    let mut request = crate::backend::LockRequest::new("lib/delete");
    request.session.behavior = crate::backend::Behavior::Delete;
    let err = acquire_once(&manager, &request)
        .await
        .expect_err("delete is refused while a command runs");
    assert_eq!(err.kind(), crate::exit::ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("`delete`"), "{err}");
    assert_eq!(manager.find("lib/delete").await.expect("find"), None);
}

#[tokio::test]
async fn library_errors_keep_the_store_error_as_their_source() {
    let (store, manager) = manager();
    store.fail_next(1);
    let mut request = crate::backend::LockRequest::new("lib/source");
    request.wait = crate::backend::Wait::NonBlocking;
    let err = acquire_once(&manager, &request)
        .await
        .expect_err("the store fails");
    assert_eq!(err.kind(), crate::exit::ErrorKind::ConsulUnavailable);
    assert_eq!(err.to_string(), "acquiring lib/source");
    let source = std::error::Error::source(&err).expect("the store's error is the source");
    assert!(
        matches!(
            source.downcast_ref::<crate::backend::BackendError>(),
            Some(crate::backend::BackendError::Transient(_))
        ),
        "{source:?}"
    );
    let expected = format!("acquiring lib/source: {source}");
    // The CLI's line and exit code are what they were: context, then the store's message.
    let cli = crate::exit::Error::from(err);
    assert_eq!(cli.message, expected);
    assert_eq!(cli.kind.exit_code(), 8);
}
