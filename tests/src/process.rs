//! Child processes the test bed owns: spawned into a cgroup before exec, logged to a
//! file, stopped with SIGTERM then SIGKILL.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Moves the calling process into the cgroup whose `cgroup.procs` file is `procs`.
/// Async-signal-safe (open, write, close; no allocation): meant for a `pre_exec` closure,
/// between fork and exec.
pub fn join_cgroup(procs: &CStr) -> std::io::Result<()> {
    // SAFETY: a valid NUL-terminated path; the fd is closed on every path.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // "0" means the writing process itself.
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

pub struct ManagedChild {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<std::process::ExitStatus>,
}

impl ManagedChild {
    /// Spawns `cmd` with stdout and stderr appended to `log`. With `cgroup`, the child
    /// joins that cgroup v2 directory between fork and exec, so even its first
    /// instruction (and every thread the Go runtime starts) is accounted there.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, cgroup: Option<&Path>) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);

        let procs_file = cgroup
            .map(|cg| CString::new(cg.join("cgroup.procs").as_os_str().as_bytes()))
            .transpose()
            .context("cgroup path contains a NUL byte")?;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe syscalls (prctl, open, write, close) on memory prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Backstop for a test process killed without unwinding: its children go
                // with it instead of lingering outside any test's cleanup.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(path) = &procs_file {
                    join_cgroup(path)?;
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(ManagedChild {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited (it is reaped then).
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL; always reaps the process.
    pub fn stop(&mut self, grace: Duration) {
        if self.try_exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: the pid is our unreaped child, so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.try_exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// The last `max_bytes` of the process's log, for failure messages.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        tail_file(&self.log, max_bytes)
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The last `max_bytes` of a file, lossily decoded.
pub fn tail_file(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Is a process (any state but reaped) still there?
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is dead for our purposes; its parent just has not reaped it yet.
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
