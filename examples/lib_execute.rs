//! `LockManager::execute` as a contender for the cluster tests (tests/cluster, chaos/cluster_chaos):
//! run one shell string while holding one key, with the library's defaults, and exit with the
//! command's code (the library error's exit code when the lock could not be held or was lost).
//!
//! ```text
//! CONSUL_HTTP_ADDR=127.0.0.21:8500 lib_execute KEY 'SHELL COMMAND'
//! ```
//!
//! With `LIB_EXECUTE_GIVE_UP_AFTER=SECS` the host drops the `execute` future after SECS (as a
//! `tokio::time::timeout` around it would), then keeps running 10 s and exits 124: the command
//! must still be stopped (TERM, grace, KILL) while the host lives.

use lockwrap::LockManager;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(key), Some(shell)) = (args.next(), args.next()) else {
        eprintln!("usage: lib_execute KEY 'SHELL COMMAND'");
        std::process::exit(3);
    };
    // The supervisor (process group, reaping, TERM -> grace -> KILL) and the guardian, before the
    // runtime's threads.
    let process = match lockwrap::supervisor::install(true) {
        Ok(process) => process,
        Err(err) => {
            eprintln!("lib_execute: cannot set up the supervisor: {err}");
            std::process::exit(70);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lib_execute: cannot start the runtime: {err}");
            std::process::exit(70);
        }
    };
    let spawner = process.spawner();
    let give_up = std::env::var("LIB_EXECUTE_GIVE_UP_AFTER")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(std::time::Duration::from_secs_f64);
    let code = runtime.block_on(async {
        let manager = LockManager::from_env()?;
        let Some(after) = give_up else {
            return manager.execute(&key, &shell, &spawner).await;
        };
        if let Ok(done) = tokio::time::timeout(after, manager.execute(&key, &shell, &spawner)).await
        {
            return done;
        }
        eprintln!("lib_execute: gave up waiting for the command");
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        Ok(124)
    });
    match code {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("lib_execute: {}", err.one_line());
            std::process::exit(err.kind().exit_code());
        }
    }
}
