//! The return instructions of a function, found by decoding its machine code.
//!
//! A uretprobe replaces the return address on the stack with a trampoline; Go moves
//! goroutine stacks when they grow and walks them for tracebacks and garbage collection,
//! and a foreign return address there crashes the process. Uprobes on each `RET` of the
//! function read the results instead, with the stack untouched.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

use super::GoBinError;

/// Addresses of every `RET` in `code`, which starts at virtual address `ip`.
///
/// The whole range is decoded in order: Go emits no data inside a function's text, and
/// the padding after it is `INT3`. An undecodable byte before the first padding is an
/// error (a range that is not one Go function), never skipped over.
pub fn ret_sites(code: &[u8], ip: u64) -> Result<Vec<u64>, GoBinError> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut rets = Vec::new();
    let mut in_padding = false;
    for insn in &mut decoder {
        if insn.is_invalid() {
            if in_padding {
                break;
            }
            return Err(GoBinError::Undecodable { address: insn.ip() });
        }
        match insn.mnemonic() {
            Mnemonic::Ret => rets.push(insn.ip()),
            Mnemonic::Int3 => in_padding = true,
            _ => {}
        }
    }
    Ok(rets)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_each_ret() {
        // mov rax, rbx ; test rax, rax ; je +1 ; ret ; xor eax, eax ; ret ; int3 ; int3
        let code = [
            0x48, 0x89, 0xd8, 0x48, 0x85, 0xc0, 0x74, 0x01, 0xc3, 0x31, 0xc0, 0xc3, 0xcc, 0xcc,
        ];
        assert_eq!(ret_sites(&code, 0x1000).unwrap(), vec![0x1008, 0x100b]);
    }

    #[test]
    fn c3_inside_an_instruction_is_not_a_ret() {
        // mov eax, 0xc3c3c3c3 ; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3];
        assert_eq!(ret_sites(&code, 0).unwrap(), vec![5]);
    }

    #[test]
    fn undecodable_code_is_an_error() {
        // A truncated instruction (mov rax, imm64 without its immediate).
        let code = [0x48, 0xb8, 0x01];
        assert!(matches!(
            ret_sites(&code, 0x10),
            Err(GoBinError::Undecodable { address: 0x10 })
        ));
    }
}
