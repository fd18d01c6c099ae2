//! CPU-heavy work on received files (decoding and scaling images, reading PDFs) kept from
//! slowing what users wait on: it runs on its own thread at a lower scheduling priority
//! (nice 10), at most one job fewer than there are cores at a time (and at least one), so the
//! acknowledgements, the database and the replies always find a core.

use std::sync::OnceLock;

use tokio::sync::Semaphore;
use tracing::debug;

/// How much lower than the server's own threads the work runs.
const NICENESS: libc::c_int = 10;

/// Why a job gave no result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackgroundError {
    #[error("the work could not be started ({0})")]
    Spawn(String),
    #[error("the work stopped unexpectedly")]
    Panicked,
}

/// The jobs allowed at once: one fewer than the cores, at least one.
fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Semaphore::new(cores.saturating_sub(1).max(1))
    })
}

/// Run `work` on a low-priority thread of its own once a slot is free; its result.
pub async fn run<T, F>(name: &str, work: F) -> Result<T, BackgroundError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    // The semaphore is never closed.
    let _slot = slots().acquire().await.ok();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("ecdysis-{name}"))
        .spawn(move || {
            lower_priority();
            let _ = done.send(work());
        })
        .map_err(|e| BackgroundError::Spawn(e.to_string()))?;
    // A panic drops the sender: the receiver then errs.
    result.await.map_err(|_| BackgroundError::Panicked)
}

/// Make the calling thread (only it: Linux's nice value is per thread) yield to the others.
fn lower_priority() {
    // SAFETY: `gettid` has no preconditions; `setpriority` on our own thread id changes only
    // this thread's nice value, and its failure (a sandbox forbidding it) is harmless.
    let changed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICENESS)
    };
    if changed != 0 {
        debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower a background thread's priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_niceness() -> libc::c_int {
        // SAFETY: as above; reading this thread's own nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[tokio::test]
    async fn work_runs_at_a_lower_priority_and_its_result_or_panic_comes_back() {
        let before = own_niceness();
        let seen = run("test", own_niceness).await.unwrap();
        assert_eq!(seen, (before + NICENESS).min(19));
        assert_eq!(own_niceness(), before, "the caller's thread is unchanged");
        let panicked = run("test", || -> u8 { panic!("broken input") }).await;
        assert_eq!(panicked, Err(BackgroundError::Panicked));
    }
}
