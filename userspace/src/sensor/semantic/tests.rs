//! Plans of the real Traefik release binaries (Go 1.22 to 1.26).
