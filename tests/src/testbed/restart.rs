//! Restarting one replica: its Traefik process stops and a new one starts with the same
//! configuration, in the same cgroup, on the same ports (the soak's replica restarts).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::launch::spawn_traefik;
use super::Testbed;

impl Testbed {
    /// Stops replica `index`'s Traefik (SIGTERM, SIGKILL after `grace`) and reaps it. Its
    /// cgroup, ports, configuration and logs stay for [`Testbed::start_replica`]; until
    /// then connections to its entrypoints are refused.
    pub fn stop_replica(&mut self, index: usize, grace: Duration) -> Result<()> {
        let name = self
            .replicas
            .get(index)
            .with_context(|| format!("no replica {index}"))?
            .name
            .clone();
        let Some(pos) = self.children.iter().position(|c| c.name() == name) else {
            bail!("{name} is not running");
        };
        let mut child = self.children.remove(pos);
        child.stop(grace);
        Ok(())
    }

    /// Starts replica `index` again after [`Testbed::stop_replica`]: a new Traefik
    /// process from the same configuration, in the same cgroup, and waits until it
    /// serves exactly its routers on every entrypoint. Returns the new pid and every
    /// answer the replica's API entrypoint gave to the readiness checks, as (status,
    /// Traefik's router-miss 404): responses of the new process, which an agent that
    /// already watches it counts.
    ///
    /// The child dies with the thread that spawned it (`PR_SET_PDEATHSIG`): call this
    /// from a thread that lives as long as the test bed (a current-thread runtime's).
    pub async fn start_replica(&mut self, index: usize) -> Result<(u32, Vec<(u16, bool)>)> {
        if self.stopped {
            bail!("the test bed is stopped");
        }
        let r = self
            .replicas
            .get(index)
            .with_context(|| format!("no replica {index}"))?
            .clone();
        if self.children.iter().any(|c| c.name() == r.name) {
            bail!("{} is already running", r.name);
        }
        let child = spawn_traefik(&self.traefik_bin, &r.name, &r.config_dir, &r.cgroup_path)?;
        let pid = child.pid();
        // Registered at once: the test bed's cleanup stops it whatever happens next.
        self.children.push(child);
        self.replicas[index].pid = pid;
        let deadline = Instant::now() + self.config.ready_timeout;
        let mut ready = r.clone();
        ready.pid = pid;
        let api_answers = self.wait_replica_ready(&ready, deadline).await?;
        Ok((pid, api_answers))
    }

    /// Whether replica `index`'s Traefik process runs (false between stop and start).
    pub fn replica_running(&mut self, index: usize) -> bool {
        let Some(r) = self.replicas.get(index) else {
            return false;
        };
        let name = r.name.clone();
        self.children
            .iter_mut()
            .find(|c| c.name() == name)
            .is_some_and(|c| c.try_exited().is_none())
    }
}
