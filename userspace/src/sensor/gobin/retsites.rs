//! The return instructions of a function, found by decoding its machine code.
//!
//! A uretprobe replaces the return address on the stack with a trampoline; Go moves
//! goroutine stacks when they grow and walks them for tracebacks and garbage collection,
//! and a foreign return address there crashes the process. Uprobes on each `RET` of the
//! function read the results instead, with the stack untouched.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

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

/// Where an entry uprobe costs least: the `push rbp` that follows Go's stack-bound check
/// (`cmp rsp|r12, [r14+16]` then a conditional jump to `morestack`, with an optional
/// `lea r12, [rsp-N]` first), or `ip` itself when the prologue has another shape.
///
/// The kernel emulates a probed `push` but single-steps a probed `cmp` out of line, an
/// extra trap on every hit. Nothing before the `push` touches the argument registers or
/// the goroutine pointer (R14), and a stack growth jumps back to the function's entry, so
/// the probe still fires exactly once per call that runs.
pub fn after_stack_check(code: &[u8], ip: u64) -> u64 {
    let mut insns = Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
        .into_iter()
        .take(4)
        .peekable();
    // Large frames compute the new stack bottom first.
    insns.next_if(|i| i.mnemonic() == Mnemonic::Lea && i.op0_register() == Register::R12);
    let stack_check = insns.next().is_some_and(|i| {
        i.mnemonic() == Mnemonic::Cmp
            && matches!(i.op0_register(), Register::RSP | Register::R12)
            && i.op1_kind() == OpKind::Memory
            && i.memory_base() == Register::R14
            && i.memory_displacement64() == 16
    });
    let to_morestack = insns
        .next()
        .is_some_and(|i| matches!(i.mnemonic(), Mnemonic::Jbe | Mnemonic::Jb));
    match insns.next() {
        Some(push)
            if stack_check
                && to_morestack
                && push.mnemonic() == Mnemonic::Push
                && push.op0_register() == Register::RBP =>
        {
            push.ip()
        }
        _ => ip,
    }
}

#[cfg(test)]
mod tests {
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
    fn entry_probe_goes_after_the_stack_check() {
        // cmp rsp, [r14+16] ; jbe +0x37a ; push rbp ; mov rbp, rsp
        let small = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x7a, 0x03, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5,
        ];
        assert_eq!(after_stack_check(&small, 0x1000), 0x100a);
        // lea r12, [rsp-0x48] ; cmp r12, [r14+16] ; jbe ... ; push rbp
        let big = [
            0x4c, 0x8d, 0x64, 0x24, 0xb8, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x93, 0x07, 0x00,
            0x00, 0x55,
        ];
        assert_eq!(after_stack_check(&big, 0x2000), 0x200f);
        // No stack check (a leaf function): the entry itself.
        let leaf = [0x48, 0x89, 0xd8, 0xc3];
        assert_eq!(after_stack_check(&leaf, 0x3000), 0x3000);
        // A check against something other than the goroutine's stack bound: the entry.
        let other = [
            0x49, 0x3b, 0x66, 0x18, 0x0f, 0x86, 0x7a, 0x03, 0x00, 0x00, 0x55,
        ];
        assert_eq!(after_stack_check(&other, 0x4000), 0x4000);
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
