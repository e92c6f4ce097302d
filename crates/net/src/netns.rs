//! Named network namespaces, laid out like iproute2's `ip netns`.
//!
//! A named namespace is a file `/run/netns/<name>` on which the namespace's nsfs inode
//! (`/proc/thread-self/ns/net` of a thread that unshared it) is bind-mounted. The mount
//! keeps the namespace alive with no process inside, and anything can enter it by path:
//! `ip netns exec`, an OCI runtime's `path` namespace, setns(2). As iproute2 does,
//! `/run/netns` itself is made a shared mount, so unmounting a namespace also unmounts the
//! copies that mount namespaces created later (containers) hold, instead of leaking the
//! namespace in them.
//!
//! Namespace membership is per thread, and unshare(CLONE_NEWNET) moves the calling thread
//! for good, so namespaces are created on a short-lived dedicated std::thread, never on a
//! tokio worker. That thread also opens the netlink socket that configures the new
//! namespace: a socket stays bound to the namespace it was created in, whichever thread
//! uses it later. The thread inherits the caller's mount namespace, so the bind mount lands
//! where the caller (and `remove`) sees it.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::names::task_id_from_netns_name;
use crate::NetError;

/// Where named network namespaces live (iproute2's `NETNS_RUN_DIR`).
pub(crate) const NETNS_RUN_DIR: &str = "/run/netns";

/// The calling thread's own network namespace: unlike `/proc/self`, this is per thread.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Creates `dir` if needed and makes it a shared mount point, as `ip netns add` does.
pub(crate) fn prepare_run_dir(dir: &Path) -> Result<(), NetError> {
    let fail = |source: io::Error| NetError::NetnsRunDir {
        path: dir.to_owned(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(fail)?;
    let mut bound = false;
    loop {
        match mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: `dir` is not a mount point yet. Bind it onto itself, then retry.
            Err(Errno::EINVAL) if !bound => {
                mount(
                    Some(dir),
                    dir,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|errno| fail(errno.into()))?;
                bound = true;
            }
            Err(errno) => return Err(fail(errno.into())),
        }
    }
}

/// Creates the named namespace `path` and returns a descriptor of it together with a
/// netlink route connection bound inside it (the connection must be spawned to be used).
///
/// `path` must not exist. On failure nothing is left behind.
pub(crate) async fn create(
    path: PathBuf,
) -> Result<
    (
        OwnedFd,
        impl std::future::Future<Output = ()> + Send + 'static,
        rtnetlink::Handle,
    ),
    NetError,
> {
    let runtime = tokio::runtime::Handle::current();
    on_thread(move || {
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(namespace_error("create", &path))?;
        let created = (|| {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|errno| namespace_error("unshare", &path)(errno.into()))?;
            mount(
                Some(THREAD_NETNS),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|errno| namespace_error("bind-mount", &path)(errno.into()))?;
            let netns = File::open(&path).map_err(namespace_error("open", &path))?;
            // The socket registers with the caller's reactor, so it can be driven from there.
            let _reactor = runtime.enter();
            let (connection, handle, _unsolicited) = rtnetlink::new_connection()
                .map_err(|source| NetError::NetlinkSocket { source })?;
            Ok((OwnedFd::from(netns), connection, handle))
        })();
        if created.is_err() {
            if let Err(error) = remove(&path) {
                tracing::warn!(netns = ?path, error = %error, "cannot clean up a half-created network namespace");
            }
        }
        created
    })
    .await
}

/// Unmounts and deletes the named namespace `path`. Returns whether it existed; a missing
/// file or a file that is not mounted is not an error.
pub(crate) fn remove(path: &Path) -> Result<bool, NetError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-created namespace); ENOENT: already gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(namespace_error("unmount", path)(errno.into())),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(namespace_error("delete", path)(error)),
    }
}

/// Task ids of the skiff namespaces in `dir`, sorted. A missing `dir` holds none.
pub(crate) fn list(dir: &Path) -> Result<Vec<String>, NetError> {
    let fail = |source| NetError::ListNamespaces {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(fail(error)),
    };
    let mut task_ids = Vec::new();
    for entry in entries {
        let name = entry.map_err(fail)?.file_name();
        if let Some(task_id) = name.to_str().and_then(task_id_from_netns_name) {
            task_ids.push(task_id.to_owned());
        }
    }
    task_ids.sort_unstable();
    Ok(task_ids)
}

fn namespace_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NetError {
    let path = path.to_owned();
    move |source| NetError::Namespace {
        action,
        path,
        source,
    }
}

/// Runs `work` on a new std::thread and waits for it without blocking the executor.
async fn on_thread<T, F>(work: F) -> Result<T, NetError>
where
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
    T: Send + 'static,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("skiff-netns".to_owned())
        .spawn(move || {
            // The receiver only goes away if the caller was cancelled; the result (and
            // with it the namespace's descriptors) is then dropped here.
            let _ = sender.send(work());
        })
        .map_err(|source| NetError::SpawnThread { source })?;
    let outcome = receiver.await;
    // The worker has handed over its result and is exiting, so this join only waits for
    // the exit itself; it guarantees no thread lingers in a namespace it created.
    let joined = thread.join();
    match (outcome, joined) {
        (Ok(result), Ok(())) => result,
        _ => Err(NetError::ThreadPanicked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-net-test-{}", rand::random::<u64>()));
        fs::create_dir(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn list_returns_only_skiff_namespaces_sorted() {
        let dir = scratch_dir();
        let ids = [
            "ffffffffffffffffffffffffffffffff",
            "00000000000000000000000000000000",
        ];
        for name in [
            format!("skiff-{}", ids[0]),
            format!("skiff-{}", ids[1]),
            "skiff-short".to_owned(),
            "cni-0123".to_owned(),
        ] {
            File::create(dir.join(name)).expect("create entry");
        }
        let listed = list(&dir);
        fs::remove_dir_all(&dir).expect("remove scratch dir");
        assert_eq!(listed.expect("list"), vec![ids[1], ids[0]]);
    }

    #[test]
    fn list_of_a_missing_directory_is_empty() {
        let missing = std::env::temp_dir().join(format!("skiff-missing-{}", rand::random::<u64>()));
        assert!(list(&missing).expect("list").is_empty());
    }

    #[test]
    fn remove_tolerates_unmounted_and_missing_files() {
        let dir = scratch_dir();
        let path = dir.join("skiff-plain-file");
        File::create(&path).expect("create file");
        let first = remove(&path);
        let second = remove(&path);
        fs::remove_dir_all(&dir).expect("remove scratch dir");
        assert!(first.expect("remove existing"));
        assert!(!second.expect("remove missing"));
    }
}
