//! Upstream records: a connection a watched process opened failed, and why.

use std::{
    mem::{offset_of, size_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use routeskew_common::{UpstreamEvent, UpstreamReason};

use super::{need, u16_at, u32_at, DecodeError};
use crate::event::{EventKind, UpstreamFailureReason};

pub(super) const AF_INET: u16 = 2;
pub(super) const AF_INET6: u16 = 10;

pub(super) fn decode_upstream(rec: &[u8]) -> Result<EventKind, DecodeError> {
    need("upstream record", rec, size_of::<UpstreamEvent>())?;
    let reason = match UpstreamReason::try_from(u32_at(rec, offset_of!(UpstreamEvent, reason)))? {
        UpstreamReason::Refused => UpstreamFailureReason::Refused,
        UpstreamReason::Timeout => UpstreamFailureReason::Timeout,
        UpstreamReason::Unreachable => UpstreamFailureReason::Unreachable,
        UpstreamReason::Reset => UpstreamFailureReason::Reset,
    };
    let family = u16_at(rec, offset_of!(UpstreamEvent, family));
    let port = u16_at(rec, offset_of!(UpstreamEvent, dport));
    let a = offset_of!(UpstreamEvent, daddr);
    let mut daddr = [0u8; 16];
    daddr.copy_from_slice(&rec[a..a + 16]);
    let ip = match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            daddr[0], daddr[1], daddr[2], daddr[3],
        ))),
        // A dual-stack socket connecting to an IPv4 peer reports it v4-mapped.
        AF_INET6 => {
            let v6 = Ipv6Addr::from(daddr);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    };
    Ok(EventKind::UpstreamFailure {
        reason,
        errno: u32_at(rec, offset_of!(UpstreamEvent, errno)) as i32,
        peer: ip.map(|ip| SocketAddr::new(ip, port)),
    })
}
