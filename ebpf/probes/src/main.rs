//! routeskew kernel programs: socket (or, on older kernels, syscall) tracepoints that copy
//! the first bytes of HTTP/1.x messages written or read by watched processes, uprobes on
//! Go's `crypto/tls.(*Conn)` methods that do the same for the plaintext of TLS
//! connections, and TCP tracepoints that report failed outgoing connections. Every field
//! offset comes from the `CONFIG` global, which the agent fills from the running kernel's tracefs and BTF
//! before load (aya-ebpf has no CO-RE).
#![no_std]
#![no_main]

mod capture;
mod emit;
mod filter;
mod gotls;
mod maps;
mod regs;
mod sem_head;
mod sem_hit;
mod sem_session;
mod semantic;
mod sockio;
mod syscalls;
mod tcp;

// The kernel only lets GPL-compatible programs call bpf_probe_read_user/kernel.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path can panic once the verifier accepted the program; this only satisfies
    // the no_std contract.
    loop {}
}
