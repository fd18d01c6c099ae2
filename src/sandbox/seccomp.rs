//! The seccomp filter of sandboxed commands: a deny list of system calls that a command has
//! no business making (kernel keyrings, BPF, userfaultfd, ptrace and cross-process memory
//! access, mounts and namespaces, kernel modules and kexec, perf events, file handles, swap,
//! reboot, clocks, io_uring …) fails with `EPERM`; everything else is allowed.
//!
//! The filter is compiled to classic BPF in-process with `seccompiler` for the host
//! architecture (x86_64 or aarch64) and handed to bubblewrap on an inherited descriptor
//! (`--seccomp FD`); bubblewrap installs it right before it executes the command, after its
//! own set-up (mounts, namespaces), so the filter cannot get in bubblewrap's way. A system
//! call of another architecture's ABI (32-bit x86 on x86_64) kills the process, and x32 calls
//! on x86_64 (numbers with bit 30 set, which would dodge a list of 64-bit numbers) fail with
//! `EPERM`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::OwnedFd;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompFilter, TargetArch, sock_filter,
};

/// The denied system calls of every supported architecture: name and number.
const DENIED: &[(&str, libc::c_long)] = &[
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("migrate_pages", libc::SYS_migrate_pages),
    ("move_pages", libc::SYS_move_pages),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("nfsservctl", libc::SYS_nfsservctl),
];

/// Denied only where the architecture has them.
#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[(&str, libc::c_long)] = &[
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("uselib", libc::SYS_uselib),
    ("_sysctl", libc::SYS__sysctl),
    ("ustat", libc::SYS_ustat),
    ("sysfs", libc::SYS_sysfs),
];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_ARCH: &[(&str, libc::c_long)] = &[];

/// x32 system calls are the x86_64 numbers with this bit set.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The kernel takes at most this many instructions; bubblewrap reads the program from a pipe
/// we fill before it starts, so it must also fit in the pipe's buffer (64 KiB).
const MAX_PROGRAM_BYTES: usize = 32 * 1024;

/// Why there is no seccomp filter: shown in `doctor`, the logs and the sandbox's description.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler has no backend for the architecture ecdysis runs on.
    #[error("no seccomp filter for {arch}: {source}")]
    Arch {
        arch: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[source] BackendError),
    #[error("cannot compile the seccomp filter: {0}")]
    Compile(#[source] BackendError),
    /// seccompiler's program is not laid out as the x32 guard expects.
    #[error("the compiled seccomp filter does not start with its architecture check")]
    NoArchCheck,
    #[error("the seccomp program is {bytes} bytes, more than {MAX_PROGRAM_BYTES}")]
    TooLarge { bytes: usize },
}

/// A compiled filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// `struct sock_filter` instructions in the host's byte order.
    program: Vec<u8>,
    denied: usize,
}

/// The names of the denied system calls on this architecture.
pub fn denied_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().chain(DENIED_ARCH).map(|(name, _)| *name)
}

impl Filter {
    /// Compile the deny list for the architecture ecdysis runs on.
    pub fn build() -> Result<Self, SeccompError> {
        let arch = std::env::consts::ARCH;
        let arch =
            TargetArch::try_from(arch).map_err(|source| SeccompError::Arch { arch, source })?;
        let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = DENIED
            .iter()
            .chain(DENIED_ARCH)
            .map(|(_, number)| (*number, Vec::new()))
            .collect();
        let denied = rules.len();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(SeccompError::Build)?;
        let program: BpfProgram = filter.try_into().map_err(SeccompError::Compile)?;
        let program = guard_x32(program)?;
        let bytes: Vec<u8> = program
            .iter()
            .flat_map(|insn| {
                let mut raw = [0u8; 8];
                raw[..2].copy_from_slice(&insn.code.to_ne_bytes());
                raw[2] = insn.jt;
                raw[3] = insn.jf;
                raw[4..].copy_from_slice(&insn.k.to_ne_bytes());
                raw
            })
            .collect();
        if bytes.len() > MAX_PROGRAM_BYTES {
            return Err(SeccompError::TooLarge { bytes: bytes.len() });
        }
        Ok(Self {
            program: bytes,
            denied,
        })
    }

    /// How many system calls the filter denies.
    pub fn denied(&self) -> usize {
        self.denied
    }

    /// The program, as bubblewrap reads it.
    pub fn bytes(&self) -> &[u8] {
        &self.program
    }

    /// A pipe holding the program: the read end, for bubblewrap to read to its end. The
    /// descriptor is close-on-exec; the child that runs bubblewrap clears that flag.
    pub fn pipe(&self) -> io::Result<OwnedFd> {
        let (reader, mut writer) = io::pipe()?;
        writer.write_all(&self.program)?;
        drop(writer);
        Ok(OwnedFd::from(reader))
    }
}

/// Refuse x32 system calls right after the architecture check seccompiler starts with:
/// `ld nr; jge X32_SYSCALL_BIT, deny, next; deny: ret ERRNO(EPERM)`. Later jumps are
/// relative, so inserting before them keeps them right.
#[cfg(target_arch = "x86_64")]
fn guard_x32(mut program: BpfProgram) -> Result<BpfProgram, SeccompError> {
    const LD_W_ABS: u16 = 0x20;
    const JMP_JEQ_K: u16 = 0x15;
    const JMP_JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    /// `offsetof(struct seccomp_data, arch)`; the syscall number is at 0.
    const ARCH_OFFSET: u32 = 4;
    let starts_with_arch_check = program.len() > 3
        && program[0].code == LD_W_ABS
        && program[0].k == ARCH_OFFSET
        && program[1].code == JMP_JEQ_K
        && program[1].jt == 1
        && program[2].code == RET_K;
    if !starts_with_arch_check {
        return Err(SeccompError::NoArchCheck);
    }
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let guard = [
        insn(LD_W_ABS, 0, 0, 0),
        insn(JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    program.splice(3..3, guard);
    Ok(program)
}

#[cfg(not(target_arch = "x86_64"))]
fn guard_x32(program: BpfProgram) -> Result<BpfProgram, SeccompError> {
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn the_program_is_compiled_for_this_machine() {
        let filter = Filter::build().unwrap();
        assert_eq!(filter.denied(), DENIED.len() + DENIED_ARCH.len());
        assert_eq!(filter.bytes().len() % 8, 0);
        assert!(filter.bytes().len() < MAX_PROGRAM_BYTES);
        assert!(denied_names().any(|n| n == "keyctl"));
    }

    #[test]
    fn refusals_read_as_before() {
        assert_eq!(
            SeccompError::TooLarge { bytes: 40_000 }.to_string(),
            "the seccomp program is 40000 bytes, more than 32768"
        );
        if cfg!(target_arch = "x86_64") {
            let e = guard_x32(Vec::new()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "the compiled seccomp filter does not start with its architecture check"
            );
        }
        let e = TargetArch::try_from("vax")
            .map_err(|source| SeccompError::Arch {
                arch: "vax",
                source,
            })
            .unwrap_err();
        assert!(
            e.to_string().starts_with("no seccomp filter for vax: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    /// The program installed on a child (as bubblewrap installs it): denied calls fail with
    /// EPERM, x32 numbers too, everything else works.
    #[test]
    fn denied_calls_fail_and_others_work() {
        let filter = Filter::build().unwrap();
        let program: Vec<libc::sock_filter> = filter
            .bytes()
            .chunks_exact(8)
            .map(|raw| libc::sock_filter {
                code: u16::from_ne_bytes([raw[0], raw[1]]),
                jt: raw[2],
                jf: raw[3],
                k: u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]),
            })
            .collect();
        let len = program.len() as u16;
        let pointer = program.as_ptr() as usize;
        let x32_keyctl = if cfg!(target_arch = "x86_64") {
            0x4000_0000 + libc::SYS_keyctl
        } else {
            libc::SYS_keyctl
        };
        let script = format!(
            "import ctypes, os\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             for name, nr in (('keyctl', {keyctl}), ('unshare', {unshare}), ('x32', {x32_keyctl})):\n\
             \x20   r = libc.syscall(nr, 0, 0, 0, 0, 0)\n\
             \x20   print(name, r, ctypes.get_errno())\n\
             print('pid', os.getpid() > 0)\n",
            keyctl = libc::SYS_keyctl,
            unshare = libc::SYS_unshare,
        );
        let mut command = std::process::Command::new("python3");
        command.arg("-c").arg(script);
        // SAFETY: prctl and seccomp(2) on a program that outlives the fork; no allocation.
        unsafe {
            command.pre_exec(move || {
                let fprog = libc::sock_fprog {
                    len,
                    filter: pointer as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        &fprog as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let output = command.output().unwrap();
        drop(program);
        let text = String::from_utf8_lossy(&output.stdout);
        let eperm = libc::EPERM;
        assert!(text.contains(&format!("keyctl -1 {eperm}")), "{text}");
        assert!(text.contains(&format!("unshare -1 {eperm}")), "{text}");
        assert!(text.contains(&format!("x32 -1 {eperm}")), "{text}");
        assert!(text.contains("pid True"), "{text}\n{output:?}");
    }
}
