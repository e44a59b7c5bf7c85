//! cgroup v2 directories for the replicas: create, inspect, empty and remove.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Prefix of every cgroup the test bed creates directly under the v2 mount.
pub const ROOT_PREFIX: &str = "routeskew-test-";

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on pure-v2 hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones, anything else in containers. Read from mountinfo, never assumed.
pub fn v2_mount() -> Result<PathBuf> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_v2_mount(&info).context("no cgroup2 filesystem is mounted (cgroup v2 is required)")
}

fn parse_v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape_mountinfo(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 id the kernel reports (`bpf_get_current_cgroup_id`) is the inode number
/// of the cgroup's directory.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

pub fn create(path: &Path) -> Result<u64> {
    fs::create_dir(path).with_context(|| format!("creating cgroup {}", path.display()))?;
    cgroup_id(path)
}

/// Pids currently in the cgroup itself (not its descendants).
pub fn procs(path: &Path) -> Result<Vec<u32>> {
    let text = fs::read_to_string(path.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", path.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The v2 cgroup of a process, as a path under the v2 mount.
pub fn of_pid(pid: u32) -> Result<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("process {pid} has no cgroup v2 entry"))?;
    Ok(v2_mount()?.join(rel.trim_start_matches('/')))
}

/// Kills every process in the cgroup: `cgroup.kill` where the kernel has it (5.14+), else
/// SIGKILL pid by pid.
pub fn kill_all(path: &Path) {
    let kill_file = path.join("cgroup.kill");
    if kill_file.exists() && fs::write(&kill_file, "1").is_ok() {
        return;
    }
    for pid in procs(path).unwrap_or_default() {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: plain syscall; a stale pid only yields ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes a cgroup tree, children first. A cgroup can only be removed once it has no
/// processes left, and exiting processes leave it a moment after they are reaped, so
/// this kills stragglers and retries for a while.
pub fn remove_tree(path: &Path, timeout: Duration) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path(), timeout)?;
            }
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                if Instant::now() >= deadline {
                    bail!(
                        "cannot remove cgroup {}: {e} (processes left: {:?})",
                        path.display(),
                        procs(path).unwrap_or_default()
                    );
                }
                kill_all(path);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Removes test-bed cgroups left behind by test processes that died without cleaning
/// up (SIGKILL, a crashed CI runner). Names carry the creating pid; only trees whose
/// creator is gone are touched, so parallel test processes are safe.
pub fn sweep_stale(mount: &Path) {
    let Ok(entries) = fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(ROOT_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if crate::process::pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        if let Ok(children) = fs::read_dir(&path) {
            for c in children.flatten() {
                if c.path().is_dir() {
                    kill_all(&c.path());
                }
            }
        }
        if let Err(e) = remove_tree(&path, Duration::from_secs(2)) {
            eprintln!("routeskew-testbed: stale cgroup left in place: {e:#}");
        }
    }
}

/// All test-bed cgroups that currently exist (for leak checks).
pub fn existing_testbed_cgroups() -> Result<Vec<PathBuf>> {
    let mount = v2_mount()?;
    let mut out = Vec::new();
    for entry in fs::read_dir(&mount)?.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(ROOT_PREFIX))
        {
            out.push(entry.path());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v2_mount_in_hybrid_and_pure_layouts() {
        let hybrid = "20 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      21 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            parse_v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_v2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = "30 1 0:26 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(parse_v2_mount(escaped), Some(PathBuf::from("/mnt/cg two")));
        assert_eq!(parse_v2_mount("1 1 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }
}
