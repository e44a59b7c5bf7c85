use super::*;

#[test]
fn host_normalisation() {
    let h = |s: &[u8]| normalize_host(s);
    assert_eq!(
        h(b"App.Example.TEST"),
        Host::Name("app.example.test".into())
    );
    assert_eq!(
        h(b"app.example.test:8443"),
        Host::Name("app.example.test".into())
    );
    assert_eq!(
        h(b"app.example.test.:80"),
        Host::Name("app.example.test".into())
    );
    assert_eq!(h(b"[::1]:8080"), Host::Name("[::1]".into()));
    assert_eq!(h(b"10.0.0.1"), Host::Name("10.0.0.1".into()));
    assert_eq!(h(b"  "), Host::Missing);
    for bad in [
        &b"a:b"[..],
        b"a.test:",
        b"a.test:123456",
        b"a..test",
        b".",
        b"[zz]",
        b"[::1",
        b"a/b",
        b"a test",
        "caf\u{e9}.test".as_bytes(),
        "xn--caf-dma.test\u{202e}".as_bytes(),
        b"a\x01b",
    ] {
        assert_eq!(h(bad), Host::Invalid, "{bad:?}");
    }
    let long = vec![b'a'; MAX_HOST_LEN + 1];
    assert_eq!(h(&long), Host::Invalid);
    let ok = vec![b'a'; MAX_HOST_LEN];
    assert!(matches!(h(&ok), Host::Name(_)));
}

/// The normalisation as first written (allocating, several passes): the one-pass
/// version must agree with it on everything.
fn reference_normalize_host(raw: &[u8]) -> Option<Option<String>> {
    let raw = raw.trim_ascii();
    if raw.is_empty() {
        return None;
    }
    if raw.len() > MAX_HOST_LEN + 8 {
        return Some(None);
    }
    let host = if raw[0] == b'[' {
        let Some(close) = raw.iter().position(|&b| b == b']') else {
            return Some(None);
        };
        let (lit, rest) = raw.split_at(close + 1);
        if !valid_port_suffix(rest) || lit.len() < 3 {
            return Some(None);
        }
        if !lit[1..lit.len() - 1]
            .iter()
            .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return Some(None);
        }
        lit
    } else {
        let (name, rest) = match raw.iter().position(|&b| b == b':') {
            Some(i) => raw.split_at(i),
            None => (raw, &[][..]),
        };
        if !valid_port_suffix(rest) {
            return Some(None);
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty()
            || name.len() > MAX_HOST_LEN
            || name.starts_with(b".")
            || name.windows(2).any(|w| w == b"..")
            || !name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Some(None);
        }
        name
    };
    Some(std::str::from_utf8(host).ok().map(str::to_ascii_lowercase))
}

#[test]
fn host_normalisation_matches_reference() {
    let alphabet: &[u8] = b"aZ09.-_:[]f: \t\x01\xc3\xa9/";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut inputs: Vec<Vec<u8>> = vec![
        b"a..".to_vec(),
        b"..".to_vec(),
        b"A.B.".to_vec(),
        b"[::1]:80".to_vec(),
        vec![b'A'; 70],
        vec![b'a'; MAX_HOST_LEN + 1],
    ];
    for _ in 0..20_000 {
        let len = (next() % 24) as usize;
        inputs.push(
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect(),
        );
    }
    for raw in inputs {
        let want = reference_normalize_host(&raw);
        let got = match normalize_host(&raw) {
            Host::Missing => None,
            Host::Invalid => Some(None),
            Host::Name(n) => Some(Some(n.as_str().to_string())),
        };
        assert_eq!(got, want, "{raw:?}");
    }
}

#[test]
fn known_hosts_normalise_deduplicate_and_bound() {
    let k = KnownHosts::new(["App.Test.", "app.test:8080", "*.wild.test", "b.test", ""]);
    assert_eq!(k.hosts(), ["app.test", "b.test"]);
    assert_eq!(k.labels(), ["app.test", "b.test", OTHER_HOST]);
    assert_eq!(k.len(), 2);
    // The wildcard and the empty entry; the duplicate is not a drop.
    assert_eq!(k.dropped(), 2);
    assert!(k.contains(&"b.test".to_string()));
    assert!(!k.contains(&"B.test".to_string()));
    assert_eq!(k.label_of(&normalize_host(b"B.TEST:443")), "b.test");
    assert_eq!(k.label_of(&normalize_host(b"evil.test")), OTHER_HOST);
    assert_eq!(k.label_of(&Host::Invalid), OTHER_HOST);
    assert_eq!(k.label_of(&Host::Missing), OTHER_HOST);
    assert_eq!(k.index_of(&Host::Missing), k.other());
    assert_eq!(k, vec!["app.test", "b.test"]);
    assert_eq!(KnownHosts::default().labels(), [OTHER_HOST]);

    let many: Vec<String> = (0..MAX_KNOWN_HOSTS + 5)
        .map(|i| format!("h{i}.test"))
        .collect();
    let k = KnownHosts::new(&many);
    assert_eq!(k.len(), MAX_KNOWN_HOSTS);
    assert_eq!(k.dropped(), 5);
    assert_eq!(k.label_of(&normalize_host(b"h0.test")), "h0.test");
    assert_eq!(
        k.label_of(&normalize_host(
            format!("h{MAX_KNOWN_HOSTS}.test").as_bytes()
        )),
        OTHER_HOST
    );
}

/// The semantic sensor's kernel hash of a raw Host (`routeskew_common::raw_host_hash`)
/// agrees with the agent's normalisation: a Host that normalises to a name hashes to that
/// name's hash; one the agent calls invalid never hashes to a known host's.
#[test]
fn kernel_host_hash_agrees_with_normalisation() {
    use routeskew_common::{host_hash, raw_host_hash, SEM_HOST_CAP};
    fn kernel(raw: &[u8]) -> u64 {
        let mut buf = [0u8; SEM_HOST_CAP];
        buf[..raw.len()].copy_from_slice(raw);
        raw_host_hash(&buf, raw.len())
    }
    let known = KnownHosts::new(["app.test", "a.b", "10.0.0.1", "[::1]", "[2001:db8::7]"]);
    let known_hashes: Vec<u64> = known
        .hosts()
        .iter()
        .map(|h| host_hash(h.as_bytes()))
        .collect();
    let check = |raw: &[u8]| match normalize_host(raw) {
        Host::Name(n) => assert_eq!(kernel(raw), host_hash(n.as_bytes()), "{raw:?}"),
        _ => assert!(
            !known_hashes.contains(&kernel(raw)),
            "invalid {raw:?} hashes like a known host"
        ),
    };
    for raw in [
        &b"app.test"[..],
        b"APP.Test",
        b"app.test.",
        b"app.test:8080",
        b"app.test.:443",
        b"app.test:",
        b"app.test:123456",
        b"app.test:80:80",
        b"[::1]",
        b"[::1]:8443",
        b"[2001:DB8::7]:1",
        b"[::1",
        b"10.0.0.1:65535",
        b":80",
        b".",
        b"a.b",
    ] {
        check(raw);
    }
    // Random Hosts over the characters that matter (xorshift: reproducible).
    let alphabet = b"aAbB.:[]0189-_";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 14) as usize;
        let raw: Vec<u8> = (0..len)
            .map(|i| alphabet[((x >> (4 * (i % 16))) as usize + i) % alphabet.len()])
            .collect();
        check(&raw);
    }
}
