//! `lockwrap install DEST`: copies this binary to DEST, for init containers that put lockwrap
//! into a volume shared with the application container. The image is `scratch`, so without
//! this it would need a `cp` of its own.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::exit::{Error, ErrorKind, Result};

/// What `install` prints on stdout.
#[derive(Debug, Serialize)]
pub(crate) struct Installed {
    pub installed: PathBuf,
    pub bytes: u64,
}

/// Copies the running executable to `dest` (a directory gets `lockwrap` inside it), mode 0755.
/// The copy is written beside the target and renamed into place, so a reader never sees a
/// half-written binary, and re-running replaces an older copy.
pub(crate) fn install(dest: &Path) -> Result<Installed> {
    let source = own_executable()?;
    if !dest.is_dir() && dest.as_os_str().to_string_lossy().ends_with('/') {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "cannot install lockwrap to {}: no such directory",
                dest.display()
            ),
        ));
    }
    let target = if dest.is_dir() {
        dest.join("lockwrap")
    } else {
        dest.to_path_buf()
    };
    let bad_dest = |err: io::Error| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("cannot install lockwrap to {}: {err}", target.display()),
        )
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = target
        .file_name()
        .ok_or_else(|| bad_dest(io::Error::other("the destination has no file name")))?;
    let staging = parent.join(format!(
        ".{}.installing-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let copied = fs::copy(&source, &staging)
        .and_then(|bytes| {
            fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))?;
            fs::File::open(&staging)?.sync_all()?;
            fs::rename(&staging, &target)?;
            Ok(bytes)
        })
        .map_err(|err| {
            let _ = fs::remove_file(&staging);
            bad_dest(err)
        })?;
    Ok(Installed {
        installed: target,
        bytes: copied,
    })
}

/// `/proc/self/exe`, or, where `/proc` is not mounted (a bare chroot), `argv[0]` when it is a
/// path.
fn own_executable() -> Result<PathBuf> {
    std::env::current_exe().or_else(|err| {
        std::env::args_os()
            .next()
            .map(PathBuf::from)
            .filter(|p| p.components().count() > 1 && p.is_file())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidEnvironment,
                    format!("cannot find lockwrap's own executable to copy: {err}"),
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lockwrap-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn installs_into_a_directory_as_lockwrap_with_mode_755() {
        let dir = scratch("dir");
        let done = install(&dir).expect("install");
        assert_eq!(done.installed, dir.join("lockwrap"));
        let meta = fs::metadata(&done.installed).expect("installed file");
        assert_eq!(meta.len(), done.bytes);
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        // Nothing else is left in the directory (no staging file).
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn installs_to_a_file_path_and_replaces_an_old_copy() {
        let dir = scratch("file");
        let target = dir.join("bin-copy");
        fs::write(&target, b"old").expect("old copy");
        let done = install(&target).expect("install");
        assert_eq!(done.installed, target);
        assert!(fs::metadata(&target).expect("meta").len() > 3);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_directory_is_an_invalid_argument_naming_it() {
        let err = install(Path::new("/nonexistent-lockwrap-dir/lockwrap")).expect_err("must fail");
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(
            err.message.contains("/nonexistent-lockwrap-dir/lockwrap"),
            "{err}"
        );
    }
}
