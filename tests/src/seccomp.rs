//! The seccomp profile shipped for Kubernetes (`deploy/seccomp/routeskew.json`), applied
//! in the test bed as a container runtime applies a Localhost profile: a BPF filter built
//! from the same file, installed between fork and exec. The profile is a deny list
//! (`defaultAction: SCMP_ACT_ALLOW`, every rule `SCMP_ACT_ERRNO`); anything else in it is
//! refused here rather than half-applied.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::paths;

/// The profile's path in the workspace.
pub fn profile_path() -> PathBuf {
    paths::workspace_root().join("deploy/seccomp/routeskew.json")
}

/// x86-64 numbers of the syscalls a profile may name.
fn number(name: &str) -> Option<i64> {
    macro_rules! table {
        ($($n:ident),* $(,)?) => {
            match format!("SYS_{name}").as_str() {
                $(stringify!($n) => Some(libc::$n),)*
                _ => None,
            }
        };
    }
    table!(
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_pidfd_getfd,
        SYS_kcmp,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_mount,
        SYS_mount_setattr,
        SYS_umount2,
        SYS_move_mount,
        SYS_open_tree,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_pivot_root,
        SYS_chroot,
        SYS_setns,
        SYS_unshare,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_reboot,
        SYS_swapon,
        SYS_swapoff,
        SYS_acct,
        SYS_quotactl,
        SYS_quotactl_fd,
        SYS_nfsservctl,
        SYS_syslog,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_clock_adjtime,
        SYS_adjtimex,
        SYS_iopl,
        SYS_ioperm,
        SYS_keyctl,
        SYS_add_key,
        SYS_request_key,
        SYS_userfaultfd,
        SYS_fanotify_init,
        SYS_lookup_dcookie,
        SYS_uselib,
        SYS_ustat,
        SYS_sysfs,
        SYS__sysctl,
        SYS_vhangup,
        SYS_process_madvise,
        SYS_move_pages,
        SYS_migrate_pages,
        SYS_mbind,
        SYS_set_mempolicy,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
    )
}

/// The filter `profile` describes: every named syscall fails with its `errnoRet`.
pub fn filter(profile: &Path) -> Result<BpfProgram> {
    let text = std::fs::read_to_string(profile)
        .with_context(|| format!("reading {}", profile.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", profile.display()))?;
    ensure!(
        v["defaultAction"] == "SCMP_ACT_ALLOW",
        "only deny-list profiles are applied here"
    );
    let mut rules = BTreeMap::new();
    let mut errno = None;
    for rule in v["syscalls"].as_array().into_iter().flatten() {
        ensure!(
            rule["action"] == "SCMP_ACT_ERRNO",
            "rule action: {}",
            rule["action"]
        );
        ensure!(
            rule["args"].is_null(),
            "argument filters are not applied here"
        );
        let e = rule["errnoRet"].as_u64().context("errnoRet")?;
        ensure!(errno.is_none_or(|x| x == e), "one errno for every rule");
        errno = Some(e);
        for name in rule["names"].as_array().into_iter().flatten() {
            let name = name.as_str().context("a syscall name")?;
            let Some(nr) = number(name) else {
                bail!("{name}: not in the test bed's syscall table (add it)");
            };
            rules.insert(nr, Vec::new());
        }
    }
    let errno = u32::try_from(errno.context("the profile denies nothing")?)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Installs `program` in the child `cmd` starts, just before exec.
pub fn install(cmd: &mut Command, program: BpfProgram) {
    // SAFETY: the closure runs in the forked child before exec; the program was built
    // before the fork, and installing it makes only prctl and seccomp syscalls.
    unsafe {
        cmd.pre_exec(move || seccompiler::apply_filter(&program).map_err(std::io::Error::other));
    }
}

/// The `Seccomp:` mode in `/proc/<pid>/status` (2: a filter is installed).
pub fn mode_of(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .context("no Seccomp line")?
        .trim()
        .parse()
        .context("Seccomp mode")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child under the shipped profile: ptrace and mount fail with EPERM, an ordinary
    /// call works. (Python's ctypes makes the raw calls.)
    #[test]
    fn the_shipped_profile_denies_ptrace_and_mount_in_a_child() {
        let Some(python) = paths::which("python3") else {
            eprintln!("skipped: no python3");
            return;
        };
        let script = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(0, 0, 0, 0)          # PTRACE_TRACEME
print("ptrace", r, ctypes.get_errno())
r = libc.mount(b"none", b"/nonexistent", b"tmpfs", 0, None)
print("mount", r, ctypes.get_errno())
print("getpid", os.getpid() > 0)
"#;
        let run = |filtered: bool| -> String {
            let mut cmd = Command::new(&python);
            cmd.args(["-c", script]);
            if filtered {
                install(&mut cmd, filter(&profile_path()).unwrap());
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let free = run(false);
        assert!(free.contains("ptrace 0 "), "{free}");
        let denied = run(true);
        assert!(
            denied.contains(&format!("ptrace -1 {}", libc::EPERM)),
            "{denied}"
        );
        assert!(
            denied.contains(&format!("mount -1 {}", libc::EPERM)),
            "{denied}"
        );
        assert!(denied.contains("getpid True"), "{denied}");
    }
}
