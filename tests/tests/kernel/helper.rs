//! The helper process: this test binary re-executed (by
//! [`crate::harness::Bench::run_helper`]) with `ROUTESKEW_KERNEL_HELPER=<scenario>`, inside
//! the watched cgroup. Each scenario makes its traffic with plain syscalls and prints
//! `RESULT key=value ...` lines (its fds, the port it used) for the test to read.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::events::{
    FRAME_LIKE_REQUEST, FRAME_LIKE_RESPONSE, NOT_HTTP, REQUEST, RESPONSE, SECOND_REQUEST,
    UPGRADE_REQUEST, UPGRADE_RESPONSE,
};

pub(crate) const HELPER_ENV: &str = "ROUTESKEW_KERNEL_HELPER";
/// The helper's libtest name, run with `--exact`.
pub(crate) const HELPER_TEST: &str = "helper::helper_process";

/// Not a test: the entry point of the helper process the tests spawn (it does nothing
/// unless `ROUTESKEW_KERNEL_HELPER` is set).
#[test]
fn helper_process() {
    let Ok(scenario) = std::env::var(HELPER_ENV) else {
        return;
    };
    let outcome = match scenario.as_str() {
        "http" => scenario_http(false),
        "upgrade" => scenario_http(true),
        "request_back" => scenario_request_back(),
        "cipher" => scenario_cipher(),
        "refused" => scenario_refused(),
        "reset" => scenario_reset(),
        "non_http" => scenario_non_http(),
        "read_ahead" => scenario_read_ahead(),
        "one_byte_fresh" => scenario_one_byte_fresh(),
        "no_answer" => scenario_no_answer(),
        other => Err(anyhow!("unknown helper scenario {other}")),
    };
    match outcome {
        Ok(()) => {
            println!("RESULT ok=1");
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("helper {scenario}: {e:#}");
            std::process::exit(1);
        }
    }
}

fn raw_write(fd: i32, buf: &[u8]) -> Result<()> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    ensure!(
        n == buf.len() as isize,
        "write returned {n}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn raw_read_exact(fd: i32, want: &[u8]) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    ensure!(
        n == want.len() as isize && &buf[..want.len()] == want,
        "read returned {n} bytes, expected the {}-byte message in one read",
        want.len()
    );
    Ok(())
}

fn std_read_exact(stream: &mut TcpStream, want: &[u8]) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf)?;
    ensure!(
        n == want.len() && &buf[..n] == want,
        "recv returned {n} bytes, expected the {}-byte message in one read",
        want.len()
    );
    Ok(())
}

/// The client (raw fd) writes `request`, the server reads it and answers `response`,
/// which the client reads back.
fn exchange(cfd: i32, server: &mut TcpStream, request: &[u8], response: &[u8]) -> Result<()> {
    raw_write(cfd, request)?;
    std_read_exact(server, request)?;
    server.write_all(response)?;
    raw_read_exact(cfd, response)
}

fn connected_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    Ok((client, server))
}

/// One request/response: the client with read(2)/write(2), the server with std's
/// recv/send (recvfrom/sendto syscalls). With `upgrade`, a 101 handshake and then
/// HTTP-looking bytes both ways.
fn scenario_http(upgrade: bool) -> Result<()> {
    let (client, mut server) = connected_pair()?;
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    let (req, resp) = if upgrade {
        (UPGRADE_REQUEST, UPGRADE_RESPONSE)
    } else {
        (REQUEST, RESPONSE)
    };
    exchange(cfd, &mut server, req, resp)?;
    if upgrade {
        exchange(cfd, &mut server, FRAME_LIKE_REQUEST, FRAME_LIKE_RESPONSE)?;
    }
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}

/// The side that wrote a request (an upstream connection to the kernel) later reads a
/// request on it: the kernel only skims reads of upstream connections, but must still
/// report a request it finds there.
fn scenario_request_back() -> Result<()> {
    let (client, mut server) = connected_pair()?;
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    exchange(cfd, &mut server, REQUEST, RESPONSE)?;
    server.write_all(REQUEST)?;
    raw_read_exact(cfd, REQUEST)?;
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}

/// One read(2) of a single byte, as Go's background read does it.
fn raw_read_one(fd: i32) -> Result<u8> {
    let mut byte = 0u8;
    // SAFETY: one byte of valid memory.
    let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
    ensure!(
        n == 1,
        "1-byte read returned {n}: {}",
        std::io::Error::last_os_error()
    );
    Ok(byte)
}

/// A keep-alive connection served the way Go's net/http does when the next request
/// arrives while a handler runs: the server reads the second request's first byte on its
/// own, then the rest with a normal read (both read(2)).
fn scenario_read_ahead() -> Result<()> {
    let (client, mut server) = connected_pair()?;
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    raw_write(cfd, REQUEST)?;
    raw_read_exact(sfd, REQUEST)?;
    server.write_all(RESPONSE)?;
    raw_read_exact(cfd, RESPONSE)?;
    raw_write(cfd, SECOND_REQUEST)?;
    ensure!(raw_read_one(sfd)? == SECOND_REQUEST[0], "wrong first byte");
    raw_read_exact(sfd, &SECOND_REQUEST[1..])?;
    server.write_all(RESPONSE)?;
    raw_read_exact(cfd, RESPONSE)?;
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}

/// The same split on a connection that carried nothing before: the client sends the
/// request's first byte and the rest in two writes (neither looks like HTTP to the
/// kernel), the server reads them in two reads. Then a real exchange on a second
/// connection.
fn scenario_one_byte_fresh() -> Result<()> {
    {
        let (client, server) = connected_pair()?;
        let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
        raw_write(cfd, &REQUEST[..1])?;
        raw_write(cfd, &REQUEST[1..])?;
        ensure!(raw_read_one(sfd)? == REQUEST[0], "wrong first byte");
        raw_read_exact(sfd, &REQUEST[1..])?;
    }
    scenario_http(false)
}

/// TLS records both ways (a handshake and application data, as on a TLS entrypoint's
/// socket), then bytes that look like a request on the same connection.
fn scenario_cipher() -> Result<()> {
    const HELLO: &[u8] = b"\x16\x03\x01\x00\x2a\x01\x00\x00\x26\x03\x03abcdefghijklmnop";
    const RECORD: &[u8] = b"\x17\x03\x03\x00\x20ciphertext-ciphertext-ciphertext";
    let (client, mut server) = connected_pair()?;
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    exchange(cfd, &mut server, HELLO, RECORD)?;
    raw_write(cfd, REQUEST)?;
    std_read_exact(&mut server, REQUEST)?;
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}

fn scenario_refused() -> Result<()> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    match TcpStream::connect(("127.0.0.1", port)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!("connect to closed port {port}: expected refusal, got {other:?}"),
    }
    println!("RESULT port={port}");
    Ok(())
}

/// The server aborts an established connection (SO_LINGER 0 then close sends RST).
fn scenario_reset() -> Result<()> {
    let (mut client, server) = connected_pair()?;
    let port = server.local_addr()?.port();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid fd with a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            server.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(server);
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => bail!("read after the peer's abort: expected a reset, got {other:?}"),
    }
    println!("RESULT port={port}");
    Ok(())
}

/// Non-HTTP traffic both ways on one connection, then a real exchange on a second one.
fn scenario_non_http() -> Result<()> {
    {
        let (client, mut server) = connected_pair()?;
        for msg in NOT_HTTP {
            raw_write(client.as_raw_fd(), msg)?;
            std_read_exact(&mut server, msg)?;
            server.write_all(msg)?;
            raw_read_exact(client.as_raw_fd(), msg)?;
        }
    }
    scenario_http(false)
}

fn ip(args: &str) -> Result<()> {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .status()
        .context("running ip(8)")?;
    ensure!(status.success(), "ip {args}: {status}");
    Ok(())
}

fn scenario_no_answer() -> Result<()> {
    // Runs in a fresh network namespace (unshared before exec).
    // Nothing answers on the far side of the veth: .3 and .4 have (fake) neighbour
    // entries so their SYNs leave and are dropped, .2 has none so ARP fails.
    ip("link set lo up")?;
    ip("link add rsk-a type veth peer name rsk-b")?;
    ip("addr add 203.0.113.1/24 dev rsk-a")?;
    ip("link set rsk-a up")?;
    ip("link set rsk-b up")?;
    ip("neigh add 203.0.113.3 lladdr 02:00:00:00:00:03 dev rsk-a nud permanent")?;
    ip("neigh add 203.0.113.4 lladdr 02:00:00:00:00:04 dev rsk-a nud permanent")?;
    // Connected before step 1 so that writing on it afterwards changes no TCP state.
    let (client, mut server) = connected_pair()?;

    // 1. The application gives up: connect_timeout closes the socket while SYN_SENT.
    let addr = SocketAddr::from(([203, 0, 113, 3], 80));
    match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => bail!("connect to {addr}: expected our timeout, got {other:?}"),
    }
    raw_write(client.as_raw_fd(), REQUEST)?;
    // Read, so that closing the server side later sends a FIN, not a reset.
    std_read_exact(&mut server, REQUEST)?;

    // 2. The kernel gives up: one SYN retry, about 3 s.
    // SAFETY: plain socket syscalls on an fd this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let syncnt: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&syncnt as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 80u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([203, 0, 113, 4]),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        ensure!(
            rc != 0 && err.raw_os_error() == Some(libc::ETIMEDOUT),
            "connect with TCP_SYNCNT=1: expected ETIMEDOUT, got rc={rc} {err}"
        );
    }

    // 3. No neighbour answers ARP: the kernel reports host unreachable (about 3 s).
    let addr = SocketAddr::from(([203, 0, 113, 2], 80));
    match TcpStream::connect(addr) {
        Err(e) if e.raw_os_error() == Some(libc::EHOSTUNREACH) => {}
        other => bail!("connect to {addr}: expected EHOSTUNREACH, got {other:?}"),
    }
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}
