//! For the end-to-end test: a real cgroup for the pod's container, and the agent process
//! stopped whatever happens.

use std::path::{Path, PathBuf};

/// A real cgroup v2 subtree shaped like kubelet's, removed on drop.
pub(crate) struct RealCgroup {
    top: PathBuf,
    leaf: PathBuf,
    child: Option<std::process::Child>,
}

impl RealCgroup {
    pub(crate) fn create(v2: &Path, uid: &str, id: &str) -> Self {
        let top = v2.join(format!("routeskew-e2e-{}.slice", std::process::id()));
        let leaf = top.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ));
        std::fs::create_dir_all(&leaf).unwrap();
        let child = std::process::Command::new("sleep")
            .arg("120")
            .spawn()
            .unwrap();
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        RealCgroup {
            top,
            leaf,
            child: Some(child),
        }
    }
}

impl Drop for RealCgroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Leaf first: cgroup directories are removed one level at a time.
        let mut dir = self.leaf.clone();
        while dir.starts_with(&self.top) {
            let _ = std::fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
}

/// Kills the agent if the test fails before stopping it.
pub(crate) struct Agent(pub(crate) std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
