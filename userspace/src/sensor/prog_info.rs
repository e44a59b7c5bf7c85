//! Counters the kernel keeps per BPF program that aya does not expose.
//!
//! `recursion_misses` counts the runs the kernel skipped because a BPF program was
//! already running on that CPU: a TCP tracepoint firing in a softirq that interrupted one
//! of our classic syscall tracepoint programs is dropped this way, and its event with it.
//! Those losses happen before our code runs, so only the kernel can count them.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// The `info` member of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`; the kernel accepts
/// an attribute shorter than the whole union when the rest would be zero.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The program's count of runs the kernel skipped (kernel 5.12+; 0 before).
pub fn recursion_misses(prog: impl AsFd) -> io::Result<u64> {
    // SAFETY: bpf_prog_info is plain integers and pointers-as-integers; all-zero is valid
    // and asks the kernel to fill in no variable-length arrays.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: prog.as_fd().as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: attr points at a live bpf_prog_info of info_len bytes, which the kernel
    // fills (truncating to what it knows); attr lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            (&raw mut attr) as libc::c_long,
            size_of::<InfoByFd>() as libc::c_long,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
