//! Stock upstreams in other languages, as their own processes: the Python example (grpcio's
//! asyncio server with default options) and the Go example (`grpc.NewServer()` with no options).
//! Each is built or installed once per test binary (a venv under `target/interop/`, the Go binary
//! by `examples/go/build.sh`), started on a free loopback port with its log in a temporary file,
//! and killed on drop.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use super::{DEADLINE, process::TempDir};

/// A language with a stock example upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// `examples/python/upstream.py` (grpcio, asyncio).
    Python,
    /// `examples/go/` (grpc-go).
    Go,
    /// `examples/python/minimal.py`: the 30 lines `docs/protocol.md` quotes (echo only).
    PythonMinimal,
    /// `examples/minimal_upstream.rs`: the Rust one `docs/protocol.md` quotes (echo only).
    RustMinimal,
}

impl Lang {
    /// Its name in `/whoami` answers when no `--name` is given.
    pub fn name(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Go => "go",
            Self::PythonMinimal | Self::RustMinimal => "minimal",
        }
    }
}

/// One upstream process.
pub struct ExternalUpstream {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// The name it answers `/whoami` with.
    pub name: String,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl ExternalUpstream {
    /// Starts an upstream of `lang` named `name` on a free port and waits until it listens.
    pub async fn start(lang: Lang, name: &str) -> Self {
        let addr = free_addr();
        let dir = TempDir::new("ppp-interop");
        let log = dir.path().join("upstream.log");
        let out = std::fs::File::create(&log).expect("a log file");
        let mut command = match lang {
            Lang::Python => {
                let mut c = Command::new(python());
                c.arg(root().join("examples/python/upstream.py"));
                c
            }
            Lang::Go => Command::new(go_binary()),
            Lang::PythonMinimal => {
                let mut c = Command::new(python());
                c.arg(root().join("examples/python/minimal.py"));
                c
            }
            Lang::RustMinimal => Command::new(rust_minimal()),
        };
        if matches!(lang, Lang::PythonMinimal | Lang::RustMinimal) {
            command.arg(addr.to_string());
        } else {
            command.args(["--listen", &addr.to_string(), "--name", name, "--grace", "0"]);
        }
        command.stdin(Stdio::null()).stdout(out.try_clone().expect("a log file")).stderr(out);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start the {lang:?} upstream: {e}"));
        let mut up = Self { addr, name: name.to_owned(), child, log, _dir: dir };
        up.wait_listening().await;
        up
    }

    /// Its URI for `--upstream`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many `hello`s it logged: one per stream a node opened to it.
    pub fn hellos(&self) -> usize {
        self.log().matches("hello from node").count()
    }

    async fn wait_listening(&mut self) {
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the upstream exited ({status}) at start:\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            assert!(start.elapsed() < DEADLINE * 3, "the upstream does not listen on {}:\n{}", self.addr, self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ExternalUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback address (bound, then released for the process to take).
fn free_addr() -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's interpreter, with `examples/python/requirements.txt` installed: `$PPP_PY_VENV`, or
/// `target/interop/venv`, made when missing.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = std::env::var_os("PPP_PY_VENV").map_or_else(|| root().join("target/interop/venv"), PathBuf::from);
        let python = venv.join("bin/python");
        if !python.exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv (Debian: python3-venv)");
        }
        let requirements = root().join("examples/python/requirements.txt");
        let mut pip = Command::new(&python);
        pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"]).arg(requirements);
        run(&mut pip, "pip install -r examples/python/requirements.txt");
        python
    })
}

/// The Go example's binary, built by `examples/go/build.sh` into `target/interop/`.
fn go_binary() -> &'static Path {
    static GO: OnceLock<PathBuf> = OnceLock::new();
    GO.get_or_init(|| {
        let out = root().join("target/interop/ppp-go-upstream");
        let mut build = Command::new("bash");
        build.arg(root().join("examples/go/build.sh")).arg(&out);
        run(&mut build, "examples/go/build.sh (scripts/test.sh installs Go from Debian)");
        out
    })
}

/// `examples/minimal_upstream`, built (quickly when it is up to date) by the cargo running the tests.
fn rust_minimal() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--example", "minimal_upstream"]).current_dir(root());
        run(&mut build, "cargo build --example minimal_upstream");
        let ppp = PathBuf::from(env!("CARGO_BIN_EXE_ppp"));
        ppp.with_file_name("examples").join("minimal_upstream")
    })
}

/// Runs a set-up command to its end; fails the test, with its output, when it fails.
fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
