//! Landlock as an extra layer under bubblewrap: scope the sandbox so that it can neither signal
//! processes outside itself nor connect to abstract unix sockets created outside it.
//!
//! Only scopes are used. A Landlock domain that handles file-system access forbids `mount(2)`,
//! which bubblewrap needs after the domain is in place, and TCP rules are per port only, which
//! would also cut the loopback network that stays usable inside the sandbox. The network and
//! the file system are confined by the namespaces themselves.

use std::io;

/// `LANDLOCK_CREATE_RULESET_VERSION`: ask for the ABI version.
const CREATE_RULESET_VERSION: u32 = 1 << 0;
/// `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET` (ABI 6).
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
/// `LANDLOCK_SCOPE_SIGNAL` (ABI 6).
const SCOPE_SIGNAL: u64 = 1 << 1;
/// The first ABI with scopes.
pub const SCOPES_ABI: i64 = 6;

/// `struct landlock_ruleset_attr` as of ABI 6.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// The kernel's Landlock ABI version, or 0 when Landlock is unavailable or disabled.
pub fn abi() -> i64 {
    // SAFETY: a query with a null attribute and size 0 reads and writes no memory.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    version.max(0)
}

/// Restrict the calling process (and everything it starts) to its own scope.
///
/// # Safety
/// Meant for `pre_exec`: it only makes raw system calls (async-signal-safe), no allocation.
pub unsafe fn restrict_scopes() -> io::Result<()> {
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: 0,
        scoped: SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL,
    };
    // SAFETY: `attr` lives across the call and the size matches the struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = fd as libc::c_int;
    // Without CAP_SYS_ADMIN a domain needs no_new_privs; with it, it does no harm.
    // SAFETY: plain system calls on values owned here.
    let failed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0
    };
    let result = if failed {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: `fd` was returned by the kernel above and is closed once.
    unsafe {
        libc::close(fd);
    }
    result
}
