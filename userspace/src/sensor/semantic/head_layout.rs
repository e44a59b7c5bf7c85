//! The path from an HTTP/1.x response writer to the bytes its request head was read
//! from, checked against the binary's type descriptors: `response.conn` points at
//! `net/http.conn`, whose `bufr` points at `bufio.Reader`, whose `buf` is a slice and `w`
//! an `int`. The kernel copies a head from there only for rare answers (status 300 or
//! more, not 304), so that a refused or unrouted WebSocket upgrade is recognised.

use routeskew_common::GoHttpOffsets;

use super::{
    field_check::{field_at, mismatch, BUFIO_READER, CONN, RESPONSE},
    rtype::{Layout, Wanted, KIND_INT, KIND_POINTER, KIND_SLICE},
    SemanticError,
};

/// Checks `response.conn`, `conn.bufr`, `bufio.Reader.buf` and `.w` in `o`; returns the
/// description of the passed check.
pub(super) fn verify(
    response: &Layout,
    conn: &Layout,
    reader: &Layout,
    o: &GoHttpOffsets,
) -> Result<String, SemanticError> {
    field_at(response, &RESPONSE, "conn", KIND_POINTER, o.h1_conn)?;
    points_at(response, &RESPONSE, "conn", conn, &CONN)?;
    field_at(conn, &CONN, "bufr", KIND_POINTER, o.conn_bufr)?;
    points_at(conn, &CONN, "bufr", reader, &BUFIO_READER)?;
    field_at(reader, &BUFIO_READER, "buf", KIND_SLICE, o.bufr_buf)?;
    field_at(reader, &BUFIO_READER, "w", KIND_INT, o.bufr_w)?;
    Ok(format!(
        "types: response.conn {} → conn.bufr {} → bufio.Reader.buf {} w {}",
        o.h1_conn, o.conn_bufr, o.bufr_buf, o.bufr_w
    ))
}

/// The pointer field `name` of `from` points at the type `to`.
fn points_at(
    from: &Layout,
    from_ty: &Wanted,
    name: &str,
    to: &Layout,
    to_ty: &Wanted,
) -> Result<(), SemanticError> {
    let elem = from.field(name).and_then(|f| f.elem);
    if elem == Some(to.address) {
        return Ok(());
    }
    Err(mismatch(
        &format!("{}.{}.{name} type", from_ty.pkg_path, from_ty.name),
        format!("*{}.{} ({:#x})", to_ty.pkg_path, to_ty.name, to.address),
        format!("{elem:#x?}"),
    ))
}
