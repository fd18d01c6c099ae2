//! The attacks of the outside review on `/run`'s resources and kernel surface, each shown
//! refused: memory spread over several processes (the whole sandbox's cgroup limit), filling
//! `/tmp` and `/dev/shm` (size-capped tmpfs), filling the workspace during a run (stopped, the
//! space given back), and system calls a command has no business making (seccomp: EPERM).
//!
//! Against the bubblewrap backend directly, and once through `/run` of a real server. Needs
//! `bwrap`; the cgroup parts need a cgroup ecdysis may write (root here, and in CI), else
//! they are skipped with a note (and fail in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::time::Duration;

use common::sandbox::{Direct, out, public_tempdir, sandbox_ready, wait_sandboxes_gone};
use common::server::Server;
use ecdysis::config::SandboxSettings;
use ecdysis::sandbox::{Ended, Limits, Sandbox};

const MIB: u64 = 1024 * 1024;

fn limits(memory_mb: u64, workspace_mb: u64) -> Limits {
    let settings = SandboxSettings {
        timeout: Duration::from_secs(60),
        memory_mb,
        workspace_max_mb: workspace_mb,
        ..SandboxSettings::default()
    };
    Limits::from_settings(&settings)
}

/// True when the backend found a cgroup for its runs; in CI (root) it must have.
fn has_cgroup(direct: &Direct) -> bool {
    let describe = direct.backend.describe();
    ecdysis_testkit::prerequisite::prerequisite(
        !describe.contains("NO cgroup"),
        &format!("a cgroup for sandbox runs ({describe})"),
        "run as root with a writable cgroup v2 tree, as CI does",
    )
}

/// Three processes of 300 MB each (each within its own address-space limit) against a 512 MB
/// sandbox: the run is stopped for memory, its peak stays within the limit, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_many_processes_is_limited_as_a_whole() {
    if !sandbox_ready() {
        return;
    }
    let direct = Direct::new(SandboxSettings::default()).await;
    if !has_cgroup(&direct) {
        return;
    }
    let limits = limits(512, 256);
    let hog = "python3 -c 'import time; b = b\"x\" * (300 << 20); print(\"allocated\", flush=True); time.sleep(30)'";
    let command = format!("for i in 1 2 3; do {hog} & done; wait; echo ALL_DONE");
    let output = direct.run("memory", &command, limits).await;
    let text = out(&output);
    assert_eq!(output.ended, Ended::MemoryLimit, "{output:?}\n{text}");
    assert!(!text.contains("ALL_DONE"), "{text}");
    assert!(
        output.duration < Duration::from_secs(25),
        "the run was not stopped at once: {output:?}"
    );
    let peak = output.peak_memory.expect("the cgroup reports its peak");
    eprintln!(
        "three 300 MB processes in a 512 MB sandbox: stopped after {:?}, peak {} MB",
        output.duration,
        peak / MIB
    );
    assert!(peak <= 512 * MIB, "the sandbox used {} MB", peak / MIB);

    // Within the limit the same kind of work runs to its end.
    // Each holds its 100 MB until all three hold theirs (a marker file each in the run's own
    // /tmp, bounded wait), so the peak is the three together however the machine schedules them.
    let small = "python3 -c 'import os, time\nb = b\"x\" * (100 << 20)\nopen(\"/tmp/held-%d\" % os.getpid(), \"w\").close()\nt = time.time()\nwhile sum(n.startswith(\"held-\") for n in os.listdir(\"/tmp\")) < 3 and time.time() - t < 20: time.sleep(0.02)\nprint(len(b))'";
    let output = direct
        .run(
            "memory",
            &format!("for i in 1 2 3; do {small} & done; wait; echo ALL_DONE"),
            limits,
        )
        .await;
    assert_eq!(output.ended, Ended::Exited, "{output:?}");
    assert!(out(&output).contains("ALL_DONE"), "{}", out(&output));
    let peak = output.peak_memory.unwrap_or_default();
    assert!(
        peak > 250 * MIB,
        "three 100 MB processes peaked at {} MB",
        peak / MIB
    );
}

/// `/tmp` and `/dev/shm` are tmpfs of half the memory limit each: writing past that fails with
/// ENOSPC, and the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_and_shm_are_size_limited() {
    if !sandbox_ready() {
        return;
    }
    let direct = Direct::new(SandboxSettings::default()).await;
    let limits = limits(256, 256);
    assert_eq!(limits.tmp_bytes, 128 * MIB);
    let command = "for dir in /tmp /dev/shm; do \
                     head -c 200000000 /dev/zero 2>&1 >$dir/fill; echo \"$dir status $?\"; \
                     echo \"$dir size $(stat -c %s $dir/fill)\"; rm -f $dir/fill; \
                   done; df -k /tmp /dev/shm | tail -2";
    let output = direct.run("tmpfs", command, limits).await;
    let text = out(&output);
    assert_eq!(output.ended, Ended::Exited, "{output:?}\n{text}");
    assert_eq!(
        text.matches("No space left on device").count(),
        2,
        "both fills must end in ENOSPC:\n{text}"
    );
    for dir in ["/tmp", "/dev/shm"] {
        assert!(!text.contains(&format!("{dir} status 0")), "{text}");
        let size: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{dir} size ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(u64::MAX);
        assert!(
            (100 * MIB..=128 * MIB).contains(&size),
            "{dir} held {size} bytes:\n{text}"
        );
    }
}

/// A run that writes past the workspace limit (many files, none of them too large) is stopped
/// and reported; what it added is removed and the earlier files stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_workspace_stops_the_run() {
    if !sandbox_ready() {
        return;
    }
    let dir = public_tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_SANDBOX", "namespace"),
            ("ECDYSIS_SANDBOX_WORKSPACE_MAX_MB", "32"),
            ("ECDYSIS_SANDBOX_TIMEOUT_SECONDS", "60"),
        ],
    )
    .await;
    let kept = server
        .ask("fill", "/run echo precious > notes.txt && echo saved")
        .await;
    assert!(kept.contains("saved"), "{kept}");
    // 1 MB files, one after the other, far past 32 MB; each file is within the file limit.
    let reply = server
        .ask(
            "fill",
            "/run mkdir -p junk && for i in $(seq 1 400); do head -c 1000000 /dev/zero > junk/$i || exit 9; sleep 0.01; done; echo FINISHED",
        )
        .await;
    assert!(
        reply.contains("the workspace grew past its 32.0 MB limit (sandbox.workspace_max_mb)"),
        "{reply}"
    );
    assert!(!reply.contains("FINISHED"), "{reply}");
    assert!(reply.contains("was removed"), "{reply}");
    // The space is given back, the earlier file is still there.
    let after = server.ask("fill", "/run ls; cat notes.txt; du -sk .").await;
    assert!(!after.contains("junk"), "{after}");
    assert!(after.contains("precious"), "{after}");
    let workspace = dir.path().join("data/workspaces");
    let used = du(&workspace);
    assert!(
        used < 8 * MIB,
        "{used} bytes left under {}",
        workspace.display()
    );
    let left = wait_sandboxes_gone(server.pid(), Duration::from_secs(10)).await;
    assert!(left.is_empty(), "left running: {left:#?}");
}

/// Bytes of everything under `dir`, as `ecdysis::sandbox::usage` counts them.
fn du(dir: &std::path::Path) -> u64 {
    ecdysis::sandbox::usage::measure(dir, u64::MAX).unwrap()
}

/// Namespaces, keyrings, mounts, BPF, ptrace and the like fail with EPERM inside the sandbox;
/// ordinary work (threads, fork, files) does not notice the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_system_calls_are_refused() {
    if !sandbox_ready() {
        return;
    }
    let direct = Direct::new(SandboxSettings::default()).await;
    assert!(
        direct.backend.describe().contains("seccomp denies"),
        "{}",
        direct.backend.describe()
    );
    let calls = [
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("bpf", libc::SYS_bpf),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("kexec_load", libc::SYS_kexec_load),
        ("init_module", libc::SYS_init_module),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("swapon", libc::SYS_swapon),
        ("reboot", libc::SYS_reboot),
        ("acct", libc::SYS_acct),
        ("io_uring_setup", libc::SYS_io_uring_setup),
    ];
    let table: Vec<String> = calls
        .iter()
        .map(|(name, nr)| format!("('{name}', {nr})"))
        .collect();
    let python = format!(
        "import ctypes, os, threading\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         for name, nr in [{}]:\n\
         \x20   ctypes.set_errno(0)\n\
         \x20   r = libc.syscall(nr, 0, 0, 0, 0, 0)\n\
         \x20   print('CALL', name, r, ctypes.get_errno())\n\
         t = threading.Thread(target=lambda: print('THREAD_OK')); t.start(); t.join()\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   os._exit(7)\n\
         print('FORK_OK', os.waitpid(pid, 0)[1] >> 8)\n",
        table.join(", ")
    );
    let command = format!(
        "python3 - <<'PY'\n{python}\nPY\n\
         unshare -U true 2>&1; echo \"unshare-U $?\"; \
         unshare -m true 2>&1; echo \"unshare-m $?\"; \
         mount -t tmpfs none /workspace 2>&1; echo \"mount $?\"; \
         echo data > f && cp f g && cat g"
    );
    let output = direct.run("syscalls", &command, Limits::default()).await;
    let text = out(&output);
    for (name, _) in calls {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("CALL {name} ")))
            .unwrap_or_else(|| panic!("{name} was not tried:\n{text}"));
        assert_eq!(
            line,
            format!("CALL {name} -1 {}", libc::EPERM),
            "{name} was not refused with EPERM:\n{text}"
        );
    }
    assert!(text.contains("THREAD_OK"), "{text}");
    assert!(text.contains("FORK_OK 7"), "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    for tool in ["unshare-U", "unshare-m", "mount"] {
        assert!(
            !text.contains(&format!("{tool} 0")),
            "{tool} worked:\n{text}"
        );
    }
    assert!(text.contains("\ndata"), "{text}");
}
