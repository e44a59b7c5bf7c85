//! Follows a function's receiver (its first argument, RAX under Go's ABIInternal) through
//! the function's machine code: into other registers, into stack spill slots and back.
//! Each memory access based on a register that holds the receiver is reported with its
//! displacement, which is how the verification reads field offsets out of the code the
//! compiler actually emitted.
//!
//! A forward must-analysis over the function's basic blocks: a register or stack slot
//! holds the receiver at an instruction only if it does on every path from the entry.
//! Calls end what registers held (Go's ABIInternal keeps no general register across a
//! call except R14/R15, which never hold arguments); stack slots survive them. Calls are
//! taken to return (a no-return call only adds a path, which can only remove facts).

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

use super::SemanticError;

/// One instruction that reads or writes memory at `[receiver + disp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Access {
    pub ip: u64,
    pub disp: u64,
    pub shape: Shape,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// `cmp byte [recv+disp], 0`: a bool test.
    TestByteZero,
    /// `mov byte [recv+disp], 1`: a bool set.
    SetByteOne,
    /// `mov r64, [recv+disp]`; `deref`: whether the loaded pointer was then dereferenced
    /// at the displacement of interest, in the same block, before it was overwritten.
    LoadPointer {
        deref: bool,
    },
    Other,
}

/// Bit per full 64-bit general register.
fn bit(r: Register) -> u32 {
    let full = r.full_register();
    if full.is_gpr64() {
        1 << (full.number() - Register::RAX.number())
    } else {
        0
    }
}

/// What holds the receiver: registers (bits) and `[rsp+d]` spill slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    regs: u32,
    slots: Vec<u64>,
}

impl State {
    fn join(&self, other: &State) -> State {
        State {
            regs: self.regs & other.regs,
            slots: self
                .slots
                .iter()
                .copied()
                .filter(|s| other.slots.contains(s))
                .collect(),
        }
    }

    fn holds_base(&self, insn: &Instruction) -> bool {
        bit(insn.memory_base()) & self.regs != 0 && insn.memory_index() == Register::None
    }

    fn step(&mut self, insn: &Instruction, info: &mut InstructionInfoFactory) {
        let written = written_regs(insn, info);
        if insn.mnemonic() == Mnemonic::Call {
            self.regs = 0;
            return;
        }
        let mut gains = 0;
        if insn.mnemonic() == Mnemonic::Mov {
            let (k0, k1) = (insn.op0_kind(), insn.op1_kind());
            if k0 == OpKind::Register && insn.op0_register().is_gpr64() {
                let holds = match k1 {
                    OpKind::Register => bit(insn.op1_register()) & self.regs != 0,
                    OpKind::Memory => {
                        insn.memory_base() == Register::RSP
                            && insn.memory_index() == Register::None
                            && self.slots.contains(&insn.memory_displacement64())
                    }
                    _ => false,
                };
                if holds {
                    gains = bit(insn.op0_register());
                }
            }
            if k0 == OpKind::Memory && insn.memory_base() == Register::RSP {
                let d = insn.memory_displacement64();
                self.slots.retain(|&s| s != d);
                if k1 == OpKind::Register && bit(insn.op1_register()) & self.regs != 0 {
                    self.slots.push(d);
                }
            }
        }
        self.regs = (self.regs & !written) | gains;
    }
}

fn written_regs(insn: &Instruction, info: &mut InstructionInfoFactory) -> u32 {
    info.info(insn)
        .used_registers()
        .iter()
        .filter(|u| {
            matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        })
        .fold(0, |a, u| a | bit(u.register()))
}

/// The function's instructions, up to undecodable padding.
fn decode(function: &str, code: &[u8], ip: u64) -> Result<Vec<Instruction>, SemanticError> {
    let mut out = Vec::new();
    let mut padding = false;
    for insn in Decoder::with_ip(64, code, ip, DecoderOptions::NONE) {
        if insn.is_invalid() {
            if padding {
                break;
            }
            return Err(SemanticError::Undecodable {
                function: function.to_owned(),
                address: insn.ip(),
            });
        }
        padding |= insn.mnemonic() == Mnemonic::Int3;
        out.push(insn);
    }
    Ok(out)
}

/// Basic blocks as `[start, end)` instruction index ranges, and each one's successors.
fn blocks(insns: &[Instruction]) -> Vec<(usize, usize, Vec<usize>)> {
    let index = |ip: u64| insns.binary_search_by_key(&ip, Instruction::ip).ok();
    let mut leader = vec![false; insns.len() + 1];
    leader[0] = true;
    for (i, insn) in insns.iter().enumerate() {
        match insn.flow_control() {
            FlowControl::Next | FlowControl::Call => {}
            _ => {
                leader[i + 1] = true;
                if let Some(t) = direct_target(insn).and_then(index) {
                    leader[t] = true;
                }
            }
        }
    }
    let starts: Vec<usize> = (0..insns.len()).filter(|&i| leader[i]).collect();
    let block_of = |i: usize| starts.partition_point(|&s| s <= i) - 1;
    starts
        .iter()
        .enumerate()
        .map(|(b, &start)| {
            let end = starts.get(b + 1).copied().unwrap_or(insns.len());
            let last = &insns[end - 1];
            let mut succ = Vec::new();
            let falls = matches!(
                last.flow_control(),
                FlowControl::Next | FlowControl::Call | FlowControl::ConditionalBranch
            );
            if falls && end < insns.len() {
                succ.push(b + 1);
            }
            if let Some(t) = direct_target(last).and_then(index) {
                succ.push(block_of(t));
            }
            (start, end, succ)
        })
        .collect()
}

fn direct_target(insn: &Instruction) -> Option<u64> {
    matches!(
        insn.flow_control(),
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
    )
    .then(|| insn.near_branch_target())
    .filter(|&t| t != 0)
}

/// Accesses through the receiver in `code` (a whole function starting at `ip`), in text
/// order. `deref_of_interest`: for loaded pointers, the displacement whose dereference
/// is recorded.
pub(super) fn receiver_accesses(
    function: &str,
    code: &[u8],
    ip: u64,
    deref_of_interest: u64,
) -> Result<Vec<Access>, SemanticError> {
    let insns = decode(function, code, ip)?;
    if insns.is_empty() {
        return Ok(Vec::new());
    }
    let blocks = blocks(&insns);
    let mut info = InstructionInfoFactory::new();
    let mut entry: Vec<Option<State>> = vec![None; blocks.len()];
    entry[0] = Some(State {
        regs: bit(Register::RAX),
        slots: Vec::new(),
    });
    let mut work = vec![0usize];
    while let Some(b) = work.pop() {
        let (start, end, succ) = &blocks[b];
        let Some(mut state) = entry[b].clone() else {
            continue;
        };
        for insn in &insns[*start..*end] {
            state.step(insn, &mut info);
        }
        // The only jump back to the entry is the stack-growth path, which restores the
        // arguments before it (and which code after a no-return call falls into in
        // text order): the entry state stays the arguments'.
        for &s in succ.iter().filter(|&&s| s != 0) {
            let joined = match &entry[s] {
                Some(old) => old.join(&state),
                None => state.clone(),
            };
            if entry[s].as_ref() != Some(&joined) {
                entry[s] = Some(joined);
                work.push(s);
            }
        }
    }
    let mut out = Vec::new();
    for (b, (start, end, _)) in blocks.iter().enumerate() {
        let Some(mut state) = entry[b].clone() else {
            continue;
        };
        // (register bit, index in `out`) of pointers loaded through the receiver.
        let mut loaded: Vec<(u32, usize)> = Vec::new();
        for insn in &insns[*start..*end] {
            let has_mem = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
            if has_mem && insn.mnemonic() != Mnemonic::Lea {
                let disp = insn.memory_displacement64();
                for &(reg, at) in &loaded {
                    if bit(insn.memory_base()) == reg && disp == deref_of_interest {
                        out[at] = Access {
                            shape: Shape::LoadPointer { deref: true },
                            ..out[at]
                        };
                    }
                }
                let written = written_regs(insn, &mut info);
                loaded.retain(|&(reg, _)| reg & written == 0);
                if state.holds_base(insn) {
                    let shape = shape(insn);
                    if shape == (Shape::LoadPointer { deref: false }) {
                        loaded.push((bit(insn.op0_register()), out.len()));
                    }
                    out.push(Access {
                        ip: insn.ip(),
                        disp,
                        shape,
                    });
                }
            } else {
                let written = written_regs(insn, &mut info);
                loaded.retain(|&(reg, _)| reg & written == 0);
            }
            if insn.mnemonic() == Mnemonic::Call {
                loaded.clear();
            }
            state.step(insn, &mut info);
        }
    }
    Ok(out)
}

fn shape(insn: &Instruction) -> Shape {
    let byte_mem = insn.memory_size() == iced_x86::MemorySize::UInt8;
    let imm =
        (insn.op_count() == 2 && insn.op1_kind() == OpKind::Immediate8).then(|| insn.immediate8());
    let mem_dst = insn.op0_kind() == OpKind::Memory;
    match (insn.mnemonic(), byte_mem, imm) {
        (Mnemonic::Cmp, true, Some(0)) if mem_dst => Shape::TestByteZero,
        (Mnemonic::Mov, true, Some(1)) if mem_dst => Shape::SetByteOne,
        (Mnemonic::Mov, false, None)
            if insn.op1_kind() == OpKind::Memory
                && insn.op0_kind() == OpKind::Register
                && insn.op0_register().is_gpr64() =>
        {
            Shape::LoadPointer { deref: false }
        }
        _ => Shape::Other,
    }
}
