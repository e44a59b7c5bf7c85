//! What resolution knows about a pod: its QoS class, its containers and their runtime
//! ids, its IPs and ports; and the processes found in its containers.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::discovery::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }

    /// The QoS directory component (`None`: Guaranteed pods sit directly in kubepods).
    pub(super) fn dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// A container id in pod status that is not `<runtime>://<hex id>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerIdError {
    #[error("container id {given:?} has no runtime prefix")]
    NoRuntime { given: String },
    #[error("container id {given:?} is not an id")]
    NotAnId { given: String },
}

/// A container id from pod status, `<runtime>://<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerId {
    pub runtime: String,
    pub id: String,
}

impl ContainerId {
    /// Ids are hex in every runtime we know; anything else could be a path component
    /// and is refused.
    pub fn parse(s: &str) -> Result<Self, ContainerIdError> {
        let (runtime, id) = s
            .split_once("://")
            .ok_or_else(|| ContainerIdError::NoRuntime {
                given: s.to_string(),
            })?;
        if id.len() < 12 || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ContainerIdError::NotAnId {
                given: s.to_string(),
            });
        }
        Ok(ContainerId {
            runtime: runtime.to_string(),
            id: id.to_ascii_lowercase(),
        })
    }

    /// Whether a cgroup directory name is this container's (`<id>`, `crio-<id>`,
    /// `cri-containerd-<id>.scope`, `docker-<id>.scope`, …). CRI-O's monitor
    /// (`crio-conmon-<id>.scope`) is not the container.
    pub(super) fn matches_dir(&self, name: &str) -> bool {
        let name = name.strip_suffix(".scope").unwrap_or(name);
        if name == self.id {
            return true;
        }
        match name.strip_suffix(self.id.as_str()) {
            Some(prefix) => {
                matches!(
                    prefix,
                    "cri-containerd-" | "crio-" | "docker-" | "containerd-"
                )
            }
            None => false,
        }
    }
}

/// A running container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub id: ContainerId,
}

/// A declared container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub name: Option<String>,
    pub port: u16,
}

/// What resolution needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub qos: Option<QosClass>,
    pub ips: Vec<IpAddr>,
    /// TCP container ports.
    pub ports: Vec<PodPort>,
    /// Running containers (with an id); others have no cgroup to watch yet.
    pub containers: Vec<ContainerInfo>,
    /// Containers whose status could not be used, with the reason.
    pub unusable: Vec<(String, ContainerIdError)>,
    /// The controller that owns it (`ReplicaSet/traefik-6d9f…`): its siblings share it.
    pub owner: Option<String>,
    /// When its Ready condition last turned True (`None`: not ready, or unknown).
    pub ready_since: Option<std::time::SystemTime>,
}

impl PodInfo {
    /// Every pod IP with every declared TCP port: what the prober may talk to.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for ip in &self.ips {
            for p in &self.ports {
                out.push(Endpoint {
                    addr: SocketAddr::new(*ip, p.port),
                    port_name: p.name.clone(),
                });
            }
        }
        out
    }
}

/// A process of a watched container, for the TLS uprobes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Executable as the container sees it (`/proc/<pid>/exe`).
    pub exe: PathBuf,
    /// The same file reachable from this host: `<host proc>/<pid>/root/<exe>`.
    pub host_path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::pod_cgroup::tests::ID;

    #[test]
    fn parses_container_ids() {
        let c = ContainerId::parse(&format!("containerd://{ID}")).unwrap();
        assert_eq!((c.runtime.as_str(), c.id.as_str()), ("containerd", ID));
        assert!(matches!(
            ContainerId::parse(ID),
            Err(ContainerIdError::NoRuntime { .. })
        ));
        assert!(matches!(
            ContainerId::parse("cri-o://../../etc"),
            Err(ContainerIdError::NotAnId { .. })
        ));
        assert!(matches!(
            ContainerId::parse("docker://abc"),
            Err(ContainerIdError::NotAnId { .. })
        ));
        assert!(c.matches_dir(&format!("cri-containerd-{ID}.scope")));
        assert!(c.matches_dir(&format!("crio-{ID}.scope")));
        assert!(c.matches_dir(&format!("crio-{ID}")));
        assert!(c.matches_dir(ID));
        assert!(!c.matches_dir(&format!("crio-conmon-{ID}.scope")));
        assert!(!c.matches_dir(&format!("x{ID}")));
    }
}
