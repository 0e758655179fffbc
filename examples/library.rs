//! The library API (`lockwrap::LockManager`) end to end: acquire (a lease that releases), find,
//! find_regex, release, release_all, release_regex and execute.
//!
//! Run it against any Consul agent (a dev agent is enough: `consul agent -dev`):
//!
//! ```text
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example library
//! ```
//!
//! It reads the same environment as the CLI (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, TLS
//! settings, …) and works under `lockwrap-example/<pid>/`, leaving no lock or session behind
//! (a released lease keeps its unheld entry with the last holder's info, as `consul lock` does).

use lockwrap::{Acquired, Error, HeldLock, LockManager, LockRequest, NoObserver, Wait};
use tokio_util::sync::CancellationToken;

fn main() {
    // `execute` starts its command through lockwrap's supervisor (own process group, reaping,
    // TERM → grace → KILL) with the guardian (`true`), which kills the command if this process
    // stalls past the lock's deadline: set it up once, before the runtime's threads exist.
    let process = match lockwrap::supervisor::install(true) {
        Ok(process) => process,
        Err(err) => {
            eprintln!("library example failed: cannot set up the supervisor: {err}");
            std::process::exit(70);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("library example failed: cannot start the runtime: {err}");
            std::process::exit(70);
        }
    };
    if let Err(err) = runtime.block_on(run(process.spawner())) {
        eprintln!("library example failed: {}", err.one_line());
        std::process::exit(err.kind().exit_code());
    }
}

async fn run(spawner: lockwrap::supervisor::Spawner) -> Result<(), Error> {
    let addr = std::env::var("CONSUL_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8500".into());
    println!("Consul at {addr} (CONSUL_HTTP_ADDR)");
    let manager = LockManager::from_env()?;
    let base = format!("lockwrap-example/{}", std::process::id());
    let key = format!("{base}/job");

    // 1. Acquire: blocks until held; the lease renews its session in the background.
    let lease = manager.acquire(&key).await?;
    let info = lease.info().clone();
    println!(
        "acquired {key}: session {}, fencing token {}",
        info.session.as_deref().unwrap_or("?"),
        info.fencing_token.unwrap_or_default()
    );

    // 2. Find: anyone can see who holds it.
    if let Some(holder) = manager.find(&key).await? {
        println!("find({key}) -> held by {}", holder.holder_summary());
    }

    // 3. A second, non-blocking attempt finds it taken (`--non-blocking` in the CLI).
    let mut request = LockRequest::new(&key);
    request.wait = Wait::NonBlocking;
    match manager
        .acquire_with(&request, &NoObserver, &CancellationToken::new())
        .await?
    {
        Acquired::Locked(_) => println!("non-blocking acquire of {key} -> taken, as expected"),
        Acquired::Held(other) => {
            println!("non-blocking acquire of {key} -> unexpectedly held; releasing");
            other.release().await?;
        }
        Acquired::TimedOut | Acquired::Cancelled => println!("non-blocking acquire gave up"),
    }

    // 4. Release the lease: the key is freed and the session destroyed.
    lease.release().await?;
    println!(
        "released {key}; find -> {:?}",
        manager.find(&key).await?.map(|i| i.key)
    );

    // 5. Leave a few locks held (like `lockwrap lock`), then list them by regex.
    let keys: Vec<String> = ["a", "b", "c", "other"]
        .iter()
        .map(|name| format!("{base}/locks/{name}"))
        .collect();
    for k in &keys {
        let held = manager.acquire(k).await?;
        // `detach` keeps the lock and its session (they are released below).
        let info = held.detach();
        println!(
            "holding {k} (fencing token {})",
            info.fencing_token.unwrap_or_default()
        );
    }
    let pattern = format!("{base}/locks/[a-c]");
    let found = manager.find_regex(&pattern).await?;
    println!(
        "find_regex({pattern}) -> {:?}",
        found.keys().collect::<Vec<_>>()
    );

    // 6. Force-release one key, a list of keys, and everything matching a regex.
    println!(
        "release({}) -> {}",
        keys[0],
        manager.release(&keys[0]).await?
    );
    let missing = format!("{base}/locks/never-locked");
    println!(
        "release_all([{}, {missing}]) -> {:?}",
        keys[1],
        manager.release_all([&keys[1], &missing]).await?
    );
    println!(
        "release_regex({base}/locks/.*) -> {:?}",
        manager.release_regex(&format!("{base}/locks/.*")).await?
    );

    // 7. Execute: run a shell string while holding the lock; its exit code comes back.
    let code = manager
        .execute(
            &key,
            "echo \"  (child) CONSUL_LOCK_HELD=$CONSUL_LOCK_HELD fencing token $LOCKWRAP_FENCING_TOKEN\"; exit 3",
            &spawner,
        )
        .await?;
    println!("execute({key}) -> exit code {code}");
    let held = manager
        .find_regex(&format!("{base}/.*"))
        .await?
        .into_values()
        .filter(Option::is_some)
        .count();
    println!("done; locks still held under {base}: {held}");
    Ok(())
}
