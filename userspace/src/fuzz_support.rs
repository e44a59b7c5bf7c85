//! Shared pieces of the property and fuzz tests (issue 16): every parser of untrusted
//! input runs at least [`CASES`] generated inputs in the ordinary `cargo test`, in the
//! debug build, where an arithmetic overflow traps like a panic.
//!
//! Pure random bytes rarely get past a parser's first check, so most targets mix them
//! with valid inputs built field by field and then damaged by [`mutated`].

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per target in the normal test run.
pub(crate) const CASES: u32 = 50_000;

/// [`CASES`] cases, or more with `ROUTESKEW_FUZZ_CASES` (a longer local run); never
/// fewer. Failures are not persisted: a failing input found here becomes a unit test.
pub(crate) fn config() -> Config {
    let cases = std::env::var("ROUTESKEW_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n >= CASES)
        .unwrap_or(CASES);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Where `x` (uniform over `u32`) falls in `0..len`; 0 when `len` is 0.
pub(crate) fn pick(x: u32, len: usize) -> usize {
    ((len as u64 * u64::from(x)) >> 32) as usize
}

/// One damage done to a valid input.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    /// Replace the byte at the index.
    Set(u32, u8),
    /// Insert a byte before the index.
    Insert(u32, u8),
    Delete(u32),
    /// Cut the input at the index.
    Truncate(u32),
    /// Repeat a short run starting at the index.
    Repeat(u32, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<u32>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<u32>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<u32>().prop_map(Edit::Delete),
        any::<u32>().prop_map(Edit::Truncate),
        (any::<u32>(), 1u8..16).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

/// Applies `edits` to `b` in order.
pub(crate) fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if b.is_empty() {
            if let Edit::Insert(_, v) = e {
                b.push(*v);
            }
            continue;
        }
        match e {
            Edit::Set(i, v) => {
                let i = pick(*i, b.len());
                b[i] = *v;
            }
            Edit::Insert(i, v) => b.insert(pick(*i, b.len() + 1), *v),
            Edit::Delete(i) => {
                b.remove(pick(*i, b.len()));
            }
            Edit::Truncate(i) => b.truncate(pick(*i, b.len())),
            Edit::Repeat(i, n) => {
                let at = pick(*i, b.len());
                let end = (at + usize::from(*n)).min(b.len());
                let run = b[at..end].to_vec();
                b.splice(at..at, run);
            }
        }
    }
    b
}

/// `base` with zero to `max_edits` edits.
pub(crate) fn mutated(
    base: impl Strategy<Value = Vec<u8>>,
    max_edits: usize,
) -> impl Strategy<Value = Vec<u8>> {
    (base, proptest::collection::vec(edit(), 0..=max_edits)).prop_map(|(b, e)| apply(b, &e))
}

/// Sorted, distinct cut points strictly inside `0..len`.
pub(crate) fn cuts(points: &[u32], len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = points
        .iter()
        .map(|i| pick(*i, len.max(1)))
        .filter(|&c| c > 0 && c < len)
        .collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// `b` cut at `cuts` (from [`cuts`]).
pub(crate) fn pieces<'a>(b: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for &c in cuts {
        out.push(&b[at..c]);
        at = c;
    }
    out.push(&b[at..]);
    out
}

/// Up to `max` cut points.
pub(crate) fn cut_points(max: usize) -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(any::<u32>(), 0..=max)
}

/// A few bytes from `alphabet`.
pub(crate) fn text_of(
    alphabet: &'static [u8],
    len: std::ops::Range<usize>,
) -> BoxedStrategy<Vec<u8>> {
    proptest::collection::vec(proptest::sample::select(alphabet), len).boxed()
}

/// Raw random bytes.
pub(crate) fn raw(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

/// Checks each checked-in corpus file under `dir` against what its builder makes now
/// (`ROUTESKEW_WRITE_CORPUS=1` rewrites them first).
pub(crate) fn check_corpus(dir: &std::path::Path, corpus: Vec<(&str, Vec<u8>)>) {
    let write = std::env::var_os("ROUTESKEW_WRITE_CORPUS").is_some();
    for (name, bytes) in corpus {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).expect("write corpus");
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk, bytes,
            "{name}: rebuild with ROUTESKEW_WRITE_CORPUS=1"
        );
    }
}

#[test]
fn edits_and_cuts_do_what_they_say() {
    // n percent of the way through a collection.
    let i = |n: u64| ((n << 32) / 100 + 1) as u32;
    assert_eq!(apply(b"abcdef".to_vec(), &[Edit::Truncate(i(50))]), b"abc");
    assert_eq!(apply(b"ab".to_vec(), &[Edit::Repeat(i(0), 2)]), b"abab");
    assert_eq!(apply(Vec::new(), &[Edit::Insert(i(0), b'x')]), b"x");
    let c = cuts(&[i(50), i(0), i(50), i(99)], 10);
    assert_eq!(c, [5, 9]);
    assert_eq!(pieces(b"0123456789", &c), [&b"01234"[..], b"5678", b"9"]);
}
