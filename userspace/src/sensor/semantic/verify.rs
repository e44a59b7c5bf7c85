//! Attach-time verification of the offset table against the binary: its machine code
//! (what `WriteHeader` actually reads) and its runtime type descriptors (the compiler's
//! own field offsets). Every offset the kernel reads must be confirmed by at least one
//! witness, and no witness may disagree; otherwise the binary gets no semantic plan.
//!
//! Machine code (Go 1.22–1.26 compile these the same way):
//! - `(*response).WriteHeader` tests `w.wroteHeader` first (`cmp byte [w+40], 0`), sets it
//!   (`mov byte [w+40], 1`), and loads `w.req` to read `req.ProtoMajor`
//!   (`mov rdx, [w+8]; mov r9, [rdx+40]`);
//! - the h2 `writeHeader` tests and sets `rws.wroteHeader` (`[rws+80]`).
//!
//! Type descriptors ([`super::rtype`]): `net/http.Request` (Host, RemoteAddr,
//! ProtoMajor), `net/http.response` (req, wroteHeader), the h2 state (req,
//! wroteHeader), and that each `req` field points at that very `Request` type; the path
//! to the HTTP/1.x request head ([`super::head_layout`]).

use routeskew_common::GoHttpOffsets;

use crate::sensor::gobin::GoBinary;

use super::{
    code::{self, Shape},
    field_check::{
        field_at, mismatch, single, BUFIO_READER, CONN, H2_STATE_BUNDLED, H2_STATE_XNET, REQUEST,
        RESPONSE,
    },
    funcs::{H1_WRITE_HEADER, H2_BUNDLED, H2_XNET},
    head_layout,
    offsets::H2Server,
    rtype::{self, KIND_BOOL, KIND_INT, KIND_POINTER, KIND_STRING},
    SemanticError,
};

/// `Request.ProtoMajor`: what `WriteHeader` reads through `w.req` (same in 1.22–1.26).
const REQ_PROTO_MAJOR: u64 = 40;

/// Checks `offsets` against `bin`; returns the names of the checks that passed.
pub fn verify(
    bin: &GoBinary,
    offsets: &GoHttpOffsets,
    h2: H2Server,
) -> Result<Vec<String>, SemanticError> {
    let mut passed = Vec::new();
    machine_code(bin, offsets, h2, &mut passed)?;
    type_descriptors(bin, offsets, h2, &mut passed)?;
    Ok(passed)
}

fn function_code<'a>(bin: &'a GoBinary, name: &str) -> Result<(u64, &'a [u8]), SemanticError> {
    let f = bin
        .function(name)
        .map_err(|source| SemanticError::Function {
            name: name.to_owned(),
            source,
        })?;
    let code = usize::try_from(f.size)
        .ok()
        .and_then(|len| bin.read(f.address, len))
        .ok_or_else(|| SemanticError::FunctionMissing {
            name: name.to_owned(),
        })?;
    Ok((f.address, code))
}

/// The first bool test through the receiver must be at `wrote_header`, and the function
/// must also set that bool.
fn wrote_header_test(
    name: &str,
    accesses: &[code::Access],
    wrote_header: u32,
) -> Result<(), SemanticError> {
    let what = format!("wroteHeader test in {name}");
    let first = accesses
        .iter()
        .find(|a| a.shape == Shape::TestByteZero)
        .ok_or_else(|| {
            mismatch(
                &what,
                format!("cmp byte [recv+{wrote_header}], 0"),
                "no bool test of the receiver",
            )
        })?;
    if first.disp != u64::from(wrote_header) {
        return Err(mismatch(
            &what,
            wrote_header,
            format!("{} at {:#x}", first.disp, first.ip),
        ));
    }
    if !accesses
        .iter()
        .any(|a| a.shape == Shape::SetByteOne && a.disp == first.disp)
    {
        return Err(mismatch(
            &format!("wroteHeader set in {name}"),
            format!("mov byte [recv+{wrote_header}], 1"),
            "no such store",
        ));
    }
    Ok(())
}

fn machine_code(
    bin: &GoBinary,
    o: &GoHttpOffsets,
    h2: H2Server,
    passed: &mut Vec<String>,
) -> Result<(), SemanticError> {
    let (ip, code) = function_code(bin, H1_WRITE_HEADER)?;
    let accesses = code::receiver_accesses(H1_WRITE_HEADER, code, ip, REQ_PROTO_MAJOR)?;
    wrote_header_test(H1_WRITE_HEADER, &accesses, o.h1_wrote_header)?;
    passed.push(format!(
        "code: {H1_WRITE_HEADER} tests and sets [w+{}]",
        o.h1_wrote_header
    ));
    // Every receiver load whose result is read at ProtoMajor is the request pointer.
    let req_loads: Vec<u64> = accesses
        .iter()
        .filter(|a| a.shape == Shape::LoadPointer { deref: true })
        .map(|a| a.disp)
        .collect();
    let what = format!("response.req load in {H1_WRITE_HEADER}");
    match req_loads.first() {
        None => {
            return Err(mismatch(
                &what,
                format!("mov r, [w+{}]; [r+{REQ_PROTO_MAJOR}]", o.h1_req),
                "no such load",
            ))
        }
        Some(_) if req_loads.iter().any(|&d| d != u64::from(o.h1_req)) => {
            return Err(mismatch(&what, o.h1_req, format!("{req_loads:?}")));
        }
        Some(_) => passed.push(format!(
            "code: {H1_WRITE_HEADER} loads req from [w+{}]",
            o.h1_req
        )),
    }
    let h2_name = match h2 {
        H2Server::Bundled => H2_BUNDLED,
        H2Server::XNet => H2_XNET,
    };
    let (ip, code) = function_code(bin, h2_name)?;
    let accesses = code::receiver_accesses(h2_name, code, ip, REQ_PROTO_MAJOR)?;
    wrote_header_test(h2_name, &accesses, o.h2_wrote_header)?;
    passed.push(format!(
        "code: {h2_name} tests and sets [rws+{}]",
        o.h2_wrote_header
    ));
    Ok(())
}

fn type_descriptors(
    bin: &GoBinary,
    o: &GoHttpOffsets,
    h2: H2Server,
    passed: &mut Vec<String>,
) -> Result<(), SemanticError> {
    let state = match h2 {
        H2Server::Bundled => H2_STATE_BUNDLED,
        H2Server::XNet => H2_STATE_XNET,
    };
    let found = rtype::find_structs(bin, &[REQUEST, RESPONSE, state, CONN, BUFIO_READER])?;
    let head = head_layout::verify(
        single(&RESPONSE, &found[1])?,
        single(&CONN, &found[3])?,
        single(&BUFIO_READER, &found[4])?,
        o,
    )?;
    let request = single(&REQUEST, &found[0])?;
    field_at(request, &REQUEST, "Host", KIND_STRING, o.req_host)?;
    field_at(
        request,
        &REQUEST,
        "RemoteAddr",
        KIND_STRING,
        o.req_remote_addr,
    )?;
    field_at(
        request,
        &REQUEST,
        "ProtoMajor",
        KIND_INT,
        REQ_PROTO_MAJOR as u32,
    )?;
    for (ty, layout, req, wrote) in [
        (
            RESPONSE,
            single(&RESPONSE, &found[1])?,
            o.h1_req,
            o.h1_wrote_header,
        ),
        (
            state,
            single(&state, &found[2])?,
            o.h2_req,
            o.h2_wrote_header,
        ),
    ] {
        field_at(layout, &ty, "req", KIND_POINTER, req)?;
        field_at(layout, &ty, "wroteHeader", KIND_BOOL, wrote)?;
        let elem = layout.field("req").and_then(|f| f.elem);
        if elem != Some(request.address) {
            return Err(mismatch(
                &format!("{}.{}.req type", ty.pkg_path, ty.name),
                format!("*net/http.Request ({:#x})", request.address),
                format!("{elem:#x?}"),
            ));
        }
    }
    passed.push(format!(
        "types: Request.Host {} RemoteAddr {}, response.req {} wroteHeader {}, {}.req {} wroteHeader {}",
        o.req_host, o.req_remote_addr, o.h1_req, o.h1_wrote_header, state.name, o.h2_req, o.h2_wrote_header
    ));
    passed.push(head);
    Ok(())
}
