//! Property tests of discovery's parsers of untrusted text (issue 16): Traefik rules (any
//! text, generated rules whose hosts must come back), `/proc/<pid>/net/tcp{,6}` and
//! `fib_trie`, container ids from pod status, and the hosts file.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::endpoints::{local_ipv4_addrs, parse_proc_net_tcp};
use super::pod_cgroup::{ContainerId, QosClass};
use super::traefik_rule::hosts;
use crate::config::parse_hosts_file;
use crate::fuzz_support::{config, mutated, raw, text_of};

const RULE_CHARS: &[u8] = b"Host()`\"',&|! \\aZ.*HostRegexpSNIPath";

/// A rule of `Host` matchers combined with `&&`, `||`, `!` and parentheses, with the
/// hosts it names positively (not under `!`).
fn rule() -> impl Strategy<Value = (String, Vec<String>)> {
    let leaf = (text_of(b"abcXYZ019-", 1..8), 0..4u8).prop_map(|(h, q)| {
        let h = format!("{}.test", String::from_utf8_lossy(&h));
        let quoted = match q {
            0 => format!("`{h}`"),
            1 => format!("\"{h}\""),
            // Traefik quotes with backticks or double quotes only; spaces are trimmed.
            2 => format!("` {h} `"),
            _ => format!("`{h}`, `x-{h}`"),
        };
        let named = if q == 3 {
            vec![
                h.to_ascii_lowercase(),
                format!("x-{}", h.to_ascii_lowercase()),
            ]
        } else {
            vec![h.to_ascii_lowercase()]
        };
        (format!("Host({quoted})"), named)
    });
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone(), any::<bool>()).prop_map(|((a, ha), (b, hb), and)| {
                let op = if and { "&&" } else { "||" };
                (format!("{a} {op} {b}"), [ha, hb].concat())
            }),
            inner.clone().prop_map(|(a, h)| (format!("({a})"), h)),
            inner.prop_map(|(a, _)| (format!("!({a})"), Vec::new())),
        ]
    })
}

fn proc_net_tcp_row() -> impl Strategy<Value = String> {
    (any::<u32>(), any::<u16>(), any::<bool>(), any::<u64>(), any::<[u32; 4]>(), any::<bool>())
        .prop_map(|(ip, port, listen, inode, v6, is_v6)| {
            let local = if is_v6 {
                format!("{:08X}{:08X}{:08X}{:08X}:{port:04X}", v6[0], v6[1], v6[2], v6[3])
            } else {
                format!("{ip:08X}:{port:04X}")
            };
            let state = if listen { "0A" } else { "01" };
            format!("   0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0")
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_traefik_rule_any_text(text in prop_oneof![
        text_of(RULE_CHARS, 0..60).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        mutated(rule().prop_map(|(r, _)| r.into_bytes()), 4)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        match hosts(&text) {
            Ok(h) => {
                for name in &h.hosts {
                    prop_assert!(!name.is_empty());
                    // ASCII only, like request hosts (a non-ASCII host is never valid).
                    prop_assert_eq!(name, &name.to_ascii_lowercase());
                }
            }
            Err(e) => prop_assert!(e.at <= text.len(), "{} of {}", e.at, text.len()),
        }
    }

    #[test]
    fn fuzz_traefik_rule_generated((text, named) in rule()) {
        let h = hosts(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        for n in &named {
            prop_assert!(h.hosts.contains(n), "{} not in {:?} of {}", n, h.hosts, text);
        }
    }

    #[test]
    fn fuzz_proc_net_tcp(
        rows in proptest::collection::vec(proc_net_tcp_row(), 0..4),
        noise in raw(80),
        damage in mutated(proc_net_tcp_row().prop_map(String::into_bytes), 4),
    ) {
        let text = format!("  sl  local_address rem_address   st ...\n{}\n", rows.join("\n"));
        let sockets = parse_proc_net_tcp(&text);
        prop_assert_eq!(sockets.len(), rows.len());
        for (s, row) in sockets.iter().zip(&rows) {
            prop_assert_eq!(s.listening, row.contains(" 0A "));
            prop_assert!(matches!(s.local, SocketAddr::V4(_) | SocketAddr::V6(_)));
        }
        let junk = format!("h\n{}\n{}", String::from_utf8_lossy(&noise), String::from_utf8_lossy(&damage));
        prop_assert!(parse_proc_net_tcp(&junk).len() <= 2);
    }

    #[test]
    fn fuzz_fib_trie_and_hosts_file(text in prop_oneof![
        text_of(b"|-- 10.0.0.1/32 host LOCAL\n #abc", 0..120),
        raw(120),
    ]) {
        let text = String::from_utf8_lossy(&text);
        for ip in local_ipv4_addrs(&text) {
            prop_assert!(!IpAddr::V4(ip).is_loopback());
        }
        for host in parse_hosts_file(&text) {
            prop_assert!(!host.is_empty() && !host.contains('#') && !host.contains('\n'));
            prop_assert_eq!(host.trim(), host.as_str());
        }
    }

    #[test]
    fn fuzz_container_ids(s in prop_oneof![
        text_of(b"containerd:/aF09-.", 0..40),
        (text_of(b"abc", 1..8), text_of(b"0123456789abcdefABCDEF", 12..70))
            .prop_map(|(r, id)| [r, b"://".to_vec(), id].concat()),
    ]) {
        let s = String::from_utf8_lossy(&s).into_owned();
        let _ = QosClass::parse(&s);
        if let Ok(id) = ContainerId::parse(&s) {
            // Refused otherwise: the id becomes a cgroup path component.
            prop_assert!(id.id.bytes().all(|b| b.is_ascii_alphanumeric()));
            prop_assert!((12..=128).contains(&id.id.len()));
            prop_assert_eq!(id.id.clone(), id.id.to_ascii_lowercase());
        }
    }
}
