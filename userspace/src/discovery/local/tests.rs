//! Local discovery over a fake `/proc` and cgroup2 tree.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::discovery::Attribution;
use crate::event::Origin;

/// A fake /proc and cgroup2 tree in a temp directory.
struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let root = std::env::temp_dir().join(format!(
            "routeskew-local-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(root.join("proc")).expect("mkdir");
        fs::create_dir_all(root.join("cg")).expect("mkdir");
        Fixture { root }
    }
    fn proc_root(&self) -> PathBuf {
        self.root.join("proc")
    }
    fn cg_root(&self) -> PathBuf {
        self.root.join("cg")
    }
    fn cgroup(&self, rel: &str, procs: &[u32]) -> u64 {
        let dir = self.cg_root().join(rel);
        fs::create_dir_all(&dir).expect("mkdir");
        let text: String = procs.iter().map(|p| format!("{p}\n")).collect();
        fs::write(dir.join("cgroup.procs"), text).expect("write");
        cgroup_id(&dir).expect("ino")
    }
    fn process(&self, pid: u32, comm: &str, cgroup_rel: &str, env: &[&str]) {
        let dir = self.proc_root().join(pid.to_string());
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("comm"), format!("{comm}\n")).expect("write");
        fs::write(
            dir.join("cgroup"),
            format!("4:memory:/whatever\n0::/{cgroup_rel}\n"),
        )
        .expect("write");
        let environ: Vec<u8> = env
            .iter()
            .flat_map(|kv| kv.bytes().chain(std::iter::once(0)))
            .collect();
        fs::write(dir.join("environ"), environ).expect("write");
    }
    fn discovery(&self, cfg: impl FnOnce(&mut LocalConfig)) -> LocalDiscovery {
        let mut c = LocalConfig {
            process_name: Some("traefik".into()),
            pids: vec![],
            cgroups: vec![],
            namespace: "local".into(),
            proc_root: self.proc_root(),
            endpoint_refresh: Some(Duration::ZERO),
        };
        cfg(&mut c);
        LocalDiscovery::with_cgroup2_root(c, self.cg_root())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Process `pid` listens on 127.0.0.1:8080 when `listening`, on nothing otherwise.
fn listener(f: &Fixture, pid: u32, listening: bool) {
    let dir = f.proc_root().join(pid.to_string());
    fs::create_dir_all(dir.join("net")).expect("mkdir");
    fs::create_dir_all(dir.join("fd")).expect("mkdir");
    let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    let row = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 100 0 0 10 0\n";
    let text = if listening {
        format!("{header}{row}")
    } else {
        header.to_string()
    };
    fs::write(dir.join("net/tcp"), text).expect("write");
    let link = dir.join("fd/3");
    if fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("socket:[51234]", link).expect("symlink");
    }
}

fn endpoint_addrs(scan: &Scan) -> Vec<String> {
    scan.targets
        .targets()
        .iter()
        .flat_map(|t| t.endpoints.iter().map(|e| e.addr.to_string()))
        .collect()
}

#[test]
fn listening_endpoints_are_cached_and_not_read_without_a_prober() {
    let f = Fixture::new("endpoints");
    f.cgroup("kubepods/traefik-a", &[42]);
    f.process(42, "traefik", "kubepods/traefik-a", &[]);
    listener(&f, 42, true);

    let cached = f.discovery(|c| c.endpoint_refresh = Some(Duration::from_secs(3600)));
    let fresh = f.discovery(|c| c.endpoint_refresh = Some(Duration::ZERO));
    let none = f.discovery(|c| c.endpoint_refresh = None);
    assert_eq!(endpoint_addrs(&cached.scan()), ["127.0.0.1:8080"]);
    assert_eq!(endpoint_addrs(&fresh.scan()), ["127.0.0.1:8080"]);
    assert!(endpoint_addrs(&none.scan()).is_empty());

    // The listener goes: only a discovery whose copy is stale reads that.
    listener(&f, 42, false);
    assert_eq!(endpoint_addrs(&cached.scan()), ["127.0.0.1:8080"]);
    assert!(endpoint_addrs(&fresh.scan()).is_empty());

    // A process that is no longer a target is forgotten, so a new one reusing its
    // pid is read afresh.
    fs::remove_dir_all(f.proc_root().join("42")).expect("rm");
    assert!(cached.scan().targets.targets().is_empty());
    f.process(42, "traefik", "kubepods/traefik-a", &[]);
    listener(&f, 42, false);
    assert!(endpoint_addrs(&cached.scan()).is_empty());
    // Not listening yet is not remembered: the next scan sees the listener.
    listener(&f, 42, true);
    assert_eq!(endpoint_addrs(&cached.scan()), ["127.0.0.1:8080"]);
}

fn names(scan: &Scan) -> Vec<String> {
    scan.targets
        .targets()
        .iter()
        .map(|t| t.replica.name.clone())
        .collect()
}

#[test]
fn finds_named_processes_with_stable_names() {
    let fx = Fixture::new("named");
    let a = fx.cgroup("demo/traefik-1", &[100]);
    let b = fx.cgroup("system.slice/traefik@2.service", &[200]);
    let shared = fx.cgroup("user.slice/session-1.scope", &[300, 301, 302]);
    fx.process(
        100,
        "traefik",
        "demo/traefik-1",
        &["ROUTESKEW_REPLICA=edge-a", "X=1"],
    );
    fx.process(200, "traefik", "system.slice/traefik@2.service", &[]);
    fx.process(300, "traefik", "user.slice/session-1.scope", &[]);
    fx.process(301, "bash", "user.slice/session-1.scope", &[]);
    let scan = fx.discovery(|_| {}).scan();
    assert!(scan.failures.is_empty(), "{:?}", scan.failures);
    assert_eq!(names(&scan), vec!["edge-a", "traefik-300", "traefik@2"]);
    let set = &scan.targets;
    let o = |tgid, cgroup_id| Origin { tgid, cgroup_id };
    assert_eq!(
        set.resolve(o(100, a)).map(|r| r.name.as_str()),
        Some("edge-a")
    );
    assert_eq!(
        set.resolve(o(200, b)).map(|r| r.name.as_str()),
        Some("traefik@2")
    );
    // The shell sharing the session cgroup is not a replica.
    assert_eq!(set.resolve(o(301, shared)), None);
    assert_eq!(set.cgroup_ids().len(), 3);
}

#[test]
fn explicit_pids_and_cgroups_and_failures() {
    let fx = Fixture::new("explicit");
    fx.cgroup("apps/edge", &[500, 501]);
    fx.cgroup("apps/other", &[600]);
    fx.process(600, "my-proxy", "apps/other", &[]);
    fs::create_dir_all(fx.root.join("elsewhere")).expect("mkdir");
    fs::write(fx.root.join("elsewhere/cgroup.procs"), "500\n").expect("write");
    let scan = fx
        .discovery(|c| {
            c.process_name = None;
            c.pids = vec![600, 999];
            c.cgroups = vec![
                PathBuf::from("apps/edge"),
                PathBuf::from("apps/gone"),
                // Outside the cgroup2 mount, though it has a `cgroup.procs` file.
                fx.root.join("elsewhere"),
                PathBuf::from("apps/../../elsewhere"),
            ];
        })
        .scan();
    assert_eq!(names(&scan), vec!["edge", "other"]);
    let edge = &scan.targets.targets()[0];
    assert_eq!(edge.attribution, Attribution::Cgroup);
    assert_eq!(edge.pids, vec![500, 501]);
    let what: Vec<&str> = scan.failures.iter().map(|f| f.what.as_str()).collect();
    assert_eq!(what.len(), 4, "{:?}", scan.failures);
    assert_eq!(what[..2], ["pid 999", "cgroup apps/gone"]);
    for f in &scan.failures[2..] {
        assert!(
            f.reason.to_string().contains("not a cgroup v2 directory"),
            "{f:?}"
        );
    }
}

#[test]
fn duplicate_names_get_pid_suffix_and_hostile_env_is_sanitized() {
    let fx = Fixture::new("dup");
    fx.cgroup("a", &[10]);
    fx.cgroup("b", &[11]);
    fx.cgroup("c", &[12]);
    fx.process(10, "traefik", "a", &["ROUTESKEW_REPLICA=same"]);
    fx.process(11, "traefik", "b", &["ROUTESKEW_REPLICA=same"]);
    fx.process(12, "traefik", "c", &["ROUTESKEW_REPLICA=same\"}\n{evil"]);
    let scan = fx.discovery(|_| {}).scan();
    assert_eq!(names(&scan), vec!["same-10", "same-11", "sameevil"]);
}

#[test]
fn vanished_process_is_not_a_failure() {
    let fx = Fixture::new("vanish");
    fx.cgroup("x", &[42]);
    // comm says traefik, but the cgroup file is gone (the process exited mid-scan).
    let dir = fx.proc_root().join("42");
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("comm"), "traefik\n").expect("write");
    let scan = fx.discovery(|_| {}).scan();
    assert!(scan.targets.targets().is_empty());
    assert!(scan.failures.is_empty());
}
