//! Why a Go binary could not be resolved, down to the defect of its function table or
//! build info.

use std::{io, path::PathBuf};

/// Why a binary's functions (or its Go version) could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum GoBinError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not an ELF file: {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("{} is {len} bytes, more than the {max} a binary may have here", path.display())]
    TooLarge { path: PathBuf, len: u64, max: u64 },
    #[error("{} shrank while it was being read (the process exited and its file changed)", path.display())]
    Shrank { path: PathBuf },
    #[error("cannot guard the mapping of {} against the file shrinking: {max} binaries are being read already", path.display())]
    Unguarded { path: PathBuf, max: usize },
    #[error("not an ELF file: {source}")]
    Unparsable {
        #[source]
        source: object::Error,
    },
    #[error("not an ELF file: {format:?} file")]
    NotElf { format: object::BinaryFormat },
    #[error("not an x86-64 Go binary: {architecture:?}")]
    NotAmd64 { architecture: object::Architecture },
    #[error("not an x86-64 Go binary: pclntab pointer size {ptr_size}")]
    PointerSize { ptr_size: u8 },
    #[error("not an x86-64 Go binary: pclntab instruction quantum {quantum}")]
    InstructionQuantum { quantum: u8 },
    #[error(
        "no Go function table (.gopclntab) found: not a Go binary, or one without section headers"
    )]
    NoPclntab,
    #[error("built by Go {versions}, whose function table layout is not supported (Go 1.18 or later is)")]
    UnsupportedGo { versions: &'static str },
    #[error("malformed Go function table: {defect}")]
    BadPclntab { defect: PclntabDefect },
    #[error("malformed Go build info: {defect}")]
    BadBuildInfo { defect: BuildInfoDefect },
    #[error("cannot tell where the text starts: the pcHeader has no textStart and neither runtime.moduledata nor a .text section was found")]
    NoTextStart,
    #[error("implausible text start {text_start:#x}: the text would end past the address space")]
    ImplausibleTextStart { text_start: u64 },
    #[error("function {name} is not in the binary")]
    FunctionMissing { name: String },
    #[error("function {name} at {address:#x} is not inside a loaded file segment")]
    NotInFile { name: String, address: u64 },
    #[error("undecodable instruction at {address:#x}")]
    Undecodable { address: u64 },
    #[error("function {name} has no RET instruction")]
    NoReturn { name: String },
    #[error("function {name} is {size} bytes long, more than the {max} decoded here")]
    FunctionTooLarge { name: String, size: u64, max: u64 },
}

impl From<PclntabDefect> for GoBinError {
    fn from(defect: PclntabDefect) -> Self {
        GoBinError::BadPclntab { defect }
    }
}

impl From<BuildInfoDefect> for GoBinError {
    fn from(defect: BuildInfoDefect) -> Self {
        GoBinError::BadBuildInfo { defect }
    }
}

/// What is wrong with a function table (`.gopclntab`) of a supported layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PclntabDefect {
    #[error("shorter than its magic")]
    NoMagic,
    #[error("unknown magic {magic:#x}")]
    UnknownMagic { magic: u32 },
    #[error("shorter than its header")]
    ShortHeader,
    #[error("{table} offset {offset:#x} is outside the table")]
    TableOutside { table: &'static str, offset: u64 },
    #[error("function count does not fit")]
    CountTooLarge,
    #[error("function count overflows")]
    CountOverflows,
    #[error("{nfunc} functions do not fit the table")]
    FunctionsDoNotFit { nfunc: usize },
    #[error("function {func} is past the table")]
    PastTable { func: usize },
    #[error("function {func} record is outside the table")]
    RecordOutside { func: usize },
    #[error("function {func}: table entry {table:#x} and record entry {record:#x} disagree")]
    EntriesDisagree {
        func: usize,
        table: u32,
        record: u32,
    },
    #[error("function {func} name is outside the table")]
    NameOutside { func: usize },
    #[error("function {func} name is not terminated (within 16 KiB)")]
    NameUnterminated { func: usize },
    #[error("{nfunc} functions, more than the {max} a binary may have here")]
    TooManyFunctions { nfunc: usize, max: usize },
    #[error("the table has no closing entry")]
    NoTableEnd,
    #[error("function {func} has no end entry")]
    NoEnd { func: usize },
    #[error("function {func} ends ({end:#x}) before it starts ({entry:#x})")]
    EndsBeforeStart { func: usize, entry: u32, end: u32 },
}

/// What is wrong with a binary's `.go.buildinfo` blob.
#[derive(Debug, thiserror::Error)]
pub enum BuildInfoDefect {
    #[error("{source}")]
    Section {
        #[source]
        source: object::Error,
    },
    #[error("no .go.buildinfo")]
    Missing,
    #[error("no build-info magic")]
    NoMagic,
    #[error("bad version length")]
    BadLength,
    #[error("version length {len} is implausible")]
    Implausible { len: u64 },
    #[error("version runs past the blob")]
    PastBlob,
    #[error("pointer size {ptr_size}")]
    PointerSize { ptr_size: usize },
    #[error("{what} is not in the binary")]
    Unreadable { what: &'static str },
    #[error("version is not UTF-8")]
    NotUtf8,
    #[error("version {version:?} does not start with \"go\"")]
    NotGo { version: String },
}
