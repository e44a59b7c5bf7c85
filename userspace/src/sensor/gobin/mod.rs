//! Resolution of Go functions in a (possibly stripped) Go binary on disk: where a
//! function starts, where it returns, and which Go version built it. Used to place
//! uprobes on `crypto/tls.(*Conn)` methods; pure file parsing, no aya, no kernel.
//!
//! Supported: ELF x86-64 executables built by Go 1.18 or later, with or without symbols
//! (`-ldflags=-s -w` removes `.symtab` and DWARF, never the function table). The table is
//! found by its `.gopclntab` section header, or, where a build has no such header (PIE
//! and externally linked binaries keep it in `.data.rel.ro.gopclntab`; tested with Go
//! 1.19 `-buildmode=pie`), by looking for a pcHeader at 16-byte boundaries of the
//! read-only sections. Binaries with no section headers at all are not supported (the
//! text base would have no source).

pub mod buildinfo;
mod error;
mod mapped;
pub mod pclntab;
pub mod retsites;
mod sigbus;

use std::path::Path;

use mapped::Mapped;

use object::{Object, ObjectSection, ObjectSegment};

pub use error::{BuildInfoDefect, GoBinError, PclntabDefect};
use pclntab::{FuncRange, Pclntab};

/// A function resolved for uprobes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunction {
    pub name: String,
    /// Virtual address of the entry.
    pub address: u64,
    /// Bytes up to the next function.
    pub size: u64,
    /// File offset of the entry.
    pub entry_offset: u64,
    /// File offset of the first instruction after Go's stack-bound check, where an entry
    /// uprobe is cheapest (see [`retsites::after_stack_check`]); the entry when the
    /// prologue has another shape.
    pub probe_offset: u64,
    /// File offsets of every `RET` instruction.
    pub ret_offsets: Vec<u64>,
}

/// One Go binary, mapped and with its function table located.
pub struct GoBinary {
    map: Mapped,
    /// Byte range of the pcHeader's data in the file.
    pclntab: (usize, usize),
    text_start: u64,
    /// Where the text base came from, for logs.
    pub text_start_source: &'static str,
    pub go_version: Option<String>,
    /// The build info's module lines (`go version -m`: `path`, `mod`, `dep`, `=>`,
    /// `build`), when the binary has them.
    pub module_info: Option<String>,
    /// `runtime.moduledata.types..etypes`, when moduledata was found with absolute
    /// pointers (not in PIE builds).
    types: Option<(u64, u64)>,
    /// Loadable segments: (vaddr, file offset, file size).
    segments: Vec<(u64, u64, u64)>,
}

impl std::fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("go_version", &self.go_version)
            .field("text_start", &format_args!("{:#x}", self.text_start))
            .field("text_start_source", &self.text_start_source)
            .finish_non_exhaustive()
    }
}

fn u64_le(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Sections that may hold the function table when there is no `.gopclntab` header.
fn read_only_data(name: &str) -> bool {
    name == ".rodata" || name.starts_with(".data.rel.ro") || name == ".gopclntab"
}

/// Offsets in `runtime.moduledata` (the same from Go 1.16 to 1.26): `pcHeader` at 0,
/// `funcnametab` slice at 8, ..., `ftab` slice at 128, `text` at 176.
const MD_FUNCNAMETAB: usize = 8;
const MD_FTAB: usize = 128;
const MD_TEXT: usize = 176;
/// `types` and `etypes`: the runtime type descriptors (`nameOff`/`typeOff` values are
/// relative to `types`). Same offsets from Go 1.20 to 1.26 (`runtime/symtab.go`).
const MD_TYPES: usize = 296;
const MD_ETYPES: usize = 304;

/// Longest function whose code is decoded for its RET sites and prologue: 4× the
/// largest function of any Traefik release tested (989 KB in 3.0.4, 336 KB in 3.7.15,
/// read from their function tables); the functions probed are a few KB.
pub const MAX_FUNCTION_LEN: u64 = 4 << 20;

impl GoBinary {
    pub fn open(path: &Path) -> Result<GoBinary, GoBinError> {
        let map = Mapped::open(path)?;
        let data = map.bytes();
        let file = object::File::parse(data).map_err(|source| GoBinError::Unparsable { source })?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(GoBinError::NotElf {
                format: file.format(),
            });
        }
        if file.architecture() != object::Architecture::X86_64 {
            return Err(GoBinError::NotAmd64 {
                architecture: file.architecture(),
            });
        }
        let segments: Vec<(u64, u64, u64)> = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (s.address(), off, size)
            })
            .collect();

        let (pcl_vaddr, pclntab) = find_pclntab(&file, data.len())?;
        let table = Pclntab::parse(&data[pclntab.0..pclntab.1])?;

        let moduledata = find_moduledata(&file, pcl_vaddr, &table);
        let md_word = |off: usize| {
            moduledata
                .and_then(|md| u64_le(md, off))
                .filter(|&v| v != 0)
        };
        let types = md_word(MD_TYPES)
            .zip(md_word(MD_ETYPES))
            .filter(|(start, end)| start < end);
        let text_section = file.section_by_name(".text").map(|s| s.address());
        let (text_start, text_start_source) = match (table.header_text_start(), md_word(MD_TEXT)) {
            (Some(t), _) => (t, "pcHeader.textStart"),
            (None, Some(t)) => (t, "runtime.moduledata.text"),
            (None, None) => (
                text_section.ok_or(GoBinError::NoTextStart)?,
                ".text section",
            ),
        };

        // Entry addresses are text_start plus a u32 offset: refuse a base that would wrap.
        if text_start.checked_add(u64::from(u32::MAX)).is_none() {
            return Err(GoBinError::ImplausibleTextStart { text_start });
        }

        let (go_version, module_info) = match build_info(&file, data, &segments) {
            Ok((v, m)) => (Some(v), m),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "no Go version in the binary");
                (None, None)
            }
        };
        Ok(GoBinary {
            pclntab,
            text_start,
            text_start_source,
            go_version,
            module_info,
            types,
            segments,
            map,
        })
    }

    fn table(&self) -> Result<Pclntab<'_>, GoBinError> {
        Pclntab::parse(&self.map.bytes()[self.pclntab.0..self.pclntab.1])
    }

    /// Virtual address where function entry offsets start.
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// Number of functions in the table.
    #[cfg(test)]
    pub(crate) fn function_count(&self) -> Result<usize, GoBinError> {
        Ok(self.table()?.len())
    }

    /// Every function name with its entry address, in text order.
    pub fn functions(&self) -> Result<Vec<(String, u64)>, GoBinError> {
        let table = self.table()?;
        table
            .functions()
            .map(|f| {
                f.map(|(name, r)| {
                    (
                        String::from_utf8_lossy(name).into_owned(),
                        self.text_start + r.entry_off,
                    )
                })
            })
            .collect()
    }

    /// The function holding virtual address `address`: (name, entry address, size).
    pub fn function_at(&self, address: u64) -> Result<Option<(String, u64, u64)>, GoBinError> {
        let Some(off) = address.checked_sub(self.text_start) else {
            return Ok(None);
        };
        let table = self.table()?;
        let Some(i) = table.containing(off)? else {
            return Ok(None);
        };
        let r = table.range(i)?;
        let name = String::from_utf8_lossy(table.name(i)?).into_owned();
        Ok(Some((name, self.text_start + r.entry_off, r.size)))
    }

    /// The whole Go text as mapped: (start address, bytes).
    pub fn text(&self) -> Result<(u64, &[u8]), GoBinError> {
        let len = self.table()?.text_len()?;
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|len| self.read(self.text_start, len))
            .ok_or_else(|| GoBinError::NotInFile {
                name: "the text".into(),
                address: self.text_start,
            })?;
        Ok((self.text_start, bytes))
    }

    /// `Err` when the file shrank while it was mapped: everything read from this binary
    /// may be wrong and must be thrown away (see [`sigbus`]).
    pub fn intact(&self) -> Result<(), GoBinError> {
        self.map.intact()
    }

    /// `runtime.moduledata`'s `[types, etypes)`: where the runtime type descriptors are.
    pub fn types_range(&self) -> Option<(u64, u64)> {
        self.types
    }

    /// `len` bytes of the file mapped at virtual address `address`, if a loadable
    /// segment holds them all.
    pub fn read(&self, address: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(self.file_offset(address, len as u64)?).ok()?;
        self.map.bytes().get(off..off.checked_add(len)?)
    }

    /// The file offset of virtual address `address` (`len` bytes from it in the file).
    pub fn file_offset(&self, address: u64, len: u64) -> Option<u64> {
        self.segments.iter().find_map(|&(vaddr, off, size)| {
            let rel = address.checked_sub(vaddr)?;
            // A damaged program header's offset may wrap.
            (rel.checked_add(len)? <= size).then(|| off.checked_add(rel))?
        })
    }

    /// Entry and RET sites of `name`.
    pub fn function(&self, name: &str) -> Result<GoFunction, GoBinError> {
        let FuncRange { entry_off, size } =
            self.table()?
                .find(name)?
                .ok_or_else(|| GoBinError::FunctionMissing {
                    name: name.to_owned(),
                })?;
        if size > MAX_FUNCTION_LEN {
            return Err(GoBinError::FunctionTooLarge {
                name: name.to_owned(),
                size,
                max: MAX_FUNCTION_LEN,
            });
        }
        let address = self.text_start + entry_off;
        let not_in_file = || GoBinError::NotInFile {
            name: name.to_owned(),
            address,
        };
        let entry_offset = self.file_offset(address, size).ok_or_else(not_in_file)?;
        let start = usize::try_from(entry_offset).map_err(|_| not_in_file())?;
        let code = self
            .map
            .bytes()
            .get(start..start + size as usize)
            .ok_or_else(not_in_file)?;
        let rets = retsites::ret_sites(code, address)?;
        if rets.is_empty() {
            return Err(GoBinError::NoReturn {
                name: name.to_owned(),
            });
        }
        let ret_offsets = rets
            .into_iter()
            .map(|a| a - address + entry_offset)
            .collect();
        let probe_offset = retsites::after_stack_check(code, address) - address + entry_offset;
        Ok(GoFunction {
            name: name.to_owned(),
            address,
            size,
            entry_offset,
            probe_offset,
            ret_offsets,
        })
    }
}

/// `file_len`: a section header may claim bytes past the end of the file.
fn find_pclntab(
    file: &object::File<'_>,
    file_len: usize,
) -> Result<(u64, (usize, usize)), GoBinError> {
    let range = |s: &object::Section<'_, '_>, skip: u64| -> Option<(usize, usize)> {
        let (off, size) = s.file_range()?;
        let start = usize::try_from(off.checked_add(skip)?).ok()?;
        let end = usize::try_from(off.checked_add(size)?).ok()?;
        (start < end && end <= file_len).then_some((start, end))
    };
    if let Some(s) = file.section_by_name(".gopclntab") {
        if let Some(r) = range(&s, 0) {
            return Ok((s.address(), r));
        }
    }
    for s in file.sections() {
        let Ok(name) = s.name() else { continue };
        if !read_only_data(name) {
            continue;
        }
        let Ok(data) = s.data() else { continue };
        let mut at = 0usize;
        while at + 8 <= data.len() {
            if pclntab::looks_like_header(&data[at..]) && Pclntab::parse(&data[at..]).is_ok() {
                if let (Some(r), Some(vaddr)) =
                    (range(&s, at as u64), s.address().checked_add(at as u64))
                {
                    return Ok((vaddr, r));
                }
            }
            at += 16;
        }
    }
    Err(GoBinError::NoPclntab)
}

/// `runtime.moduledata`'s bytes (its `text` is the runtime's own text base). Go 1.26 puts moduledata in a
/// `.go.module` section; earlier ones keep it in `.noptrdata` (or `.data.rel.ro` in PIE
/// builds, where the pointers are relocations and read as 0, so this yields nothing).
/// A candidate must point at this pcHeader, at its funcnametab and at its ftab.
fn find_moduledata<'d>(
    file: &object::File<'d>,
    pcl_vaddr: u64,
    table: &Pclntab<'_>,
) -> Option<&'d [u8]> {
    // Addresses from section headers: a damaged one may wrap.
    let funcnametab = pcl_vaddr.checked_add(table.funcname_offset() as u64)?;
    let ftab = pcl_vaddr.checked_add(table.ftab_offset() as u64)?;
    for name in [".go.module", ".noptrdata", ".data"] {
        let Some(s) = file.section_by_name(name) else {
            continue;
        };
        let Ok(d) = s.data() else { continue };
        let mut at = 0usize;
        while at + MD_ETYPES + 8 <= d.len() {
            if u64_le(d, at) == Some(pcl_vaddr)
                && u64_le(d, at + MD_FUNCNAMETAB) == Some(funcnametab)
                && u64_le(d, at + MD_FTAB) == Some(ftab)
            {
                return Some(&d[at..]);
            }
            at += 8;
        }
    }
    None
}

/// The Go version and, when present, the module lines.
fn build_info(
    file: &object::File<'_>,
    data: &[u8],
    segments: &[(u64, u64, u64)],
) -> Result<(String, Option<String>), GoBinError> {
    let blob = match file.section_by_name(".go.buildinfo") {
        Some(s) => s
            .data()
            .map_err(|source| BuildInfoDefect::Section { source })?,
        None => {
            // Without a section header the blob is 16-byte aligned in a data segment.
            let at = data
                .chunks(16)
                .position(|c| c.starts_with(buildinfo::MAGIC))
                .ok_or(BuildInfoDefect::Missing)?;
            &data[at * 16..]
        }
    };
    let version = buildinfo::version(blob, |addr, len| {
        let off = segments.iter().find_map(|&(vaddr, off, size)| {
            let rel = addr.checked_sub(vaddr)?;
            (rel.checked_add(len as u64)? <= size).then(|| off.checked_add(rel))?
        })?;
        let off = usize::try_from(off).ok()?;
        data.get(off..off + len)
    })?;
    Ok((version, buildinfo::module_info(blob)))
}

#[cfg(test)]
mod fuzz_build;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod shrink_tests;
#[cfg(test)]
mod tests;
