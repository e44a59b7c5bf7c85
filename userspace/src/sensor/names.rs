//! Names the agent looks up in the kernel object: its programs (by function name), maps
//! and the configuration global. Kept in one place and checked against the built object
//! by a unit test, so that a renamed kernel function or map fails `cargo test` instead of
//! a hook at run time.

use routeskew_common::Program;

pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_WATCHED: &str = "WATCHED_CGROUPS";
pub const MAP_WATCHED_SET: &str = "WATCHED_SET";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_SEM_BINARIES: &str = "SEM_BINARIES";
pub const MAP_SEM_HOSTS: &str = "SEM_HOSTS";
pub const MAP_SEM_COUNTS: &str = "SEM_COUNTS";
pub const MAP_SEM_PEERS: &str = "SEM_PEERS";
pub const MAP_SEM_PEERS_ON: &str = "SEM_PEERS_ON";
/// The [`routeskew_common::Config`] global (in `.rodata`, set before load).
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Every map the agent opens.
pub const MAPS: [&str; 9] = [
    MAP_EVENTS,
    MAP_WATCHED,
    MAP_WATCHED_SET,
    MAP_COUNTERS,
    MAP_SEM_BINARIES,
    MAP_SEM_HOSTS,
    MAP_SEM_COUNTS,
    MAP_SEM_PEERS,
    MAP_SEM_PEERS_ON,
];

/// Function name, in the object, of the program in slot `p`.
pub const fn program(p: Program) -> &'static str {
    PROGRAMS[p as usize]
}

/// Indexed by [`Program`].
const PROGRAMS: [&str; Program::COUNT as usize] = [
    "rs_enter_read",
    "rs_exit_read",
    "rs_enter_write",
    "rs_exit_write",
    "rs_enter_recvfrom",
    "rs_exit_recvfrom",
    "rs_enter_sendto",
    "rs_exit_sendto",
    "rs_enter_close",
    "rs_inet_sock_set_state",
    "rs_inet_sk_error_report",
    "rs_tcp_receive_reset",
    "rs_exit_close",
    "rs_sys_exit",
    "rs_sock_recv",
    "rs_sock_send",
    "rs_go_tls_write",
    "rs_go_tls_read",
    "rs_go_tls_read_ret",
    "rs_go_tls_close",
    "rs_sem_h1_write_header",
    "rs_sem_h2_write_header",
    "rs_sem_not_found",
    "rs_sem_upgrade",
    "rs_sem_conn_close",
];

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    use super::*;
    use crate::sensor::{
        hooks::{Attach, HOOKS},
        load::EMBEDDED_OBJECT,
    };

    /// Set by `cargo xtask test`, which builds the kernel object before the unit tests:
    /// then a build without an embedded object fails here instead of skipping.
    const REQUIRE_OBJECT: &str = "ROUTESKEW_REQUIRE_EBPF";

    /// Symbol name → (kind, name of its section).
    fn symbols(bytes: &[u8]) -> HashMap<String, (SymbolKind, String)> {
        let file = object::File::parse(bytes).expect("the embedded kernel object is an ELF file");
        file.symbols()
            .filter_map(|sym| {
                let section = file.section_by_index(sym.section_index()?).ok()?;
                Some((
                    sym.name().ok()?.to_owned(),
                    (sym.kind(), section.name().ok()?.to_owned()),
                ))
            })
            .collect()
    }

    #[test]
    fn every_name_the_agent_uses_is_in_the_kernel_object() {
        let Some(bytes) = EMBEDDED_OBJECT else {
            let required = std::env::var(REQUIRE_OBJECT).is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{REQUIRE_OBJECT}=1 but this build embeds no kernel object: \
                 run `cargo xtask build-ebpf` before building the tests"
            );
            eprintln!("skipped: no kernel object embedded (run `cargo xtask build-ebpf`)");
            return;
        };
        let symbols = symbols(bytes);
        let lookup = |name: &str| {
            symbols
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not a symbol of the kernel object"))
        };

        // Every program slot is a function in a program section...
        for p in Program::ALL {
            let (kind, section) = lookup(program(p));
            assert_eq!(*kind, SymbolKind::Text, "{}", program(p));
            assert_ne!(section, ".text", "{} is no program", program(p));
        }
        // ... of the kind, and for tracepoints at the hook, the agent attaches it as.
        for hook in &HOOKS {
            let (_, section) = lookup(hook.program);
            let ok = match hook.attach {
                Attach::Tracepoint { category, event } => {
                    *section == format!("tracepoint/{category}/{event}")
                }
                Attach::Raw { tracepoint } => [
                    format!("raw_tp/{tracepoint}"),
                    format!("raw_tracepoint/{tracepoint}"),
                ]
                .contains(section),
            };
            assert!(ok, "{} is in section {section}", hook.program);
        }
        for p in &Program::ALL[Program::TRACEPOINTS as usize..] {
            let (_, section) = lookup(program(*p));
            assert!(section.starts_with("uprobe"), "{p:?} is in {section}");
        }
        for map in MAPS {
            let (kind, section) = lookup(map);
            assert_eq!(
                (*kind, section.as_str()),
                (SymbolKind::Data, "maps"),
                "{map}"
            );
        }
        let (kind, section) = lookup(GLOBAL_CONFIG);
        assert_eq!((*kind, section.as_str()), (SymbolKind::Data, ".rodata"));
    }

    #[test]
    fn program_names_are_distinct() {
        let mut names: Vec<&str> = PROGRAMS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PROGRAMS.len());
    }
}
