//! The probe plan of one Go binary: the three semantic probes at the emulated `push rbp`
//! after Go's stack check, the HTTP/2 server the binary answers with, the `net/http`
//! offsets for its Go version (verified against the binary), and the code ranges of the
//! API router whose `NotFound` calls are not router misses.
//!
//! ## Which HTTP/2 server
//!
//! A binary can link both `net/http`'s bundled HTTP/2 server and `golang.org/x/net/http2`'s
//! (Traefik 3.0 and 3.3 do). `net/http` configures its bundled server only when the
//! `http.Server`'s `TLSNextProto` is still nil; `x/net`'s `http2.ConfigureServer` fills
//! it with x/net's server. So the rule: **x/net when `golang.org/x/net/http2.ConfigureServer`
//! is called directly from code outside `golang.org/x/net/`** (the application wires its
//! server to x/net: Traefik ≤ 3.3's `pkg/server` does, for TLS and, through x/net's `h2c`,
//! for cleartext h2), else the bundled server (Traefik ≥ 3.5 sets `http.Server.Protocols`
//! and no longer links x/net's server at all); x/net also when the bundled server is not
//! linked at all, as it is then the only HTTP/2 server there is. The rule is on the binary's own calls, not
//! on names of Traefik versions; its evidence is kept in [`SemanticPlan::h2_evidence`].
//!
//! Addresses are link-time virtual addresses: for the non-PIE Go binaries Traefik ships,
//! they are the addresses in the running process too.

use std::path::Path;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, Register};
use routeskew_common::{AddrRange, GoHttpBinary, SemProbe, SEM_API_RANGES};

use crate::sensor::gobin::{buildinfo, GoBinary};

use super::{callers, offsets, offsets::H2Server, verify, SemanticError};

use super::funcs::{
    CONN_CLOSE, H1_WRITE_HEADER, H2_BUNDLED, H2_XNET, NOT_FOUND, UPGRADE, XNET_CONFIGURE_SERVER,
    XNET_MODULE,
};

/// Callers of `net/http.NotFound` (as the return address at `[rbp+8]` when `NotFound`
/// runs) that are Traefik's API router, not the entrypoint's no-router handler: the
/// API's and dashboard's routes are a gorilla/mux router, whose default not-found handler
/// is `http.NotFoundHandler()`.
pub const API_CALLERS: &[&str] = &["github.com/gorilla/mux.(*Router).ServeHTTP"];

/// Traefik's API and dashboard code. Its only direct call of `net/http.NotFound` in the
/// 3.0–3.7 releases is `http.StripPrefix`'s closure inlined into the dashboard's route
/// handler (`pkg/api/dashboard.Append.funcN.StripPrefix.1`), which that handler calls
/// through a register: `[rbp+8]` then lies in the handler, `dashboard.Append.funcN`.
const API_PACKAGES: &str = "github.com/traefik/traefik/v3/pkg/api/";
const INLINED_STRIP_PREFIX: &str = ".StripPrefix.";

/// One probe to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemanticProbe {
    pub probe: SemProbe,
    pub function: String,
    /// Virtual address of the probed `push rbp`.
    pub address: u64,
    /// Its file offset (what a uprobe is attached at).
    pub file_offset: u64,
}

/// Everything the agent needs to attach the semantic sensor to one binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemanticPlan {
    pub go_version: String,
    pub h2: H2Server,
    /// Why [`Self::h2`] was chosen (for the attach log).
    pub h2_evidence: String,
    pub probes: Vec<SemanticProbe>,
    /// What `SEM_BINARIES[slot]` gets: verified offsets, `valid = 1`, text, API callers.
    pub binary: GoHttpBinary,
    /// Names of the checks that verified the offsets.
    pub verified: Vec<String>,
}

/// One entry of the offset table replaced before verification (`--semantic-offset`, a
/// test of the fallback: a wrong offset must fail verification, never be used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetOverride {
    pub field: OffsetField,
    pub value: u32,
}

/// The entries of [`routeskew_common::GoHttpOffsets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OffsetField {
    H1Req,
    H1WroteHeader,
    H2Req,
    H2WroteHeader,
    ReqHost,
    ReqRemoteAddr,
    H1Conn,
    ConnBufr,
    BufrBuf,
    BufrW,
}

impl OffsetOverride {
    /// Replaces the entry in `o`.
    pub fn apply(self, o: &mut routeskew_common::GoHttpOffsets) {
        let slot = match self.field {
            OffsetField::H1Req => &mut o.h1_req,
            OffsetField::H1WroteHeader => &mut o.h1_wrote_header,
            OffsetField::H2Req => &mut o.h2_req,
            OffsetField::H2WroteHeader => &mut o.h2_wrote_header,
            OffsetField::ReqHost => &mut o.req_host,
            OffsetField::ReqRemoteAddr => &mut o.req_remote_addr,
            OffsetField::H1Conn => &mut o.h1_conn,
            OffsetField::ConnBufr => &mut o.conn_bufr,
            OffsetField::BufrBuf => &mut o.bufr_buf,
            OffsetField::BufrW => &mut o.bufr_w,
        };
        *slot = self.value;
    }
}

/// [`plan`] for the binary at `path`, with `tweak` applied to its offset table.
pub fn plan_path_with(
    path: &Path,
    tweak: Option<OffsetOverride>,
) -> Result<SemanticPlan, SemanticError> {
    let bin = GoBinary::open(path).map_err(|source| SemanticError::Binary {
        path: path.display().to_string(),
        source,
    })?;
    let plan = plan_with(&bin, tweak);
    // Whatever was read is void when the file shrank meanwhile (its errors too).
    bin.intact().map_err(|source| SemanticError::Binary {
        path: path.display().to_string(),
        source,
    })?;
    plan
}

/// [`plan`] for the binary at `path`.
pub fn plan_path(path: &Path) -> Result<SemanticPlan, SemanticError> {
    plan_path_with(path, None)
}

/// Resolves and verifies the semantic probe plan of `bin`. Nothing is guessed: any
/// function, version or offset that cannot be established is an error.
pub fn plan(bin: &GoBinary) -> Result<SemanticPlan, SemanticError> {
    plan_with(bin, None)
}

fn plan_with(bin: &GoBinary, tweak: Option<OffsetOverride>) -> Result<SemanticPlan, SemanticError> {
    let go_version = bin.go_version.clone().ok_or(SemanticError::NoGoVersion)?;
    let (h2, h2_evidence) = h2_server(bin)?;
    let xnet = bin
        .module_info
        .as_deref()
        .and_then(|m| buildinfo::dependency_version(m, XNET_MODULE));
    let mut offsets = offsets::offsets_for(&go_version, h2, xnet)?;
    if let Some(t) = tweak {
        tracing::warn!(field = ?t.field, value = t.value, "semantic offset table overridden by configuration");
        t.apply(&mut offsets);
    }
    let h2_function = match h2 {
        H2Server::Bundled => H2_BUNDLED,
        H2Server::XNet => H2_XNET,
    };
    let probes = [
        (SemProbe::H1WriteHeader, H1_WRITE_HEADER),
        (SemProbe::H2WriteHeader, h2_function),
        (SemProbe::NotFound, NOT_FOUND),
        (SemProbe::Upgrade, UPGRADE),
        (SemProbe::ConnClose, CONN_CLOSE),
    ]
    .into_iter()
    .map(|(probe, name)| probe_at(bin, probe, name))
    .collect::<Result<Vec<_>, _>>()?;
    let verified = verify::verify(bin, &offsets, h2)?;
    let (text_start, text) = bin.text().map_err(|source| SemanticError::Function {
        name: "the text".into(),
        source,
    })?;
    let mut api_callers = [AddrRange::default(); SEM_API_RANGES];
    let ranges = api_caller_ranges(bin)?;
    if ranges.len() > SEM_API_RANGES {
        return Err(SemanticError::TooManyApiCallers {
            count: ranges.len(),
            max: SEM_API_RANGES,
        });
    }
    api_callers[..ranges.len()].copy_from_slice(&ranges);
    tracing::debug!(
        go_version = %go_version,
        h2 = ?h2,
        h2_evidence = %h2_evidence,
        api_callers = ranges.len(),
        checks = verified.len(),
        "semantic plan resolved and verified"
    );
    Ok(SemanticPlan {
        go_version,
        h2,
        h2_evidence,
        probes,
        binary: GoHttpBinary {
            offsets,
            valid: 1,
            _pad: 0,
            text: AddrRange {
                start: text_start,
                end: text_start + text.len() as u64,
            },
            api_callers,
        },
        verified,
    })
}

fn missing_or(name: &str) -> impl FnOnce(crate::sensor::gobin::GoBinError) -> SemanticError + '_ {
    move |source| match source {
        crate::sensor::gobin::GoBinError::FunctionMissing { .. } => {
            SemanticError::FunctionMissing {
                name: name.to_owned(),
            }
        }
        source => SemanticError::Function {
            name: name.to_owned(),
            source,
        },
    }
}

/// Whether `name` is in the binary (a damaged table is an error, not a "no").
fn has_function(bin: &GoBinary, name: &str) -> Result<bool, SemanticError> {
    match bin.function(name) {
        Ok(_) => Ok(true),
        Err(crate::sensor::gobin::GoBinError::FunctionMissing { .. }) => Ok(false),
        Err(e) => Err(missing_or(name)(e)),
    }
}

/// The HTTP/2 server the binary answers with (see the module comment).
fn h2_server(bin: &GoBinary) -> Result<(H2Server, String), SemanticError> {
    let bundled = has_function(bin, H2_BUNDLED)?;
    let xnet = has_function(bin, H2_XNET)?;
    let wired: Vec<String> = if xnet && has_function(bin, XNET_CONFIGURE_SERVER)? {
        let configure = bin
            .function(XNET_CONFIGURE_SERVER)
            .map_err(missing_or(XNET_CONFIGURE_SERVER))?;
        callers::direct_callers(bin, XNET_CONFIGURE_SERVER, configure.address)?
            .into_iter()
            .map(|c| c.caller)
            .filter(|c| !c.starts_with("golang.org/x/net/"))
            .collect()
    } else {
        Vec::new()
    };
    decide_h2(bundled, xnet, wired.first().map(String::as_str))
}

/// The rule of the module comment, on what the binary links and who wires x/net in.
fn decide_h2(
    bundled: bool,
    xnet: bool,
    wired_by: Option<&str>,
) -> Result<(H2Server, String), SemanticError> {
    match (bundled, xnet, wired_by) {
        (_, true, Some(caller)) => Ok((
            H2Server::XNet,
            format!("{XNET_CONFIGURE_SERVER} is called by {caller}"),
        )),
        (true, _, _) => {
            Ok((
                H2Server::Bundled,
                if xnet {
                    format!("{H2_XNET} is linked but nothing outside x/net calls {XNET_CONFIGURE_SERVER}")
                } else {
                    format!("{H2_XNET} is not linked")
                },
            ))
        }
        (false, true, None) => Ok((
            H2Server::XNet,
            format!("{H2_BUNDLED} is not linked: x/net's is the only HTTP/2 server"),
        )),
        (false, false, _) => Err(SemanticError::NoH2Server {
            bundled: H2_BUNDLED,
            xnet: H2_XNET,
        }),
    }
}

/// `name`'s probe: the `push rbp` after the stack check, checked by decoding it.
fn probe_at(bin: &GoBinary, probe: SemProbe, name: &str) -> Result<SemanticProbe, SemanticError> {
    let f = bin.function(name).map_err(missing_or(name))?;
    let address = f.probe_offset - f.entry_offset + f.address;
    let not_push = |found: String| SemanticError::NotPushRbp {
        function: name.to_owned(),
        address,
        found,
    };
    // One instruction is at most 15 bytes (fewer at the end of the text).
    let bytes = (1..=15)
        .rev()
        .find_map(|n| bin.read(address, n))
        .ok_or_else(|| not_push("nothing: outside the file".into()))?;
    let insn = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE).decode();
    if f.probe_offset == f.entry_offset {
        return Err(not_push(format!(
            "no Go stack-check prologue before {:?}",
            insn.mnemonic()
        )));
    }
    if insn.is_invalid()
        || insn.mnemonic() != Mnemonic::Push
        || insn.op0_register() != Register::RBP
    {
        let len = insn.len().clamp(1, bytes.len());
        return Err(not_push(format!(
            "{:?} ({:02x?})",
            insn.mnemonic(),
            &bytes[..len]
        )));
    }
    Ok(SemanticProbe {
        probe,
        function: name.to_owned(),
        address,
        file_offset: f.probe_offset,
    })
}

/// Code ranges of the [`API_CALLERS`] the binary has, and of the API/dashboard handlers
/// whose inlined `StripPrefix` closure calls `NotFound` (found by the binary's own calls).
fn api_caller_ranges(bin: &GoBinary) -> Result<Vec<AddrRange>, SemanticError> {
    let not_found = bin.function(NOT_FOUND).map_err(missing_or(NOT_FOUND))?;
    let handlers: Vec<String> = callers::direct_callers(bin, NOT_FOUND, not_found.address)?
        .into_iter()
        .filter(|c| c.caller.starts_with(API_PACKAGES))
        .filter_map(|c| {
            let at = c.caller.find(INLINED_STRIP_PREFIX)?;
            Some(c.caller[..at].to_owned())
        })
        .collect();
    let mut out: Vec<AddrRange> = Vec::new();
    for name in API_CALLERS
        .iter()
        .copied()
        .chain(handlers.iter().map(String::as_str))
    {
        if !has_function(bin, name)? {
            continue;
        }
        let f = bin.function(name).map_err(missing_or(name))?;
        let range = AddrRange {
            start: f.address,
            end: f.address + f.size,
        };
        if !out.contains(&range) {
            out.push(range);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_server_rule() {
        let pick = |b, x, w| decide_h2(b, x, w).map(|(h2, _)| h2);
        // Traefik 3.0/3.3: both linked, x/net wired in by pkg/server.
        assert_eq!(
            pick(true, true, Some("pkg/server.f")).unwrap(),
            H2Server::XNet
        );
        // x/net linked (e.g. for a client) but not wired to a server: bundled.
        assert_eq!(pick(true, true, None).unwrap(), H2Server::Bundled);
        // Traefik 3.5+: x/net's server not linked.
        assert_eq!(pick(true, false, None).unwrap(), H2Server::Bundled);
        assert_eq!(pick(false, true, None).unwrap(), H2Server::XNet);
        assert!(matches!(
            pick(false, false, None),
            Err(SemanticError::NoH2Server { .. })
        ));
    }
}
