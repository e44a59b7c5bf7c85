//! The router inventory against a hostile API: endless pages of routers, endless
//! small pages; each abandoned within its bounds.

use super::*;
use crate::event::PeerRole;
use tokio::io::AsyncWriteExt;

use crate::probe::test_support::read_request_head;

/// Serves every request a page of `per_page` enabled routers and announces another
/// page, forever.
async fn endless_api(per_page: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body: String = {
        let routers: Vec<String> = (0..per_page)
            .map(|i| {
                format!(
                    r#"{{"name":"r{i}-{{}}@file","provider":"file","status":"enabled","entryPoints":["web"]}}"#
                )
            })
            .collect();
        format!("[{}]", routers.join(","))
    };
    tokio::spawn(async move {
        let mut page = 0u64;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            page += 1;
            // Names differ per page, so that nothing deduplicates them.
            let body = body.replace("{}", &page.to_string());
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Next-Page: {}\r\nConnection: close\r\n\r\n",
                    body.len(),
                    page + 1
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_endless_router_list_is_abandoned_quickly() {
    let addr = endless_api(20_000).await;
    let caller = Caller {
        user_agent: "test".into(),
        role: PeerRole::Housekeeping,
        tags: None,
    };
    let t = Instant::now();
    let r = fetch_inventory(addr, None, &caller, Duration::from_secs(3)).await;
    let took = t.elapsed();
    assert!(
        matches!(r, Err(FetchError::TooManyRouters { max: MAX_ROUTERS })),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn a_listing_slower_than_its_budget_is_abandoned() {
    // Small pages, each answered at once, but endless: the budget ends the walk.
    let addr = endless_api(1).await;
    let caller = Caller {
        user_agent: "test".into(),
        role: PeerRole::Housekeeping,
        tags: None,
    };
    let timeout = Duration::from_millis(100);
    let t = Instant::now();
    let r = fetch_inventory(addr, None, &caller, timeout).await;
    assert!(matches!(r, Err(FetchError::OverBudget { .. })), "{r:?}");
    assert!(t.elapsed() < timeout * FETCH_TIMEOUTS + Duration::from_secs(1));
}
