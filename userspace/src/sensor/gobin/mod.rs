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
pub mod pclntab;
pub mod retsites;

use std::{fs::File, io, os::fd::AsRawFd, path::Path, ptr::NonNull};

use object::{Object, ObjectSection, ObjectSegment};

pub use error::{BuildInfoDefect, GoBinError, PclntabDefect};
use pclntab::{FuncRange, Pclntab};

/// A read-only private mapping of a whole file. Binaries are mapped instead of read:
/// Traefik is 185 MB, and resolution only touches its tables and a few functions.
struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; nothing aliases it mutably.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    fn open(path: &Path) -> Result<Mapped, GoBinError> {
        let io_err = |source| GoBinError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| GoBinError::Empty {
                path: path.to_owned(),
            })?;
        // SAFETY: a fresh mapping of an open fd, checked for failure. The files mapped
        // are executables of running processes, which the kernel refuses to open for
        // writing (ETXTBSY), so the bytes cannot change or shrink under the mapping.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io_err(io::Error::other("mmap returned NULL")))?;
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live PROT_READ mapping of `len` bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped; no borrow of it outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

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

        let (pcl_vaddr, pclntab) = find_pclntab(&file)?;
        let table = Pclntab::parse(&data[pclntab.0..pclntab.1])?;

        let moduledata = find_moduledata(&file, data, pcl_vaddr, &table);
        let text_section = file.section_by_name(".text").map(|s| s.address());
        let (text_start, text_start_source) = match (table.header_text_start(), moduledata) {
            (Some(t), _) => (t, "pcHeader.textStart"),
            (None, Some(t)) => (t, "runtime.moduledata.text"),
            (None, None) => (
                text_section.ok_or(GoBinError::NoTextStart)?,
                ".text section",
            ),
        };

        let go_version = match build_version(&file, data, &segments) {
            Ok(v) => Some(v),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "no Go version in the binary");
                None
            }
        };
        Ok(GoBinary {
            pclntab,
            text_start,
            text_start_source,
            go_version,
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
    pub fn function_count(&self) -> Result<usize, GoBinError> {
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

    fn file_offset(&self, address: u64, len: u64) -> Option<u64> {
        self.segments.iter().find_map(|&(vaddr, off, size)| {
            let rel = address.checked_sub(vaddr)?;
            (rel.checked_add(len)? <= size).then_some(off + rel)
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

fn find_pclntab(file: &object::File<'_>) -> Result<(u64, (usize, usize)), GoBinError> {
    let range = |s: &object::Section<'_, '_>, skip: u64| -> Option<(usize, usize)> {
        let (off, size) = s.file_range()?;
        let start = usize::try_from(off.checked_add(skip)?).ok()?;
        let end = usize::try_from(off.checked_add(size)?).ok()?;
        (start < end).then_some((start, end))
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
                if let Some(r) = range(&s, at as u64) {
                    return Ok((s.address() + at as u64, r));
                }
            }
            at += 16;
        }
    }
    Err(GoBinError::NoPclntab)
}

/// `runtime.moduledata.text`: the runtime's own text base. Go 1.26 puts moduledata in a
/// `.go.module` section; earlier ones keep it in `.noptrdata` (or `.data.rel.ro` in PIE
/// builds, where the pointers are relocations and read as 0, so this yields nothing).
/// A candidate must point at this pcHeader, at its funcnametab and at its ftab.
fn find_moduledata(
    file: &object::File<'_>,
    _data: &[u8],
    pcl_vaddr: u64,
    table: &Pclntab<'_>,
) -> Option<u64> {
    let funcnametab = pcl_vaddr + table.funcname_offset() as u64;
    let ftab = pcl_vaddr + table.ftab_offset() as u64;
    for name in [".go.module", ".noptrdata", ".data"] {
        let Some(s) = file.section_by_name(name) else {
            continue;
        };
        let Ok(d) = s.data() else { continue };
        let mut at = 0usize;
        while at + MD_TEXT + 8 <= d.len() {
            if u64_le(d, at) == Some(pcl_vaddr)
                && u64_le(d, at + MD_FUNCNAMETAB) == Some(funcnametab)
                && u64_le(d, at + MD_FTAB) == Some(ftab)
            {
                return u64_le(d, at + MD_TEXT).filter(|&t| t != 0);
            }
            at += 8;
        }
    }
    None
}

fn build_version(
    file: &object::File<'_>,
    data: &[u8],
    segments: &[(u64, u64, u64)],
) -> Result<String, GoBinError> {
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
    buildinfo::version(blob, |addr, len| {
        let off = segments.iter().find_map(|&(vaddr, off, size)| {
            let rel = addr.checked_sub(vaddr)?;
            (rel.checked_add(len as u64)? <= size).then_some(off + rel)
        })?;
        let off = usize::try_from(off).ok()?;
        data.get(off..off + len)
    })
}

#[cfg(test)]
mod tests;
