//! The Go version a binary was built with, from its `.go.buildinfo` blob (what
//! `go version <binary>` prints). Stripping keeps it: it is data, not a symbol.
//!
//! ```text
//! 0   "\xff Go buildinf:"   14 bytes
//! 14  pointer size          1 byte
//! 15  flags                 bit 0: big-endian, bit 1: strings inline (Go 1.18+)
//! 16  Go ≤ 1.17: two pointers to Go string headers {data, len}: version, module info
//! 32  Go ≥ 1.18: uvarint length + version bytes, uvarint length + module info
//! ```
//!
//! The module info is framed by two 16-byte sentinels; inside, one line per item:
//! `path`, `mod`, `dep\t<path>\t<version>\t<sum>`, `=>` (a replacement of the line
//! before), `build`.

use super::{BuildInfoDefect as Defect, GoBinError};

pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_BIG_ENDIAN: u8 = 1;
const FLAG_INLINE: u8 = 2;
/// Longer is not a version string.
const MAX_VERSION_LEN: u64 = 64;

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn version_str(bytes: &[u8]) -> Result<String, GoBinError> {
    let s = std::str::from_utf8(bytes).map_err(|_| Defect::NotUtf8)?;
    if !s.starts_with("go") {
        return Err(Defect::NotGo {
            version: s.to_owned(),
        }
        .into());
    }
    Ok(s.to_owned())
}

/// Parses the blob at the start of `blob`. `read` returns `len` bytes at a virtual
/// address (for the pre-1.18 format, whose strings live elsewhere in the binary).
pub fn version<'a>(
    blob: &'a [u8],
    read: impl Fn(u64, usize) -> Option<&'a [u8]>,
) -> Result<String, GoBinError> {
    if blob.len() < HEADER_LEN || &blob[..MAGIC.len()] != MAGIC {
        return Err(Defect::NoMagic.into());
    }
    let ptr_size = usize::from(blob[14]);
    let flags = blob[15];
    if flags & FLAG_INLINE != 0 {
        let (len, n) = uvarint(&blob[HEADER_LEN..]).ok_or(Defect::BadLength)?;
        if len > MAX_VERSION_LEN {
            return Err(Defect::Implausible { len }.into());
        }
        let start = HEADER_LEN + n;
        let bytes = blob
            .get(start..start + len as usize)
            .ok_or(Defect::PastBlob)?;
        return version_str(bytes);
    }
    if ptr_size != 4 && ptr_size != 8 {
        return Err(Defect::PointerSize { ptr_size }.into());
    }
    let word = |b: &[u8]| -> Option<u64> {
        let b = b.get(..ptr_size)?;
        let mut a = [0u8; 8];
        if flags & FLAG_BIG_ENDIAN != 0 {
            a[8 - ptr_size..].copy_from_slice(b);
            Some(u64::from_be_bytes(a))
        } else {
            a[..ptr_size].copy_from_slice(b);
            Some(u64::from_le_bytes(a))
        }
    };
    let unreadable = |what| Defect::Unreadable { what };
    let header_ptr = word(&blob[16..]).ok_or_else(|| unreadable("version pointer"))?;
    let header = read(header_ptr, 2 * ptr_size).ok_or_else(|| unreadable("version header"))?;
    let data = word(header).ok_or_else(|| unreadable("version data pointer"))?;
    let len = word(&header[ptr_size..]).ok_or_else(|| unreadable("version length"))?;
    if len > MAX_VERSION_LEN {
        return Err(Defect::Implausible { len }.into());
    }
    let bytes = read(data, len as usize).ok_or_else(|| unreadable("version string"))?;
    version_str(bytes)
}

/// Bytes of each sentinel around the module info.
const MODINFO_SENTINEL: usize = 16;
/// Longer is not module info (Traefik's is about 30 KiB).
const MAX_MODINFO_LEN: u64 = 1 << 22;

/// The module lines of a Go ≥ 1.18 blob (strings inline), without their framing; `None`
/// for the older format, a binary built outside a module, or a damaged blob.
pub fn module_info(blob: &[u8]) -> Option<String> {
    if blob.len() < HEADER_LEN || &blob[..MAGIC.len()] != MAGIC || blob[15] & FLAG_INLINE == 0 {
        return None;
    }
    let (vlen, n) = uvarint(&blob[HEADER_LEN..])?;
    let at = HEADER_LEN
        .checked_add(n)?
        .checked_add(usize::try_from(vlen).ok()?)?;
    let (mlen, n) = uvarint(blob.get(at..)?)?;
    if mlen > MAX_MODINFO_LEN {
        return None;
    }
    let start = at.checked_add(n)?;
    let framed = blob.get(start..start.checked_add(usize::try_from(mlen).ok()?)?)?;
    // Framing: a sentinel, the lines (ending in a newline), a sentinel.
    if framed.len() <= 2 * MODINFO_SENTINEL || framed[framed.len() - MODINFO_SENTINEL - 1] != b'\n'
    {
        return None;
    }
    let lines = &framed[MODINFO_SENTINEL..framed.len() - MODINFO_SENTINEL];
    String::from_utf8(lines.to_vec()).ok()
}

/// The version of module `path` the binary was built with: its `dep` line, or the `=>`
/// line that replaces it (`None` when the replacement is a local directory, which has no
/// version, or when the module is not a dependency).
pub fn dependency_version<'a>(module_info: &'a str, path: &str) -> Option<&'a str> {
    let mut lines = module_info.lines().peekable();
    while let Some(line) = lines.next() {
        let mut cols = line.split('\t');
        if cols.next() != Some("dep") || cols.next() != Some(path) {
            continue;
        }
        let version = cols.next()?;
        return match lines.peek().map(|l| l.split('\t').collect::<Vec<_>>()) {
            Some(r) if r.first() == Some(&"=>") => r.get(2).copied().filter(|v| !v.is_empty()),
            _ => Some(version),
        };
    }
    None
}

/// `go1.26.9` → (1, 26); `None` for development builds (`devel ...`).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ptr_size: u8, flags: u8) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(ptr_size);
        b.push(flags);
        b.resize(HEADER_LEN, 0);
        b
    }

    #[test]
    fn inline_format() {
        let mut b = header(8, FLAG_INLINE);
        b.push(9);
        b.extend_from_slice(b"go1.26.9\n");
        b[HEADER_LEN] = 8;
        assert_eq!(version(&b, |_, _| None).unwrap(), "go1.26.9");
    }

    #[test]
    fn pointer_format_little_and_big_endian() {
        // Memory: a string header at 0x1000 pointing at "go1.17.13" at 0x2000.
        let text = b"go1.17.13";
        for (flags, to_bytes) in [
            (0u8, u64::to_le_bytes as fn(u64) -> [u8; 8]),
            (FLAG_BIG_ENDIAN, u64::to_be_bytes),
        ] {
            let mut string_header = to_bytes(0x2000).to_vec();
            string_header.extend_from_slice(&to_bytes(text.len() as u64));
            let mut b = header(8, flags);
            b[16..24].copy_from_slice(&to_bytes(0x1000));
            let got = version(&b, |addr, len| match addr {
                0x1000 => string_header.get(..len),
                0x2000 => text.get(..len),
                _ => None,
            });
            assert_eq!(got.unwrap(), "go1.17.13");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(version(b"nothing here", |_, _| None).is_err());
        let b = header(8, 0);
        assert!(version(&b, |_, _| None).is_err());
        let mut b = header(8, FLAG_INLINE);
        b.push(3);
        b.extend_from_slice(b"xyz");
        assert!(version(&b, |_, _| None).is_err());
    }

    fn framed(lines: &str) -> Vec<u8> {
        let mut b = header(8, FLAG_INLINE);
        b.push(8);
        b.extend_from_slice(b"go1.22.4");
        let body = [
            &[0xaa; MODINFO_SENTINEL][..],
            lines.as_bytes(),
            &[0xbb; MODINFO_SENTINEL],
        ]
        .concat();
        let mut len = body.len();
        while len >= 0x80 {
            b.push((len as u8) | 0x80);
            len >>= 7;
        }
        b.push(len as u8);
        b.extend_from_slice(&body);
        b
    }

    #[test]
    fn module_lines_and_dependency_versions() {
        let lines = "path\tx\nmod\tx\t(devel)\t\n\
            dep\tgolang.org/x/net\tv0.26.0\th1:abc=\n\
            dep\tgithub.com/a/b\tv1.0.0\th1:def=\n=>\tgithub.com/c/b\tv1.2.0\th1:ghi=\n\
            dep\tgithub.com/local\tv0.1.0\n=>\t../local\t\n";
        let info = module_info(&framed(lines)).unwrap();
        assert_eq!(info, lines);
        assert_eq!(
            dependency_version(&info, "golang.org/x/net"),
            Some("v0.26.0")
        );
        assert_eq!(dependency_version(&info, "github.com/a/b"), Some("v1.2.0"));
        assert_eq!(dependency_version(&info, "github.com/local"), None);
        assert_eq!(dependency_version(&info, "golang.org/x/net/http2"), None);
        // No framing newline: not module info.
        let mut b = framed(lines);
        let at = b.len() - MODINFO_SENTINEL - 1;
        b[at] = b'x';
        assert_eq!(module_info(&b), None);
        assert_eq!(module_info(&header(8, 0)), None);
    }

    #[test]
    fn versions() {
        assert_eq!(major_minor("go1.26.9"), Some((1, 26)));
        assert_eq!(major_minor("go1.19"), Some((1, 19)));
        assert_eq!(major_minor("go1.21rc2"), Some((1, 21)));
        assert_eq!(major_minor("devel go1.22-abc"), None);
    }
}
