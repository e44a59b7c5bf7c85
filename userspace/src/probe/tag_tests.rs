//! The prober's connections and the semantic sensor's tags: a local address that the
//! agent holds in the other role is not reused for a tagged connection (Linux shares a
//! local port among connections to different destinations).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

use super::client::{get, Caller, Request};
use super::test_support::read_request_head;
use crate::event::{PeerRole, PeerTags, Tagging};

/// Answers every request `200 OK` with an empty body.
async fn ok_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request_head(&mut s).await {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                }
            });
        }
    });
    addr
}

/// Says `Conflict` to the first `conflicts` tags, records every call.
#[derive(Default)]
struct Fake {
    conflicts: usize,
    calls: Mutex<Vec<(&'static str, SocketAddr)>>,
}

impl PeerTags for Fake {
    fn tag(&self, peer: SocketAddr, _role: PeerRole) -> Tagging {
        let mut calls = self.calls.lock().unwrap();
        let n = calls.iter().filter(|(op, _)| *op == "tag").count();
        calls.push(("tag", peer));
        if n < self.conflicts {
            Tagging::Conflict
        } else {
            Tagging::Tagged
        }
    }

    fn untag(&self, peer: SocketAddr) {
        self.calls.lock().unwrap().push(("untag", peer));
    }
}

async fn probe_with(tags: Arc<Fake>) -> u16 {
    let addr = ok_server().await;
    let caller = Caller {
        user_agent: "routeskew-test".into(),
        role: PeerRole::Probe,
        tags: Some(tags),
    };
    let r = Request {
        addr,
        tls: None,
        host: "a.test",
        path: "/",
        caller: &caller,
    };
    get(&r, 1024).await.expect("the probe is answered").status
}

#[tokio::test]
async fn a_local_address_held_in_the_other_role_is_given_up_for_another() {
    let tags = Arc::new(Fake {
        conflicts: 2,
        ..Fake::default()
    });
    assert_eq!(probe_with(Arc::clone(&tags)).await, 200);
    let calls = tags.calls.lock().unwrap().clone();
    let tagged: Vec<SocketAddr> = calls
        .iter()
        .filter(|(op, _)| *op == "tag")
        .map(|&(_, a)| a)
        .collect();
    assert_eq!(tagged.len(), 3, "{calls:?}");
    // Refused connections stay open meanwhile: every attempt has its own port.
    let mut ports: Vec<u16> = tagged.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "{calls:?}");
    // Only the connection that was tagged is untagged, once.
    assert_eq!(
        calls
            .iter()
            .filter(|(op, _)| *op == "untag")
            .collect::<Vec<_>>(),
        vec![&("untag", tagged[2])]
    );
}

#[tokio::test]
async fn no_free_address_leaves_the_probe_untagged_but_answered() {
    let tags = Arc::new(Fake {
        conflicts: usize::MAX,
        ..Fake::default()
    });
    assert_eq!(probe_with(Arc::clone(&tags)).await, 200);
    let calls = tags.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "four attempts, nothing untagged: {calls:?}");
    assert!(calls.iter().all(|(op, _)| *op == "tag"));
}
