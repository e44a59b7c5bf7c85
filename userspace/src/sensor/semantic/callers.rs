//! Direct callers of a function: every `call rel32` in the text that lands on its entry,
//! confirmed by decoding the calling function from its own entry (so a stray `E8` byte
//! inside another instruction is not taken for a call).

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

use crate::sensor::gobin::GoBinary;

use super::SemanticError;

/// A confirmed call site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CallSite {
    pub caller: String,
    pub caller_entry: u64,
    pub call: u64,
}

fn read_err(name: &str) -> impl FnOnce(crate::sensor::gobin::GoBinError) -> SemanticError + '_ {
    move |source| SemanticError::Function {
        name: name.to_owned(),
        source,
    }
}

/// Direct calls to `target` (a function address) anywhere in the binary's text.
pub(super) fn direct_callers(
    bin: &GoBinary,
    target_name: &str,
    target: u64,
) -> Result<Vec<CallSite>, SemanticError> {
    let (text_start, text) = bin.text().map_err(read_err("the text"))?;
    let mut sites = Vec::new();
    let mut i = 0usize;
    while i + 5 <= text.len() {
        if text[i] == 0xe8 {
            let rel = i32::from_le_bytes([text[i + 1], text[i + 2], text[i + 3], text[i + 4]]);
            let next = text_start + i as u64 + 5;
            if next.wrapping_add_signed(i64::from(rel)) == target {
                if let Some(site) = confirm(bin, target_name, text_start + i as u64, target)? {
                    sites.push(site);
                }
            }
        }
        i += 1;
    }
    Ok(sites)
}

/// Decodes the function holding `call` and checks that an instruction starts there and
/// calls `target`.
fn confirm(
    bin: &GoBinary,
    target_name: &str,
    call: u64,
    target: u64,
) -> Result<Option<CallSite>, SemanticError> {
    let Some((caller, entry, size)) = bin.function_at(call).map_err(read_err(target_name))? else {
        return Ok(None);
    };
    let code = usize::try_from(size)
        .ok()
        .and_then(|len| bin.read(entry, len))
        .ok_or_else(|| SemanticError::FunctionMissing {
            name: caller.clone(),
        })?;
    let hit = Decoder::with_ip(64, code, entry, DecoderOptions::NONE)
        .into_iter()
        .take_while(|insn| insn.ip() <= call)
        .any(|insn| {
            insn.ip() == call
                && insn.mnemonic() == Mnemonic::Call
                && insn.near_branch_target() == target
        });
    Ok(hit.then_some(CallSite {
        caller,
        caller_entry: entry,
        call,
    }))
}
