//! Go's function table (`.gopclntab`), the only symbol information a binary built with
//! `-ldflags=-s -w` keeps: the runtime needs it for stack traces and garbage collection,
//! so no Go binary can be stripped of it.
//!
//! Supported: the layouts of Go 1.18 and later (pcHeader magic `0xfffffff0` for 1.18–1.19,
//! `0xfffffff1` for 1.20 onwards, including 1.26), which share one shape:
//!
//! ```text
//! pcHeader: magic u32, pad u8 ×2, minLC u8, ptrSize u8, nfunc int, nfiles uint,
//!           textStart uintptr, funcnameOffset, cuOffset, filetabOffset, pctabOffset,
//!           pclnOffset (uintptr each, relative to the header)
//! pclntable at pclnOffset: ftab = (nfunc + 1) × {entryOff u32, funcOff u32}, the last
//!           entry being the end of the text; funcOff points at a _func in pclntable whose
//!           first fields are {entryOff u32, nameOff i32}; nameOff indexes funcnametab.
//! ```
//!
//! Entry offsets are relative to the start of the text. Go 1.26 writes 0 into
//! `textStart` (the runtime takes the text base from `runtime.moduledata.text`, which the
//! linker now emits in its own `.go.module` section), so the caller supplies the base when
//! the header has none; see [`super::GoBinary`]. Go 1.16/1.17 (magic `0xfffffffa`, a
//! different header without `textStart` and with pointer-sized ftab entries) and older
//! layouts are reported as unsupported, never guessed at.

use super::{GoBinError, PclntabDefect as Defect};

pub const MAGIC_GO118: u32 = 0xffff_fff0;
pub const MAGIC_GO120: u32 = 0xffff_fff1;
const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO12: u32 = 0xffff_fffb;

/// Size of the pcHeader on 64-bit targets: 8 bytes of magic and sizes, then 8 words.
const HEADER_LEN: usize = 8 + 8 * 8;
#[cfg(test)]
pub(super) const HEADER_LEN_FOR_TESTS: usize = HEADER_LEN;

/// Most functions a table may hold: Traefik 3.7.15 has 206,347; a crafted table of
/// millions is refused before anything scans it (issue 16, item 2).
pub const MAX_FUNCTIONS: usize = 2_000_000;
/// Longest function name read: Go's longest (generic instantiations) are a few KiB; a name
/// with no terminator within this is a defect, found after reading this much at most.
pub const MAX_NAME_LEN: usize = 16 * 1024;

/// The function table of one binary, borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Pclntab<'a> {
    /// From the pcHeader to the end of the containing section.
    data: &'a [u8],
    nfunc: usize,
    text_start: u64,
    funcname: usize,
    pcln: usize,
    magic: u32,
}

/// A function's place in the text, relative to the text start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncRange {
    pub entry_off: u64,
    /// Up to the next function's entry (so it includes alignment padding).
    pub size: u64,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Whether `data` starts with a pcHeader of a supported layout (cheap; used to find the
/// table in binaries without a `.gopclntab` section header).
pub fn looks_like_header(data: &[u8]) -> bool {
    matches!(u32_at(data, 0), Some(MAGIC_GO118 | MAGIC_GO120))
        && data.get(4..8) == Some(&[0, 0, 1, 8][..])
}

impl<'a> Pclntab<'a> {
    /// Parses the header at the start of `data` and checks that every table it points to
    /// lies inside `data`.
    pub fn parse(data: &'a [u8]) -> Result<Pclntab<'a>, GoBinError> {
        let magic = u32_at(data, 0).ok_or(Defect::NoMagic)?;
        match magic {
            MAGIC_GO118 | MAGIC_GO120 => {}
            MAGIC_GO116 => {
                return Err(GoBinError::UnsupportedGo {
                    versions: "1.16 or 1.17",
                })
            }
            MAGIC_GO12 => {
                return Err(GoBinError::UnsupportedGo {
                    versions: "1.2 to 1.15",
                })
            }
            magic => return Err(Defect::UnknownMagic { magic }.into()),
        }
        if data.len() < HEADER_LEN {
            return Err(Defect::ShortHeader.into());
        }
        let (min_lc, ptr_size) = (data[6], data[7]);
        if ptr_size != 8 {
            return Err(GoBinError::PointerSize { ptr_size });
        }
        if min_lc != 1 {
            return Err(GoBinError::InstructionQuantum { quantum: min_lc });
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).unwrap_or(0);
        let to_off = |offset: u64, table: &'static str| -> Result<usize, Defect> {
            usize::try_from(offset)
                .ok()
                .filter(|&o| o < data.len())
                .ok_or(Defect::TableOutside { table, offset })
        };
        let nfunc = usize::try_from(word(0)).map_err(|_| Defect::CountTooLarge)?;
        let text_start = word(2);
        let funcname = to_off(word(3), "funcname")?;
        let pcln = to_off(word(7), "pcln")?;
        let ftab_len = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or(Defect::CountOverflows)?;
        if nfunc > MAX_FUNCTIONS {
            return Err(Defect::TooManyFunctions {
                nfunc,
                max: MAX_FUNCTIONS,
            }
            .into());
        }
        if nfunc == 0 || pcln.saturating_add(ftab_len) > data.len() {
            return Err(Defect::FunctionsDoNotFit { nfunc }.into());
        }
        Ok(Pclntab {
            data,
            nfunc,
            text_start,
            funcname,
            pcln,
            magic,
        })
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// The pcHeader's `textStart`: `None` when zero (Go 1.26 and later).
    pub fn header_text_start(&self) -> Option<u64> {
        (self.text_start != 0).then_some(self.text_start)
    }

    /// "1.18-1.19" or "1.20+", for logs.
    pub fn layout(&self) -> &'static str {
        if self.magic == MAGIC_GO118 {
            "go1.18-1.19"
        } else {
            "go1.20+"
        }
    }

    /// Offset of the function table inside the pcHeader's data (`moduledata.ftab` points
    /// there).
    pub fn ftab_offset(&self) -> usize {
        self.pcln
    }

    /// Offset of the function name table (`moduledata.funcnametab` points there).
    pub fn funcname_offset(&self) -> usize {
        self.funcname
    }

    fn ftab(&self, i: usize) -> Option<(u32, u32)> {
        let at = self.pcln + 8 * i;
        Some((u32_at(self.data, at)?, u32_at(self.data, at + 4)?))
    }

    /// Where function `i`'s name starts, or an error for a table that points outside
    /// itself.
    fn name_start(&self, i: usize) -> Result<usize, GoBinError> {
        let func = i;
        let (entry, funcoff) = self.ftab(i).ok_or(Defect::PastTable { func })?;
        let record = self.pcln.saturating_add(funcoff as usize);
        let (f_entry, name_off) = u32_at(self.data, record)
            .zip(u32_at(self.data, record.saturating_add(4)))
            .ok_or(Defect::RecordOutside { func })?;
        if f_entry != entry {
            return Err(Defect::EntriesDisagree {
                func,
                table: entry,
                record: f_entry,
            }
            .into());
        }
        Ok(self
            .funcname
            .checked_add(name_off as usize)
            .filter(|&s| s < self.data.len())
            .ok_or(Defect::NameOutside { func })?)
    }

    /// The name of function `i` (reading [`MAX_NAME_LEN`] bytes at most), or an error
    /// for a table that points outside itself.
    pub fn name(&self, i: usize) -> Result<&'a [u8], GoBinError> {
        let start = self.name_start(i)?;
        let rest = &self.data[start..];
        let rest = &rest[..rest.len().min(MAX_NAME_LEN + 1)];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Defect::NameUnterminated { func: i })?;
        Ok(&rest[..end])
    }

    /// Function `i`'s place in the text.
    pub fn range(&self, i: usize) -> Result<FuncRange, GoBinError> {
        let func = i;
        let (entry, _) = self.ftab(i).ok_or(Defect::PastTable { func })?;
        let (end, _) = self.ftab(i + 1).ok_or(Defect::NoEnd { func })?;
        if end < entry {
            return Err(Defect::EndsBeforeStart { func, entry, end }.into());
        }
        Ok(FuncRange {
            entry_off: u64::from(entry),
            size: u64::from(end - entry),
        })
    }

    /// The first function with exactly this name. (The table names an assembly
    /// function's ABI0 body and its ABIInternal wrapper alike; the Go methods resolved
    /// here have one entry each.)
    ///
    /// Each entry costs the length of `name` at most, whatever the table's names are:
    /// a table whose entries all share one huge name is as quick to search as any.
    pub fn find(&self, name: &str) -> Result<Option<FuncRange>, GoBinError> {
        let wanted = name.as_bytes();
        for i in 0..self.nfunc {
            let start = self.name_start(i)?;
            let here = &self.data[start..];
            if here.starts_with(wanted) && here.get(wanted.len()) == Some(&0) {
                return self.range(i).map(Some);
            }
        }
        Ok(None)
    }

    /// The function whose range holds text offset `off` (entries are in text order).
    pub fn containing(&self, off: u64) -> Result<Option<usize>, GoBinError> {
        let entry = |i: usize| {
            self.ftab(i)
                .map(|(e, _)| u64::from(e))
                .ok_or_else(|| GoBinError::from(Defect::PastTable { func: i }))
        };
        if off < entry(0)? || off >= entry(self.nfunc)? {
            return Ok(None);
        }
        // The last function starting at or before `off`.
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if entry(mid)? <= off {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(Some(lo))
    }

    /// Offset of the end of the text (the table's closing entry).
    pub fn text_len(&self) -> Result<u64, GoBinError> {
        self.ftab(self.nfunc)
            .map(|(e, _)| u64::from(e))
            .ok_or_else(|| GoBinError::from(Defect::NoTableEnd))
    }

    /// Every function as (name, range), in text order.
    pub fn functions(
        &self,
    ) -> impl Iterator<Item = Result<(&'a [u8], FuncRange), GoBinError>> + '_ {
        (0..self.nfunc).map(|i| Ok((self.name(i)?, self.range(i)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made table: two functions, "a.f" at 0x10 (size 0x20) and "b.g" at 0x30
    /// (ending at 0x38).
    fn table(magic: u32, text_start: u64) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&magic.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        let funcname = HEADER_LEN as u64;
        let names = b"a.f\0b.g\0";
        let pcln = funcname + names.len() as u64;
        for w in [2u64, 1, text_start, funcname, 0, 0, 0, pcln] {
            t.extend_from_slice(&w.to_le_bytes());
        }
        t.extend_from_slice(names);
        // ftab: 3 entries (2 + end), then two _func records of 8 bytes.
        let funcs = 3u32 * 8;
        for (entry, funcoff) in [(0x10u32, funcs), (0x30, funcs + 8), (0x38, 0)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&funcoff.to_le_bytes());
        }
        for (entry, name) in [(0x10u32, 0u32), (0x30, 4)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name.to_le_bytes());
        }
        t
    }

    #[test]
    fn finds_functions_in_both_layouts() {
        for (magic, layout) in [(MAGIC_GO118, "go1.18-1.19"), (MAGIC_GO120, "go1.20+")] {
            let t = table(magic, 0x401000);
            let p = Pclntab::parse(&t).unwrap();
            assert_eq!(p.layout(), layout);
            assert_eq!(p.len(), 2);
            assert_eq!(p.header_text_start(), Some(0x401000));
            assert_eq!(
                p.find("b.g").unwrap(),
                Some(FuncRange {
                    entry_off: 0x30,
                    size: 8
                })
            );
            assert_eq!(
                p.find("a.f").unwrap(),
                Some(FuncRange {
                    entry_off: 0x10,
                    size: 0x20
                })
            );
            assert_eq!(p.find("a.").unwrap(), None);
            assert_eq!(p.containing(0x10).unwrap(), Some(0));
            assert_eq!(p.containing(0x2f).unwrap(), Some(0));
            assert_eq!(p.containing(0x37).unwrap(), Some(1));
            assert_eq!(p.containing(0x38).unwrap(), None);
            assert_eq!(p.containing(0xf).unwrap(), None);
            assert_eq!(p.text_len().unwrap(), 0x38);
        }
    }

    #[test]
    fn zero_text_start_is_reported_as_absent() {
        let t = table(MAGIC_GO120, 0);
        assert_eq!(Pclntab::parse(&t).unwrap().header_text_start(), None);
    }

    #[test]
    fn rejects_other_layouts_and_damage() {
        let mut t = table(MAGIC_GO116, 0);
        assert!(matches!(
            Pclntab::parse(&t),
            Err(GoBinError::UnsupportedGo {
                versions: "1.16 or 1.17"
            })
        ));
        t[..4].copy_from_slice(&0x1234u32.to_le_bytes());
        assert!(matches!(
            Pclntab::parse(&t),
            Err(GoBinError::BadPclntab {
                defect: Defect::UnknownMagic { magic: 0x1234 }
            })
        ));
        let t = table(MAGIC_GO120, 0);
        assert!(Pclntab::parse(&t[..40]).is_err());
        // A table cut before its function records: names cannot be read, and that is an
        // error, not a miss.
        let cut = &t[..t.len() - 10];
        let p = Pclntab::parse(cut).unwrap();
        assert!(p.find("b.g").is_err());
        let mut t = table(MAGIC_GO120, 0);
        t[7] = 4;
        assert!(matches!(
            Pclntab::parse(&t),
            Err(GoBinError::PointerSize { ptr_size: 4 })
        ));
    }
}
