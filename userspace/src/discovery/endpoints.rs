//! Where a local replica serves: its own listening TCP sockets, read from `/proc`.
//!
//! A socket belongs to a process when one of its fds links to `socket:[inode]`; the
//! process's network namespace lists the socket with that inode in `net/tcp{,6}`. The
//! address a listener is bound to is not always one the agent can connect to: a wildcard
//! listener is reached through loopback when the replica shares the agent's network
//! namespace, and through the namespace's own interface address when it does not (a
//! container on a bridge); a loopback listener in another namespace is unreachable.

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::Endpoint;

/// Listening sockets per process considered; more would be a misidentified process.
const MAX_LISTENERS: usize = 64;

/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// One row of `/proc/<pid>/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    pub local: SocketAddr,
    pub listening: bool,
    pub inode: u64,
}

/// Parses the text of `/proc/<pid>/net/tcp` or `tcp6`; malformed rows are skipped.
pub fn parse_proc_net_tcp(text: &str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _sl = f.next()?;
            let local = parse_hex_addr(f.next()?)?;
            let _remote = f.next()?;
            let state = f.next()?;
            // tx:rx queue, tr:when, retrnsmt, uid, timeout, then the inode.
            let inode = f.nth(5)?.parse().ok()?;
            Some(Socket {
                local,
                listening: state == TCP_LISTEN,
                inode,
            })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6). The kernel prints each 32-bit
/// word of the address in host byte order.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::from_be);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?.to_be_bytes())),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_mut(4).enumerate() {
                let hex = ip.get(i * 8..i * 8 + 8)?;
                chunk.copy_from_slice(&word(hex)?.to_be_bytes());
            }
            let v6 = Ipv6Addr::from(octets);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// IPv4 addresses of the namespace's own interfaces from `/proc/<pid>/net/fib_trie`
/// (the `/32 host LOCAL` entries), loopback excluded, in order of appearance.
pub fn local_ipv4_addrs(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("|-- ") {
            last = rest.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// Where the agent connects to reach a listener, or `None` when it cannot.
/// `same_netns`: the replica shares the agent's network namespace. `ns_ipv4`: the
/// replica namespace's interface addresses.
pub fn reachable_addr(
    listen: SocketAddr,
    same_netns: bool,
    ns_ipv4: &[Ipv4Addr],
) -> Option<SocketAddr> {
    let ip = listen.ip();
    let port = listen.port();
    if ip.is_unspecified() {
        return if same_netns {
            Some(match ip {
                IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
                IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
            })
        } else {
            // Go's wildcard listeners are dual-stack: the IPv4 address serves both.
            ns_ipv4
                .first()
                .map(|v4| SocketAddr::new(IpAddr::V4(*v4), port))
        };
    }
    if ip.is_loopback() && !same_netns {
        return None;
    }
    Some(listen)
}

/// Inodes of the sockets among a process's open fds.
fn socket_inodes(proc_root: &Path, pid: u32) -> HashSet<u64> {
    let Ok(dir) = fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let link = fs::read_link(e.path()).ok()?;
            let s = link.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

fn netns_of(proc_root: &Path, who: &str) -> Option<std::path::PathBuf> {
    fs::read_link(proc_root.join(who).join("ns/net")).ok()
}

/// The listening TCP endpoints of process `pid`, as addresses the agent can reach,
/// sorted and deduplicated. Unreadable files give an empty list (the process exited, or
/// the agent lacks the privilege): probes then have nowhere to go, which is logged by
/// the prober.
pub fn listening_endpoints(proc_root: &Path, pid: u32) -> Vec<Endpoint> {
    let base = proc_root.join(pid.to_string());
    let mut listeners: Vec<Socket> = Vec::new();
    for file in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = fs::read_to_string(base.join(file)) {
            listeners.extend(
                parse_proc_net_tcp(&text)
                    .into_iter()
                    .filter(|s| s.listening),
            );
        }
    }
    if listeners.is_empty() {
        return Vec::new();
    }
    let inodes = socket_inodes(proc_root, pid);
    let same_netns = match (
        netns_of(proc_root, "self"),
        netns_of(proc_root, &pid.to_string()),
    ) {
        (Some(a), Some(b)) => a == b,
        // Without namespace links (a fixture tree, or no privilege) assume the common case.
        _ => true,
    };
    let ns_ipv4 = if same_netns {
        Vec::new()
    } else {
        fs::read_to_string(base.join("net/fib_trie"))
            .map(|t| local_ipv4_addrs(&t))
            .unwrap_or_default()
    };
    let mut out: Vec<Endpoint> = listeners
        .iter()
        .filter(|s| inodes.contains(&s.inode))
        .filter_map(|s| reachable_addr(s.local, same_netns, &ns_ipv4))
        .map(|addr| Endpoint {
            addr,
            port_name: None,
        })
        .collect();
    out.sort();
    out.dedup();
    // A dual-stack wildcard shows up once; a process listening on both 0.0.0.0:p and
    // [::]:p is reached once, over IPv4.
    let v4_ports: HashSet<u16> = out
        .iter()
        .filter(|e| e.addr.is_ipv4())
        .map(|e| e.addr.port())
        .collect();
    out.retain(|e| {
        e.addr.is_ipv4() || !(e.addr.ip().is_loopback() && v4_ports.contains(&e.addr.port()))
    });
    out.truncate(MAX_LISTENERS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51235 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 61000 1 0000000000000000 20 4 30 10 -1
   3: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 71000 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 71001 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000500000A:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 71002 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_ipv4_rows() {
        let s = parse_proc_net_tcp(TCP);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].local, "127.0.0.1:8080".parse().unwrap());
        assert!(s[0].listening);
        assert_eq!(s[0].inode, 51234);
        assert_eq!(s[1].local, "0.0.0.0:80".parse().unwrap());
        assert!(!s[2].listening);
    }

    #[test]
    fn parses_ipv6_rows_and_mapped_addresses() {
        let s = parse_proc_net_tcp(TCP6);
        assert_eq!(s[0].local, "[::]:443".parse().unwrap());
        assert_eq!(s[1].local, "[::1]:9000".parse().unwrap());
        // ::ffff:10.0.0.5 is an IPv4 listener seen through a v6 socket.
        assert_eq!(s[2].local, "10.0.0.5:8000".parse().unwrap());
        assert_eq!(s[2].inode, 71002);
    }

    #[test]
    fn reachability() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ns = ["10.1.2.3".parse().unwrap()];
        assert_eq!(
            reachable_addr(a("0.0.0.0:80"), true, &[]),
            Some(a("127.0.0.1:80"))
        );
        assert_eq!(
            reachable_addr(a("[::]:443"), true, &[]),
            Some(a("[::1]:443"))
        );
        assert_eq!(
            reachable_addr(a("0.0.0.0:80"), false, &ns),
            Some(a("10.1.2.3:80"))
        );
        assert_eq!(
            reachable_addr(a("[::]:443"), false, &ns),
            Some(a("10.1.2.3:443"))
        );
        assert_eq!(reachable_addr(a("0.0.0.0:80"), false, &[]), None);
        assert_eq!(reachable_addr(a("127.0.0.1:8080"), false, &ns), None);
        assert_eq!(
            reachable_addr(a("127.0.0.1:8080"), true, &[]),
            Some(a("127.0.0.1:8080"))
        );
        assert_eq!(
            reachable_addr(a("10.9.9.9:80"), false, &ns),
            Some(a("10.9.9.9:80"))
        );
    }

    #[test]
    fn fib_trie_local_addresses() {
        let trie = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.1.2.0/24 2 0 2
        |-- 10.1.2.0
           /24 link UNICAST
        |-- 10.1.2.3
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
        |-- 10.1.2.3
           /32 host LOCAL
        |-- 10.1.2.255
           /32 link BROADCAST
";
        assert_eq!(local_ipv4_addrs(trie), vec![Ipv4Addr::new(10, 1, 2, 3)]);
        assert!(local_ipv4_addrs("").is_empty());
    }

    #[test]
    fn endpoints_of_a_fixture_process() {
        let root = std::env::temp_dir().join(format!("routeskew-ep-{}", std::process::id()));
        let fd = root.join("42/fd");
        fs::create_dir_all(&fd).unwrap();
        fs::create_dir_all(root.join("42/net")).unwrap();
        fs::write(root.join("42/net/tcp"), TCP).unwrap();
        fs::write(root.join("42/net/tcp6"), TCP6).unwrap();
        // The process owns the 127.0.0.1:8080 listener, the [::]:443 one and an
        // established connection; the 0.0.0.0:80 listener is another process's.
        for (n, inode) in [(3, 51234), (4, 71000), (5, 61000)] {
            std::os::unix::fs::symlink(format!("socket:[{inode}]"), fd.join(n.to_string()))
                .unwrap();
        }
        std::os::unix::fs::symlink("/dev/null", fd.join("0")).unwrap();
        let eps = listening_endpoints(&root, 42);
        let addrs: Vec<String> = eps.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:8080", "[::1]:443"]);
        assert!(listening_endpoints(&root, 43).is_empty());
        fs::remove_dir_all(&root).unwrap();
    }
}
