//! Flag parsing, defaults, validation and the hosts file.

use super::*;

#[test]
fn ws_path_syntax() {
    assert_eq!(
        "/ws".parse::<WsPath>().expect("valid"),
        WsPath {
            host: None,
            path: "/ws".into()
        }
    );
    assert_eq!(
        "Chat.Test/socket/x".parse::<WsPath>().expect("valid"),
        WsPath {
            host: Some("chat.test".into()),
            path: "/socket/x".into()
        }
    );
    assert_eq!(
        "ws".parse::<WsPath>().expect_err("no slash").to_string(),
        "expected /path or host/path, got \"ws\""
    );
    assert!("/".parse::<WsPath>().is_ok());
}

#[test]
fn probe_flags() {
    let r = parse(&["run"]).expect("defaults parse");
    assert_eq!(r.probe_interval, Duration::from_secs(10));
    assert_eq!(r.probe_path, "/");
    assert!(r.probe_ws_paths.is_empty());
    let r = parse(&[
        "run",
        "--probe-interval",
        "1s",
        "--probe-ws-path",
        "/ws,chat.test/socket",
        "--probe-ws-accept",
        "302",
        "--probe-port",
        "80",
        "--api-port",
        "9000",
    ])
    .expect("parse");
    assert_eq!(r.probe_interval, Duration::from_secs(1));
    assert_eq!(r.probe_ws_paths.len(), 2);
    assert_eq!(r.probe_ws_paths[1].host.as_deref(), Some("chat.test"));
    assert_eq!(r.probe_ws_accept, vec![302]);
    assert_eq!(r.probe_ports, vec![80]);
    assert_eq!(r.api_port, Some(9000));
    assert!(parse(&["run", "--probe-ws-path", "ws"]).is_err());
    assert!(parse(&["run", "--probe-concurrency", "0"]).is_err());
}

#[test]
fn hosts_file() {
    assert_eq!(
        parse_hosts_file("# hosts\na.test\n\n  b.test  # the b one\n"),
        vec!["a.test", "b.test"]
    );
    let path = std::env::temp_dir().join(format!("routeskew-hosts-{}", std::process::id()));
    std::fs::write(&path, "b.test\nc.test\n").expect("write");
    let p = path.display().to_string();
    let r = parse(&[
        "run",
        "--host",
        "a.test,b.test",
        "--hosts-file",
        &p,
        "--probe-ws-path",
        "d.test/ws,/ws",
    ])
    .expect("parse");
    assert_eq!(
        r.all_hosts().expect("read"),
        vec!["a.test", "b.test", "c.test", "d.test"]
    );
    std::fs::remove_file(&path).expect("rm");
    let err = r.all_hosts().expect_err("file gone");
    assert!(
        err.to_string().starts_with(&format!("--hosts-file {p}: ")),
        "{err}"
    );
}

fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
    let cli = Cli::try_parse_from(std::iter::once("routeskew").chain(args.iter().copied()))?;
    match cli.command {
        Command::Run(r) => Ok(r),
        Command::MetricsList | Command::Status(_) => {
            Err(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))
        }
    }
}

#[test]
fn defaults_are_sane() {
    let r = parse(&["run"]).expect("defaults parse");
    assert_eq!(r.process_name, "traefik");
    assert_eq!(r.listen.port(), 9477);
    assert_eq!(r.rescan_interval, Duration::from_secs(2));
    assert_eq!(r.capture_bytes, 1024);
    assert!(r.validate().is_ok());
}

#[test]
fn repeatable_and_delimited_flags() {
    let r = parse(&[
        "run",
        "--host",
        "a.test",
        "--host",
        "b.test,c.test",
        "--pid",
        "12",
        "--cgroup",
        "x/y",
    ])
    .expect("parse");
    assert_eq!(r.hosts, vec!["a.test", "b.test", "c.test"]);
    assert_eq!(r.pids, vec![12]);
    assert_eq!(r.cgroups, vec![PathBuf::from("x/y")]);
}

#[test]
fn kubernetes_flags() {
    let r = parse(&["run"]).expect("defaults parse");
    assert_eq!(r.kube.label_selector, "app.kubernetes.io/name=traefik");
    assert_eq!(r.kube.ingress_class, "traefik");
    assert_eq!(r.kube.host_cgroup_root, PathBuf::from("/sys/fs/cgroup"));
    assert_eq!(r.kube.watch_namespace, None);
    let r = parse(&[
        "run",
        "--discovery",
        "kubernetes",
        "--node-name",
        "n1",
        "--watch-namespace",
        "edge",
        "--container",
        "traefik",
        "--host-proc",
        "/host/proc",
    ])
    .expect("parse");
    assert_eq!(r.effective_discovery(), DiscoveryMode::Kubernetes);
    assert_eq!(r.node_name.as_deref(), Some("n1"));
    assert_eq!(r.kube.watch_namespace.as_deref(), Some("edge"));
    assert_eq!(r.kube.containers, vec!["traefik"]);
    assert_eq!(r.kube.host_proc, PathBuf::from("/host/proc"));
}

#[test]
fn rejects_bad_values() {
    assert!(parse(&["run", "--capture-bytes", "4096"]).is_err());
    assert!(parse(&["run", "--rescan-interval", "soon"]).is_err());
    let r = parse(&["run", "--ring-buffer-bytes", "5000"]).expect("parse");
    assert_eq!(
        r.validate().map_err(|e| e.to_string()),
        Err("--ring-buffer-bytes must be a power of two of at least 4096, got 5000".into())
    );
    let r = parse(&["run", "--no-name-match"]).expect("parse");
    assert_eq!(
        r.validate().map_err(|e| e.to_string()),
        Err("--no-name-match needs at least one --pid or --cgroup".into())
    );
}

#[test]
fn metrics_list_takes_no_arguments() {
    let cli = Cli::try_parse_from(["routeskew", "metrics-list"]).expect("parse");
    assert!(matches!(cli.command, Command::MetricsList));
    assert!(Cli::try_parse_from(["routeskew", "metrics-list", "--listen", ":1"]).is_err());
}
