//! Starting the wrapped command directly inside its cgroup with `clone3(CLONE_INTO_CGROUP)`.
//!
//! Why: a process that *moves* into a cgroup (writing itself into `cgroup.procs` between fork and
//! exec) waits for the kernel's first migration, a few milliseconds that sit between "lock
//! acquired" and the command's start (docs/performance.md, the clean acquire). A process cloned
//! into the cgroup is placed there at birth: no migration, and it is inside before it can fork
//! anything, as before. Where the kernel or a seccomp filter refuses `clone3` (older than 5.7;
//! Docker's default profile answers ENOSYS), [`spawn`] returns `None` and the caller starts the
//! command as before, joining by a write.
//!
//! The child does what `std::process::Command` does for our specs (stdio, process group, a clean
//! signal mask, SIGPIPE back to default, the environment, `execvp`) plus the parent-death signal
//! and terminal steps of `child::prepare_child`, using only async-signal-safe calls on memory
//! prepared before the clone: the parent is multi-threaded.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::ptr;

use nix::libc::{self, c_char};
use nix::unistd::Pid;

/// `CLONE_INTO_CGROUP` (linux/sched.h); libc's constant is an overflowing `c_int` on gnu targets.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of linux/sched.h up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

extern "C" {
    /// The C library's environment; the child points it at the command's (as std does) so that
    /// `execvp` searches the command's `PATH`.
    static mut environ: *const *const c_char;
}

/// What the child needs, all allocated before the clone.
pub(crate) struct Plan {
    program: CString,
    /// Keeps the strings `argv` points into alive.
    _args: Vec<CString>,
    argv: Vec<*const c_char>,
    _env: Vec<CString>,
    envp: Vec<*const c_char>,
    /// `/dev/null` for a command whose stdin is not ours to give.
    stdin_null: Option<OwnedFd>,
    stdout_to_stderr: bool,
    own_process_group: bool,
}

impl Plan {
    /// The program, its arguments, and the inherited environment with `env` added or replacing
    /// entries, as `Command::envs` would; an interior NUL is refused like std refuses it.
    pub(crate) fn new(
        program: &OsStr,
        args: &[OsString],
        env: &[(OsString, OsString)],
        stdin_null: bool,
        stdout_to_stderr: bool,
        own_process_group: bool,
    ) -> io::Result<Plan> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "nul byte found in provided data",
                )
            })
        };
        let program = c(program)?;
        let mut all_args = vec![program.clone()];
        for arg in args {
            all_args.push(c(arg)?);
        }
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(key, _)| !env.iter().any(|(k, _)| k == key))
            .collect();
        // A key given twice keeps its last value, as `Command::env` does.
        for (i, (key, value)) in env.iter().enumerate() {
            if !env[i + 1..].iter().any(|(later, _)| later == key) {
                vars.push((key.clone(), value.clone()));
            }
        }
        let mut all_env = Vec::with_capacity(vars.len());
        for (key, value) in vars {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            all_env.push(c(OsStr::from_bytes(&entry))?);
        }
        let stdin_null = if stdin_null {
            Some(OwnedFd::from(std::fs::File::open("/dev/null")?))
        } else {
            None
        };
        let pointers = |strings: &[CString]| {
            let mut p: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
            p.push(ptr::null());
            p
        };
        Ok(Plan {
            argv: pointers(&all_args),
            envp: pointers(&all_env),
            program,
            _args: all_args,
            _env: all_env,
            stdin_null,
            stdout_to_stderr,
            own_process_group,
        })
    }
}

/// Clones a child into the cgroup open at `cgroup_dir`, runs `prepare` in it (the caller's
/// async-signal-safe steps), and execs the plan. `Ok(None)`: the kernel refused the clone and no
/// child exists (start it another way). `Err`: the child could not exec (it has been waited for).
///
/// # Safety
/// `prepare` runs in the child of a multi-threaded process: async-signal-safe calls only, no
/// allocation, no locks.
pub(crate) unsafe fn spawn(
    plan: &Plan,
    cgroup_dir: RawFd,
    prepare: impl Fn() -> io::Result<()>,
) -> io::Result<Option<Pid>> {
    // The child reports a failed exec through this pipe; a successful exec closes it (CLOEXEC).
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; each is owned once.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir as u64,
        ..CloneArgs::default()
    };
    // SAFETY: no CLONE_VM: like fork, the child gets a copy of this address space and returns
    // here with 0 on the same (copied) stack.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        // No child: ENOSYS (old kernel, seccomp), E2BIG/EINVAL (no cgroup field), or the cgroup
        // cannot take it. The caller falls back.
        let err = io::Error::last_os_error();
        tracing::debug!(%err, "clone3 into the command's cgroup refused; joining by a write");
        return Ok(None);
    }
    if pid == 0 {
        // SAFETY: the child; see `child_exec`.
        unsafe { child_exec(plan, write_end.as_raw_fd(), &prepare) }
    }
    drop(write_end);
    let pid = Pid::from_raw(pid as i32);
    let mut errno = [0u8; 4];
    let read = loop {
        // SAFETY: reads at most 4 bytes into a 4-byte buffer.
        let n = unsafe { libc::read(read_end.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break n;
        }
    };
    if read == 0 {
        return Ok(Some(pid));
    }
    // The exec failed: the child has exited (or is about to); the caller holds the reaper's lock,
    // so this wait is ours, as std waits for a child whose exec failed.
    let _ = nix::sys::wait::waitpid(pid, None);
    Err(if read == 4 {
        io::Error::from_raw_os_error(i32::from_ne_bytes(errno))
    } else {
        io::Error::other("the command's start could not be confirmed")
    })
}

/// In the child: stdio, group, signals, the caller's steps, exec; on any failure the errno goes
/// to `report` and the child exits 127 without running any destructor or atexit handler.
unsafe fn child_exec(plan: &Plan, report: RawFd, prepare: &dyn Fn() -> io::Result<()>) -> ! {
    let fail = |errno: i32| -> ! {
        let bytes = errno.to_ne_bytes();
        // SAFETY: write(2) of a 4-byte stack buffer and _exit(2): both async-signal-safe.
        unsafe {
            libc::write(report, bytes.as_ptr().cast(), 4);
            libc::_exit(127)
        }
    };
    let last = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: each call below is async-signal-safe and touches only memory prepared before the
    // clone (the plan) or the stack.
    unsafe {
        if let Some(null) = &plan.stdin_null {
            if libc::dup2(null.as_raw_fd(), libc::STDIN_FILENO) < 0 {
                fail(last());
            }
        }
        if plan.stdout_to_stderr && libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0 {
            fail(last());
        }
        if plan.own_process_group && libc::setpgid(0, 0) != 0 {
            fail(last());
        }
        // The command starts with no signal blocked and SIGPIPE at its default (Rust ignores it).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) != 0 {
            fail(libc::EINVAL);
        }
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            fail(last());
        }
        if let Err(err) = prepare() {
            fail(err.raw_os_error().unwrap_or(libc::EIO));
        }
        environ = plan.envp.as_ptr();
        libc::execvp(plan.program.as_ptr(), plan.argv.as_ptr());
        fail(last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(plan: &Plan) -> Vec<String> {
        plan._env
            .iter()
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_plan_inherits_the_environment_and_lets_the_spec_replace_entries() {
        let plan = Plan::new(
            OsStr::new("sh"),
            &["-c".into(), "true".into()],
            &[
                ("HOME".into(), "/nowhere".into()),
                ("LW_X".into(), "0".into()),
                ("LW_X".into(), "1".into()),
            ],
            false,
            false,
            true,
        )
        .expect("plan");
        let env = env_of(&plan);
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
        assert!(env.contains(&"HOME=/nowhere".to_string()) && env.contains(&"LW_X=1".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("LW_X=")).count(), 1);
        assert_eq!(plan.argv.len(), 4, "program, two arguments, the null");
        assert!(plan.argv[3].is_null() && plan.envp.last().is_some_and(|p| p.is_null()));
    }

    #[test]
    fn a_nul_byte_is_refused_before_any_clone() {
        let err = Plan::new(OsStr::new("a\0b"), &[], &[], false, false, true)
            .err()
            .expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_clone_the_kernel_refuses_leaves_no_child_and_asks_for_the_fallback() {
        let plan = Plan::new(OsStr::new("true"), &[], &[], true, false, true).expect("plan");
        // Not a cgroup directory: the kernel refuses before any child exists.
        let not_a_cgroup = std::fs::File::open("/dev/null").expect("/dev/null");
        // SAFETY: the clone fails, so the closure never runs.
        let started = unsafe { spawn(&plan, not_a_cgroup.as_raw_fd(), || Ok(())) };
        assert!(matches!(started, Ok(None)), "{started:?}");
    }
}
