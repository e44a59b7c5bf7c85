//! Types that cross the kernel/user boundary.
//!
//! Every type is `#[repr(C)]`, laid out without implicit padding (explicit `_pad` fields
//! instead), and pinned by compile-time size (and, where a layout is easy to get wrong,
//! offset) assertions, because the kernel programs and the agent are built by different
//! compilers for different targets and must agree byte-for-byte.
//!
//! Discriminants are `#[repr(u32)]` enums ([`RecordKind`], [`Direction`], [`ConnSource`],
//! [`UpstreamReason`], [`Program`], [`SemProbe`]), but records and map values hold them as `u32`: see
//! [`UnknownValue`] for why and how the agent decodes them.
#![no_std]

#[macro_use]
mod wire;

mod config;
mod program;
mod record;
mod semantic;
mod state;

pub use config::*;
pub use program::*;
pub use record::*;
pub use semantic::*;
pub use state::*;
pub use wire::UnknownValue;

/// Bytes of a read/write buffer the kernel copies into one event. A power of two so the
/// kernel program can bound a variable length with a mask the verifier understands.
pub const DATA_CAP: usize = 1024;

/// Default number of leading bytes copied per captured buffer (the agent may lower it).
pub const DEFAULT_CAPTURE_LEN: u32 = DATA_CAP as u32;

const _: () = assert!(DATA_CAP.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], Copy, has no padding (size assertions in its
    // module) and is valid for any bit pattern (discriminants are plain u32 fields).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::SockConn {}
    unsafe impl aya::Pod for super::WatchedSet {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ProgramCounters {}
    unsafe impl aya::Pod for super::TcpSock {}
    unsafe impl aya::Pod for super::PendingIo {}
    unsafe impl aya::Pod for super::TlsConnKey {}
    unsafe impl aya::Pod for super::GoroutineKey {}
    unsafe impl aya::Pod for super::TlsRead {}
    unsafe impl aya::Pod for super::GoHttpBinary {}
    unsafe impl aya::Pod for super::SemKey {}
    unsafe impl aya::Pod for super::MissMark {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_round_trip() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::try_from(kind as u32), Ok(kind));
        }
        for p in Program::ALL {
            assert_eq!(Program::try_from(p as u32), Ok(p));
        }
        assert_eq!(Program::ALL.len(), Program::COUNT as usize);
        assert_eq!(
            Direction::try_from(2),
            Err(UnknownValue {
                what: "Direction",
                value: 2
            })
        );
        assert_eq!(
            UpstreamReason::try_from(0).map_err(|e| e.what),
            Err("UpstreamReason")
        );
        assert_eq!(ConnSource::try_from(1), Ok(ConnSource::GoTls));
    }

    #[test]
    fn program_names_are_distinct() {
        for (i, a) in Program::ALL.iter().enumerate() {
            for b in &Program::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(Program::SysExitRead.name(), "sys_exit_read");
        assert_eq!(Program::GoTlsClose.name(), "go_tls_close");
    }
}
