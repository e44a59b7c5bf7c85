//! [`HostName`]: a normalised host name that parsing a request and keeping it pending
//! does not allocate for.

use std::hash::Hasher;

/// A normalised host name, stored inline when it is short (nearly always), so that parsing a
/// request and keeping it pending does not allocate.
#[derive(Clone)]
pub struct HostName(HostRepr);

/// Host names up to this long are kept inline; longer ones (up to [`super::MAX_HOST_LEN`]) go to
/// the heap.
const INLINE_HOST: usize = 62;

#[derive(Clone)]
enum HostRepr {
    Inline { len: u8, buf: [u8; INLINE_HOST] },
    Heap(Box<str>),
}

impl HostName {
    /// `s` lowercased; the caller has checked that it is ASCII.
    pub(super) fn lowercase_ascii(s: &[u8]) -> Self {
        if s.len() <= INLINE_HOST {
            let mut buf = [0u8; INLINE_HOST];
            for (d, b) in buf.iter_mut().zip(s) {
                *d = b.to_ascii_lowercase();
            }
            HostName(HostRepr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            let lower: String = s
                .iter()
                .map(|b| char::from(b.to_ascii_lowercase()))
                .collect();
            HostName(HostRepr::Heap(lower.into_boxed_str()))
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only built from a `&str` or from checked ASCII, cut at its own length.
            HostRepr::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            HostRepr::Heap(s) => s,
        }
    }

    /// The name's bytes, without the UTF-8 check [`as_str`](Self::as_str) makes: what
    /// comparisons and hashes on the per-event path use.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            HostRepr::Inline { len, buf } => &buf[..usize::from(*len)],
            HostRepr::Heap(s) => s.as_bytes(),
        }
    }
}

impl From<&str> for HostName {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE_HOST {
            let mut buf = [0u8; INLINE_HOST];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            HostName(HostRepr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            HostName(HostRepr::Heap(s.into()))
        }
    }
}

impl From<String> for HostName {
    fn from(s: String) -> Self {
        HostName::from(s.as_str())
    }
}

impl std::ops::Deref for HostName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for HostName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HostName {}

impl std::hash::Hash for HostName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq<str> for HostName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for HostName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::fmt::Debug for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
