//! What the verification checks are made of: the struct types it looks up in a binary's
//! type descriptors, and the comparisons of one field with the offset table.

use super::{
    rtype::{Layout, Wanted},
    SemanticError,
};

pub(super) const REQUEST: Wanted = Wanted {
    pkg_path: "net/http",
    name: "http.Request",
};
pub(super) const RESPONSE: Wanted = Wanted {
    pkg_path: "net/http",
    name: "http.response",
};
pub(super) const H2_STATE_BUNDLED: Wanted = Wanted {
    pkg_path: "net/http",
    name: "http.http2responseWriterState",
};
pub(super) const H2_STATE_XNET: Wanted = Wanted {
    pkg_path: "golang.org/x/net/http2",
    name: "http2.responseWriterState",
};

pub(super) const CONN: Wanted = Wanted {
    pkg_path: "net/http",
    name: "http.conn",
};
pub(super) const BUFIO_READER: Wanted = Wanted {
    pkg_path: "bufio",
    name: "bufio.Reader",
};

pub(super) fn mismatch(
    what: &str,
    expected: impl std::fmt::Display,
    found: impl std::fmt::Display,
) -> SemanticError {
    SemanticError::Verification {
        what: what.to_owned(),
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// The one layout found for `want` (several identical copies are one).
pub(super) fn single<'a>(want: &Wanted, found: &'a [Layout]) -> Result<&'a Layout, SemanticError> {
    let what = format!("type descriptor of {}.{}", want.pkg_path, want.name);
    let first = found
        .first()
        .ok_or_else(|| mismatch(&what, "one", "none"))?;
    if found.iter().any(|l| l.fields != first.fields) {
        return Err(mismatch(
            &what,
            "one layout",
            format!("{} different layouts", found.len()),
        ));
    }
    Ok(first)
}

pub(super) fn field_at(
    l: &Layout,
    ty: &Wanted,
    name: &str,
    kind: u8,
    offset: u32,
) -> Result<(), SemanticError> {
    let what = format!("{}.{}.{name}", ty.pkg_path, ty.name);
    let f = l
        .field(name)
        .ok_or_else(|| mismatch(&what, offset, "no such field"))?;
    if f.kind != kind {
        return Err(mismatch(
            &what,
            format!("kind {kind}"),
            format!("kind {}", f.kind),
        ));
    }
    if f.offset != u64::from(offset) {
        return Err(mismatch(&what, offset, f.offset));
    }
    Ok(())
}
