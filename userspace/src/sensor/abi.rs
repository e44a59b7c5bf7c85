//! What the programs that read kernel structures directly need to know: syscall numbers
//! and where the syscall number and first two arguments sit in the saved user registers
//! (`struct pt_regs`), and the pointer chain from a task to its cgroup id. The numbers
//! are fixed per architecture; the offsets are read from the running kernel's BTF.
//! The results are the kernel configuration's own types, copied into it as they are.

pub use routeskew_common::{CgroupChain, RegOffsets, SyscallNumbers};

use super::btf::{Btf, BtfError};

/// Where a value lives in `struct pt_regs`: a member, plus a byte offset into it (for an
/// element of an array member such as arm64's `regs[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegSlot {
    pub member: &'static str,
    pub plus: u32,
}

const fn slot(member: &'static str, plus: u32) -> RegSlot {
    RegSlot { member, plus }
}

/// One architecture's syscall convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallAbi {
    pub arch: &'static str,
    /// The syscall number, preserved at exit (the return-value register is overwritten).
    pub nr: RegSlot,
    /// First argument (the fd) as still saved at exit.
    pub arg0: RegSlot,
    /// Second argument (the buffer).
    pub arg1: RegSlot,
    pub numbers: SyscallNumbers,
}

/// x86-64: the kernel saves rdi/rsi on entry and never writes them back; rax becomes the
/// return value, `orig_ax` keeps the number.
pub const X86_64: SyscallAbi = SyscallAbi {
    arch: "x86_64",
    nr: slot("orig_ax", 0),
    arg0: slot("di", 0),
    arg1: slot("si", 0),
    numbers: SyscallNumbers {
        read: 0,
        write: 1,
        close: 3,
        recvfrom: 45,
        sendto: 44,
    },
};

/// arm64: x0 is both the first argument and the return value, so the argument survives
/// only in `orig_x0`; the number is the int `syscallno` (asm-generic numbering).
pub const AARCH64: SyscallAbi = SyscallAbi {
    arch: "aarch64",
    nr: slot("syscallno", 0),
    arg0: slot("orig_x0", 0),
    arg1: slot("regs", 8),
    numbers: SyscallNumbers {
        read: 63,
        write: 64,
        close: 57,
        recvfrom: 207,
        sendto: 206,
    },
};

/// The convention of the architecture this agent was built for, if the raw path knows it.
pub fn native() -> Option<&'static SyscallAbi> {
    #[cfg(target_arch = "x86_64")]
    {
        Some(&X86_64)
    }
    #[cfg(target_arch = "aarch64")]
    {
        Some(&AARCH64)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("{strukt}.{member} is {size} bytes, expected 8")]
    Member {
        strukt: &'static str,
        member: &'static str,
        size: u64,
    },
    #[error("pt_regs.{member}{plus}: {size} bytes at offset {offset} cannot hold an 8-byte {what}", plus = if *plus > 0 { format!("+{plus}") } else { String::new() })]
    Slot {
        member: &'static str,
        plus: u32,
        offset: u32,
        size: u64,
        what: &'static str,
    },
}

/// Resolves `abi`'s register slots (byte offsets in `struct pt_regs` of the syscall
/// number and the first two arguments) in a kernel's BTF.
pub fn reg_offsets(btf: &Btf<'_>, abi: &SyscallAbi) -> Result<RegOffsets, AbiError> {
    // The program reads 8 bytes at each offset. The number may be a 4-byte int (arm64)
    // as long as 8 bytes from it stay inside the struct: only its low half is compared.
    let resolve = |s: RegSlot, min: u64, what: &'static str| -> Result<u32, AbiError> {
        let m = btf.member("pt_regs", s.member)?;
        let fits = u64::from(s.plus) + min <= m.size;
        let offset = m.offset + s.plus;
        if !fits {
            return Err(AbiError::Slot {
                member: s.member,
                plus: s.plus,
                offset,
                size: m.size,
                what,
            });
        }
        Ok(offset)
    };
    let nr = resolve(abi.nr, 4, "syscall number")?;
    let size = btf.member("pt_regs", abi.nr.member)?.size;
    if size < 8 {
        // A 4-byte number must be followed by at least 4 more bytes of pt_regs.
        let whole = btf.struct_size("pt_regs")?;
        if u64::from(nr) + 8 > whole {
            return Err(AbiError::Slot {
                member: abi.nr.member,
                plus: abi.nr.plus,
                offset: nr,
                size,
                what: "syscall number",
            });
        }
    }
    Ok(RegOffsets {
        nr,
        arg0: resolve(abi.arg0, 8, "argument")?,
        arg1: resolve(abi.arg1, 8, "argument")?,
    })
}

/// Resolves the offsets of the pointer chain from the current task to its cgroup v2 id
/// (`task_struct.cgroups -> css_set.dfl_cgrp -> cgroup.kn -> kernfs_node.id`) in a
/// kernel's BTF. Every link is read as 8 bytes.
pub fn cgroup_chain(btf: &Btf<'_>) -> Result<CgroupChain, AbiError> {
    let link = |strukt: &'static str, member: &'static str| -> Result<u32, AbiError> {
        let m = btf.member(strukt, member)?;
        if m.size != 8 {
            return Err(AbiError::Member {
                strukt,
                member,
                size: m.size,
            });
        }
        Ok(m.offset)
    };
    Ok(CgroupChain {
        task_cgroups: link("task_struct", "cgroups")?,
        css_set_dfl_cgrp: link("css_set", "dfl_cgrp")?,
        cgroup_kn: link("cgroup", "kn")?,
        kernfs_node_id: link("kernfs_node", "id")?,
    })
}

/// Offset of `struct sock.sk_err` (an `int`): where the kernel stores the error a
/// connect failed with before it closes the socket.
pub fn sock_err_offset(btf: &Btf<'_>) -> Result<u32, AbiError> {
    let m = btf.member("sock", "sk_err")?;
    if m.size != 4 {
        return Err(AbiError::Member {
            strukt: "sock",
            member: "sk_err",
            size: m.size,
        });
    }
    Ok(m.offset)
}

#[cfg(test)]
mod tests {
    use super::super::btf::tests::{aarch64_pt_regs, x86_64_pt_regs};
    use super::*;

    #[test]
    fn x86_64_offsets() {
        let blob = x86_64_pt_regs();
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(
            reg_offsets(&btf, &X86_64),
            Ok(RegOffsets {
                nr: 120,
                arg0: 112,
                arg1: 104
            })
        );
    }

    #[test]
    fn aarch64_offsets() {
        let blob = aarch64_pt_regs();
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(
            reg_offsets(&btf, &AARCH64),
            Ok(RegOffsets {
                nr: 280,
                arg0: 272,
                arg1: 8
            })
        );
    }

    #[test]
    fn wrong_architecture_is_an_error() {
        let blob = aarch64_pt_regs();
        let btf = Btf::parse(&blob).expect("parse");
        assert!(matches!(
            reg_offsets(&btf, &X86_64),
            Err(AbiError::Btf(BtfError::NoMember { .. }))
        ));
    }

    #[test]
    fn numbers_match_libc() {
        #[cfg(target_arch = "x86_64")]
        let abi = X86_64;
        #[cfg(target_arch = "aarch64")]
        let abi = AARCH64;
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            assert_eq!(native(), Some(&abi));
            let n = abi.numbers;
            assert_eq!(libc::c_long::from(n.read), libc::SYS_read);
            assert_eq!(libc::c_long::from(n.write), libc::SYS_write);
            assert_eq!(libc::c_long::from(n.close), libc::SYS_close);
            assert_eq!(libc::c_long::from(n.recvfrom), libc::SYS_recvfrom);
            assert_eq!(libc::c_long::from(n.sendto), libc::SYS_sendto);
        }
    }

    #[test]
    fn cgroup_chain_from_btf() {
        use super::super::btf::tests::Builder;
        let mut b = Builder::new();
        let u64_ = b.int("long long unsigned int", 8);
        let int = b.int("int", 4);
        b.composite(
            false,
            "task_struct",
            64,
            &[("pid", int, 0), ("cgroups", u64_, 40)],
        );
        b.composite(false, "css_set", 128, &[("dfl_cgrp", u64_, 112)]);
        b.composite(false, "cgroup", 512, &[("kn", u64_, 256)]);
        b.composite(
            false,
            "kernfs_node",
            128,
            &[("id", u64_, 96), ("mode", int, 104)],
        );
        let blob = b.finish();
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(
            cgroup_chain(&btf),
            Ok(CgroupChain {
                task_cgroups: 40,
                css_set_dfl_cgrp: 112,
                cgroup_kn: 256,
                kernfs_node_id: 96,
            })
        );
        // A 4-byte id (kernels before 5.5 had a union of ino/generation) is refused.
        let mut b = Builder::new();
        let u64_ = b.int("long long unsigned int", 8);
        let int = b.int("int", 4);
        b.composite(false, "task_struct", 64, &[("cgroups", u64_, 40)]);
        b.composite(false, "css_set", 128, &[("dfl_cgrp", u64_, 112)]);
        b.composite(false, "cgroup", 512, &[("kn", u64_, 256)]);
        b.composite(false, "kernfs_node", 128, &[("id", int, 96)]);
        let blob = b.finish();
        let btf = Btf::parse(&blob).expect("parse");
        assert!(matches!(
            cgroup_chain(&btf),
            Err(AbiError::Member { member: "id", .. })
        ));
    }

    /// On this machine's kernel, when its BTF is readable.
    #[test]
    fn resolves_on_this_kernel_if_present() {
        let (Some(abi), Ok(blob)) = (native(), std::fs::read("/sys/kernel/btf/vmlinux")) else {
            return;
        };
        let btf = Btf::parse(&blob).expect("vmlinux BTF");
        reg_offsets(&btf, abi).expect("pt_regs offsets");
        cgroup_chain(&btf).expect("cgroup chain");
        sock_err_offset(&btf).expect("sock.sk_err");
    }

    #[test]
    fn sock_err_from_btf() {
        use super::super::btf::tests::Builder;
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let u64_ = b.int("long long unsigned int", 8);
        b.composite(
            false,
            "sock",
            768,
            &[("sk_lock", u64_, 0), ("sk_err", int, 372)],
        );
        let blob = b.finish();
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(sock_err_offset(&btf), Ok(372));
        // A member of another size is refused, not read as an int.
        let mut b = Builder::new();
        let u64_ = b.int("long long unsigned int", 8);
        b.composite(false, "sock", 768, &[("sk_err", u64_, 372)]);
        let blob = b.finish();
        let btf = Btf::parse(&blob).expect("parse");
        assert!(matches!(
            sock_err_offset(&btf),
            Err(AbiError::Member {
                member: "sk_err",
                ..
            })
        ));
    }
}
