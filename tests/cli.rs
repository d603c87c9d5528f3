//! Configuration: flags beat environment beat file beat defaults; bad input is named.

use std::{ffi::OsString, io::Write, time::Duration};

use ppp::config::{Balance, ConfigError, Framing, RedisMode, load_from};

fn args(list: &[&str]) -> Vec<OsString> {
    std::iter::once("ppp").chain(list.iter().copied()).map(OsString::from).collect()
}

fn file(text: &str) -> tempfile_like::TempFile {
    tempfile_like::TempFile::new(text)
}

/// A tiny temporary file, removed on drop (no extra crate needed for one file).
mod tempfile_like {
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn new(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!("ppp-test-{}.toml", uuid::Uuid::now_v7()));
            let mut f = std::fs::File::create(&path).unwrap();
            super::Write::write_all(&mut f, text.as_bytes()).unwrap();
            Self(path)
        }
        pub fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    let f = file(
        r#"
        max-frame = "64KiB"
        write_queue = 7
        balance = "sticky"
        framing = "length-prefixed"
        idle-after = "5s"
        upstream = ["http://a:1", "http://b:2"]
        admin-insecure = false
        "#,
    );
    // SAFETY: this is the only test in this binary that touches the environment.
    unsafe {
        std::env::set_var("PPP_WRITE_QUEUE", "9");
        std::env::set_var("PPP_FRAMING", "raw");
    }
    let cli = load_from(args(&["--config", f.path(), "--framing", "lines"])).unwrap();
    unsafe {
        std::env::remove_var("PPP_WRITE_QUEUE");
        std::env::remove_var("PPP_FRAMING");
    }
    let c = cli.config;
    assert_eq!(c.framing, Framing::Lines, "flag beats env and file");
    assert_eq!(c.write_queue, 9, "env beats file");
    assert_eq!(c.max_frame, 64 << 10, "file beats default");
    assert_eq!(c.balance, Balance::Sticky);
    assert_eq!(c.idle_after, Duration::from_secs(5));
    assert_eq!(c.upstream, ["http://a:1", "http://b:2"]);
    assert_eq!(c.max_connections, 100_000, "default");
    assert_eq!(c.idle_timeout.0, None, "idle timeout is off by default");
}

#[test]
fn an_unknown_key_or_a_bad_value_in_the_file_is_named() {
    let f = file("listen = \"127.0.0.1:1\"\nmax_franes = 10\n");
    match load_from(args(&["--config", f.path()])) {
        Err(e @ ConfigError::UnknownKey { .. }) => assert!(e.to_string().contains("max_franes"), "{e}"),
        other => panic!("expected an unknown key error, got {other:?}"),
    }
    let f = file("idle-after = \"soon\"\n");
    let e = load_from(args(&["--config", f.path()])).unwrap_err().to_string();
    assert!(e.contains("idle-after") && e.contains(f.path()), "{e}");
    let f = file("this is not toml");
    assert!(matches!(load_from(args(&["--config", f.path()])), Err(ConfigError::Toml { .. })));
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let bad = |list: &[&str]| load_from(args(list)).unwrap().config.validate().unwrap_err().to_string();
    assert!(bad(&["--admin-listen", "0.0.0.0:8000"]).contains("--admin-token"));
    assert!(bad(&["--write-queue", "0"]).contains("--write-queue"));
    assert!(bad(&["--upstream", "localhost:50051"]).contains("http://"));
    assert!(bad(&["--node-id", "a b"]).contains("--node-id"));
    let ok = load_from(args(&["--admin-listen", "0.0.0.0:8000", "--admin-insecure"])).unwrap();
    assert!(ok.config.validate().is_ok());
}

#[test]
fn the_binary_exits_with_a_clear_message_on_bad_config() {
    let f = file("bogus = 1\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ppp")).args(["--config", f.path()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key `bogus`"), "{stderr}");
}

#[test]
fn redis_urls_are_a_list_in_flags_the_environment_and_the_file() {
    let c =
        load_from(args(&["--redis", "redis://a:1,redis://b:2", "--redis", "redis://c:3", "--redis-mode", "cluster"]))
            .unwrap()
            .config;
    assert_eq!(c.redis, ["redis://a:1", "redis://b:2", "redis://c:3"]);
    assert_eq!((c.redis_mode, c.redis_master_name.as_str()), (RedisMode::Cluster, "mymaster"));
    assert!(c.validate().is_ok());
    let f = file(
        "redis = [\"redis://s1:26379\", \"redis://s2:26379\"]\nredis-mode = \"sentinel\"\nredis-master-name = \"ha\"\n",
    );
    let c = load_from(args(&["--config", f.path()])).unwrap().config;
    assert_eq!(c.redis, ["redis://s1:26379", "redis://s2:26379"]);
    assert_eq!((c.redis_mode, c.redis_master_name.as_str()), (RedisMode::Sentinel, "ha"));
    let f = file("redis = \"redis://one:6379\"\n");
    let c = load_from(args(&["--config", f.path()])).unwrap().config;
    assert_eq!((c.redis, c.redis_mode), (vec!["redis://one:6379".to_owned()], RedisMode::Standalone));
    // The environment is split on commas too (seen from a child process: this binary's other
    // tests must not see these variables).
    let run = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ppp")).envs(env.iter().copied()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&[("PPP_REDIS", "redis://a:1,redis://b:2")]);
    assert!(code != Some(0) && stderr.contains("exactly one --redis URL, not 2"), "{stderr}");
    let (code, stderr) = run(&[("PPP_REDIS_MODE", "sentinel")]);
    assert!(code != Some(0) && stderr.contains("--redis-mode sentinel needs at least one --redis URL"), "{stderr}");
}

/// Starts `ppp demo` on free ports; returns the child, its stdout (keep it open: the demo
/// writes to it) and the socket and admin ports.
fn demo() -> (std::process::Child, impl std::io::BufRead, u16, u16) {
    demo_with(&[])
}

/// [`demo`] with more arguments.
fn demo_with(extra: &[&str]) -> (std::process::Child, impl std::io::BufRead, u16, u16) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ppp"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut port, mut admin) = (None, None);
    while port.is_none() || admin.is_none() {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the demo printed no ports");
        let after = |marker: &str| {
            line.split(marker).nth(1).map(|rest| rest.split(['/', ' ']).next().unwrap().trim().to_owned())
        };
        if let Some(p) = after("nc 127.0.0.1 ") {
            port = Some(p.parse::<u16>().unwrap());
        }
        if let Some(a) = after("curl http://127.0.0.1:") {
            admin = Some(a.parse::<u16>().unwrap());
        }
    }
    (child, stdout, port.unwrap(), admin.unwrap())
}

/// One HTTP/1.1 request to the admin API; returns the whole answer.
fn http(port: u16, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// The README's first command: `ppp demo` serves a node with the echo upstream and the admin
/// API, and stops cleanly on SIGTERM.
#[test]
fn the_demo_echoes_serves_the_admin_api_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Write};
    let (mut child, _stdout, port, admin) = demo();
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut welcome = String::new();
    reader.read_line(&mut welcome).unwrap();
    assert!(welcome.starts_with("welcome"), "{welcome}");
    (&stream).write_all(b"hello demo\n").unwrap();
    let mut echo = String::new();
    reader.read_line(&mut echo).unwrap();
    assert_eq!(echo, "hello demo\n");
    let id = welcome.split_whitespace().nth(3).unwrap().trim_end_matches('.');
    let listing = http(admin, "GET", "/v1/sockets");
    assert!(listing.starts_with("HTTP/1.1 200") && listing.contains(id), "{listing}");
    // SIGTERM: the node drains (closing our socket) and exits 0.
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    assert_eq!(std::io::Read::read_to_string(&mut reader, &mut rest).unwrap_or(0), 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// `POST /v1/drain` drains the node like SIGTERM, and the process exits 0.
#[test]
fn a_drain_through_the_admin_api_ends_the_process() {
    let (mut child, _stdout, port, admin) = demo();
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // `ppp ready`, the container health check, asks /readyz; 0.0.0.0 is asked on loopback.
    let ready = |addr: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ppp"))
            .args(["ready", "--admin-listen", &addr])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(ready(format!("0.0.0.0:{admin}")), Some(0));
    let answer = http(admin, "POST", "/v1/drain");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &stream, &mut rest);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(ready(format!("127.0.0.1:{admin}")), Some(1), "exit 1 (Docker reserves 2)");
}

/// `ppp drain`, Kubernetes' `preStop` hook: starts the drain through the admin API with the
/// token (refused without it), and the node then drains and exits 0.
#[test]
fn ppp_drain_starts_the_drain_with_the_admin_token() {
    let (mut child, _stdout, _port, admin) = demo_with(&["--admin-token", "s3cret"]);
    let drain = |token: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ppp"));
        command.args(["drain", "--admin-listen", &format!("0.0.0.0:{admin}")]).env_remove("PPP_ADMIN_TOKEN");
        if let Some(token) = token {
            command.args(["--admin-token", token]);
        }
        command.stderr(std::process::Stdio::null()).status().unwrap().code()
    };
    assert_eq!(drain(None), Some(1), "no token: refused (401), exit 1");
    assert_eq!(drain(Some("s3cret")), Some(0));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// `--log-format json` writes one JSON object per line, with the node's fields.
#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ppp"))
        .args([
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--node-id",
            "json-node",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(line.starts_with('{') && line.trim_end().ends_with('}'), "{line}");
    assert!(line.contains("\"node.id\":\"json-node\""), "{line}");
    assert!(status.success());
}

#[test]
fn tls_and_proxy_protocol_settings_come_from_the_file_and_flags_and_are_checked() {
    let f = file(
        r#"
        tls-cert = "/etc/ppp/cert.pem"
        tls_key = "/etc/ppp/key.pem"
        proxy-protocol = true
        proxy-from = ["10.1.0.0/16", "fd00::/8"]
        "#,
    );
    let c = load_from(args(&["--config", f.path()])).unwrap().config;
    assert_eq!(c.tls_cert.as_deref(), Some(std::path::Path::new("/etc/ppp/cert.pem")));
    assert_eq!(c.tls_key.as_deref(), Some(std::path::Path::new("/etc/ppp/key.pem")));
    assert!(c.proxy_protocol);
    let nets: Vec<ipnet::IpNet> = vec!["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()];
    assert_eq!(c.proxy_from, nets);
    c.validate().unwrap();

    let defaults = load_from(args(&[])).unwrap().config;
    assert!(!defaults.proxy_protocol && defaults.tls_cert.is_none() && defaults.tls_key.is_none());
    assert_eq!(defaults.proxy_from.len(), 6, "loopback and the private ranges");
    let flags = load_from(args(&["--proxy-from", "192.168.1.0/24", "--proxy-from", "127.0.0.1/32"])).unwrap().config;
    assert_eq!(flags.proxy_from.len(), 2, "the flag replaces the default list");

    let e = load_from(args(&["--proxy-from", "10.0.0.0/33"])).unwrap_err().to_string();
    assert!(e.contains("proxy-from"), "{e}");
    let only_cert = load_from(args(&["--tls-cert", "/etc/ppp/cert.pem"])).unwrap().config;
    let e = only_cert.validate().unwrap_err().to_string();
    assert!(e.contains("--tls-cert") && e.contains("--tls-key"), "{e}");
}
