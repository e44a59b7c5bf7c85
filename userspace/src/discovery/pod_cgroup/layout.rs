//! Which cgroup hierarchies a host has: pure v2, hybrid (v2 at `unified/`) or v1 only.

use std::path::{Path, PathBuf};

/// v1 hierarchies looked at to tell "v1 only" from "not there at all".
pub(super) const V1_HIERARCHIES: [&str; 5] = ["systemd", "memory", "pids", "cpu,cpuacct", "cpu"];

/// A directory that is no cgroup mount of any kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is not a cgroup mount (no cgroup.controllers, unified/ or v1 controllers); \
     mount the host's /sys/fs/cgroup and point --host-cgroup-root at it",
    root.display()
)]
pub struct CgroupLayoutError {
    pub root: PathBuf,
}

/// Which cgroup hierarchies the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup2 mounted at the root.
    Unified { v2: PathBuf },
    /// v1 controllers at the root, cgroup2 at `unified/`.
    Hybrid { v2: PathBuf, v1: PathBuf },
    /// v1 controllers only: the kernel filter cannot work.
    Legacy { v1: PathBuf },
}

impl CgroupLayout {
    /// Looks at a host cgroup mount (`/sys/fs/cgroup`, or where a DaemonSet mounts it).
    pub fn detect(root: &Path) -> Result<Self, CgroupLayoutError> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(CgroupLayout::Unified {
                v2: root.to_path_buf(),
            });
        }
        let unified = root.join("unified");
        if unified.join("cgroup.controllers").is_file() {
            return Ok(CgroupLayout::Hybrid {
                v2: unified,
                v1: root.to_path_buf(),
            });
        }
        if V1_HIERARCHIES.iter().any(|h| root.join(h).is_dir()) {
            return Ok(CgroupLayout::Legacy {
                v1: root.to_path_buf(),
            });
        }
        Err(CgroupLayoutError {
            root: root.to_path_buf(),
        })
    }

    pub(super) fn v2(&self) -> Option<&Path> {
        match self {
            CgroupLayout::Unified { v2 } | CgroupLayout::Hybrid { v2, .. } => Some(v2),
            CgroupLayout::Legacy { .. } => None,
        }
    }

    pub(super) fn v1(&self) -> Option<&Path> {
        match self {
            CgroupLayout::Hybrid { v1, .. } | CgroupLayout::Legacy { v1 } => Some(v1),
            CgroupLayout::Unified { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            CgroupLayout::Unified { v2 } => format!("cgroup v2 at {}", v2.display()),
            CgroupLayout::Hybrid { v2, .. } => format!("hybrid, cgroup v2 at {}", v2.display()),
            CgroupLayout::Legacy { v1 } => format!("cgroup v1 only at {}", v1.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::discovery::pod_cgroup::tests::Tree;

    #[test]
    fn detects_layouts() {
        let t = Tree::new("layout");
        assert!(CgroupLayout::detect(&t.root).is_err());
        fs::create_dir_all(t.root.join("memory")).unwrap();
        assert!(matches!(
            CgroupLayout::detect(&t.root),
            Ok(CgroupLayout::Legacy { .. })
        ));
        t.v2_mount("unified");
        assert_eq!(
            CgroupLayout::detect(&t.root),
            Ok(CgroupLayout::Hybrid {
                v2: t.root.join("unified"),
                v1: t.root.clone()
            })
        );
        t.v2_mount("");
        assert!(matches!(
            CgroupLayout::detect(&t.root),
            Ok(CgroupLayout::Unified { .. })
        ));
    }
}
