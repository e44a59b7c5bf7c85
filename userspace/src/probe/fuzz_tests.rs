//! Property tests of the Traefik API JSON readers (issue 16): any body is a page or an
//! error, and generated router lists read back.

use proptest::prelude::*;

use super::inventory::{parse_entry_points, parse_router_page};
use crate::fuzz_support::{config, mutated, raw, text_of};

/// A router list as Traefik's API serves it, with the names that must be counted.
fn routers() -> impl Strategy<Value = (String, Vec<String>)> {
    proptest::collection::vec(
        (text_of(b"abc-019@", 1..10), 0..3u8, any::<bool>(), any::<bool>()),
        0..5,
    )
    .prop_map(|rs| {
        let mut counted = Vec::new();
        let items: Vec<String> = rs
            .iter()
            .map(|(name, provider, enabled, tls)| {
                let name = format!("r{}", String::from_utf8_lossy(name));
                let provider = ["file", "internal", "kubernetescrd"][usize::from(*provider)];
                if *enabled && provider != "internal" && !name.ends_with("@internal") {
                    counted.push(name.clone());
                }
                format!(
                    r#"{{"name":"{name}","provider":"{provider}","status":"{}","entryPoints":["web"]{}}}"#,
                    if *enabled { "enabled" } else { "disabled" },
                    if *tls { r#","tls":{}"# } else { "" }
                )
            })
            .collect();
        (format!("[{}]", items.join(",")), counted)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_traefik_api_router_page((body, counted) in routers()) {
        let page = parse_router_page(body.as_bytes()).expect("a generated list parses");
        for name in &counted {
            prop_assert!(page.enabled.contains(name));
        }
        prop_assert_eq!(page.enabled.len(), counted.iter().collect::<std::collections::BTreeSet<_>>().len());
    }

    #[test]
    fn fuzz_traefik_api_any_body(body in prop_oneof![
        raw(64),
        mutated(routers().prop_map(|(b, _)| b.into_bytes()), 4),
        mutated(Just(br#"[{"name":"web","address":":8000"},{"name":"u","address":"[::]:53/udp"}]"#.to_vec()), 4),
    ]) {
        if let Ok(page) = parse_router_page(&body) {
            prop_assert!(page.tls_entry_points.is_subset(&page.entry_points));
        }
        if let Ok(eps) = parse_entry_points(&body) {
            prop_assert!(eps.values().all(|n| !n.is_empty() || body.windows(9).any(|w| w == br#""name":"""#)));
        }
    }
}
