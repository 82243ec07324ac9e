//! Real peers for the test suites, on 127.0.0.1 only. Test-only: nothing here ships to a device.
//!
//! - [`Nginx`]: Debian's nginx serving a directory on an ephemeral loopback port, stopped on drop;
//!   plain HTTP, or HTTPS ([`Nginx::serve_tls`]) with a certificate of the test PKI ([`tls`]).
//! - [`S3Server`]: moto's S3 server (in the same virtualenv) on an ephemeral loopback port.
//! - [`python_tuf`]: the interpreter of the python-tuf virtualenv that `scripts/test.sh` creates.
//! - [`SoftHsm`]: SoftHSM2 tokens under a private `SOFTHSM2_CONF`, for the PKCS#11 tests.
//! - [`noise`]: deterministic incompressible bytes, for images a delta must really match.
//! - [`cli_docs`]: a binary's shell completions and man page name all its `--help` lists.
//!
//! Missing tools are a test failure, never a skip: each function panics with a message that says how to
//! install what is missing (`bash scripts/test.sh` installs everything).
#![deny(missing_docs)]
// A test bed fails loudly: panicking with a clear message is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod cli_docs;
mod s3;
pub mod tls;

pub use s3::{HttpResponse, S3Server};

use std::fs;
use std::io::{BufRead as _, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod softhsm;
pub use softhsm::SoftHsm;

/// `len` deterministic, incompressible bytes (xorshift64 from `seed`), so failures reproduce and a delta
/// or compressor cannot shrink them without finding real matches.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The workspace's root directory (where `Cargo.toml` with `[workspace]` lives).
pub fn workspace_root() -> PathBuf {
    // This crate sits at <root>/crates/ota-testbed.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// Finds a program on PATH or in the sbin directories (nginx lives in /usr/sbin, which a non-root PATH
/// may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/local/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Like [`find_program`], but panics with an install hint when the program is missing.
pub fn require_program(name: &str, debian_package: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed; this test needs the real tool. \
             Run `bash scripts/test.sh` (it installs it) or `apt-get install -y {debian_package}`."
        )
    })
}

/// The python interpreter of the virtualenv holding python-tuf (`$OTA_PYTHON_TUF`, or `.venv/bin/python`
/// at the workspace root). Panics when it is missing or cannot `import tuf.ngclient`.
pub fn python_tuf() -> PathBuf {
    let python = std::env::var_os("OTA_PYTHON_TUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        python_imports(&python, "tuf.ngclient, securesystemslib"),
        "python-tuf is not available at {} (set OTA_PYTHON_TUF or run `bash scripts/test.sh`, which \
         creates the virtualenv)",
        python.display()
    );
    python
}

/// Whether `python` runs and can `import {modules}` (a comma-separated list).
fn python_imports(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Debian's nginx serving one directory over plain HTTP on `127.0.0.1` and an ephemeral port.
///
/// It runs in the foreground as a single process (`master_process off`), so it needs no privileges,
/// reads whatever the test user can read, and dies with the test ([`Drop`] kills it).
pub struct Nginx {
    child: Child,
    port: u16,
    state: tempfile::TempDir,
    tls: bool,
}

impl Nginx {
    /// Starts nginx serving `root`. Panics if nginx is missing or does not come up within 10 s.
    pub fn serve(root: &Path) -> Nginx {
        Nginx::start(root, None)
    }

    /// Starts nginx serving `root` over HTTPS only, presenting `cert`; with [`tls::ClientCerts::Asked`]
    /// it asks each client for a certificate (any, unchecked: `optional_no_ca`), so a client with one
    /// pays the whole mutual handshake (the benchmark's mTLS case).
    pub fn serve_tls(root: &Path, cert: &tls::ServerCert, client_certs: tls::ClientCerts) -> Nginx {
        Nginx::start(root, Some((cert, client_certs)))
    }

    fn start(root: &Path, tls: Option<(&tls::ServerCert, tls::ClientCerts)>) -> Nginx {
        let nginx = require_program("nginx", "nginx");
        let root = root.canonicalize().expect("served directory exists");
        let mut last_error = String::new();
        // The port is picked by binding :0 and released before nginx binds it; another process can take it
        // in between, so a few attempts are made.
        for _ in 0..5 {
            let state = tempfile::tempdir().expect("temp dir for nginx");
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = write_conf(state.path(), port, &root, tls);
            let mut child = Command::new(&nginx)
                .arg("-p")
                .arg(state.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(state.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    last_error = format!(
                        "nginx exited with {status}: {}",
                        fs::read_to_string(state.path().join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Nginx {
                        child,
                        port,
                        state,
                        tls: tls.is_some(),
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = "nginx did not accept connections within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start nginx: {last_error}");
    }

    /// The port nginx listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, or `https://` when serving TLS (no trailing slash).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// How many requests nginx has logged so far.
    pub fn requests_served(&self) -> usize {
        fs::read_to_string(self.state.path().join("access.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes nginx's configuration into `state` (its prefix: logs, pid, temp files): `root` served on
/// `port`, over TLS when `tls` is given. Returns the file's path.
fn write_conf(
    state: &Path,
    port: u16,
    root: &Path,
    tls: Option<(&tls::ServerCert, tls::ClientCerts)>,
) -> PathBuf {
    let s = state.display();
    let listen = match tls {
        None => format!("listen 127.0.0.1:{port};"),
        Some((cert, client_certs)) => tls_directives(state, port, cert, client_certs),
    };
    let conf = state.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {s}/nginx.pid;
error_log {s}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {s}/access.log;
    client_body_temp_path {s}/body;
    proxy_temp_path {s}/proxy;
    fastcgi_temp_path {s}/fastcgi;
    uwsgi_temp_path {s}/uwsgi;
    scgi_temp_path {s}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        {listen}
        root {root};
        location / {{ }}
    }}
}}
"#,
            root = root.display()
        ),
    )
    .unwrap();
    conf
}

/// The `listen ... ssl` line and the certificate directives, the certificate and key written beside the
/// configuration. No session resumption: every connection pays a full handshake, as a device's hourly
/// poll does.
fn tls_directives(state: &Path, port: u16, cert: &tls::ServerCert, client_certs: tls::ClientCerts) -> String {
    let cert_path = state.join("server.crt");
    let key_path = state.join("server.key");
    fs::write(&cert_path, &cert.cert_pem).unwrap();
    fs::write(&key_path, &cert.key_pem).unwrap();
    let verify = match client_certs {
        tls::ClientCerts::Ignored => "off",
        tls::ClientCerts::Asked => "optional_no_ca",
    };
    format!(
        "listen 127.0.0.1:{port} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        \
         ssl_verify_client {verify};\n        ssl_session_tickets off;\n        ssl_session_cache off;",
        cert_path.display(),
        key_path.display()
    )
}

/// Spawns `command` with its stdout piped and waits for the first line it prints, which must be
/// `listening on ADDR` (as `collector serve` says once it listens). Returns the child and `ADDR`.
pub fn spawn_listening(command: &mut Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{command:?} said {line:?}"))
        .to_string();
    (child, addr)
}

/// Writes `bytes` to `path`, creating parent directories. A shorthand for fixtures.
pub fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let mut f = fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn nginx_serves_a_directory_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        write_file(&dir.path().join("sub/hello.txt"), b"hello from nginx");
        let nginx = Nginx::serve(dir.path());
        let mut s = TcpStream::connect(("127.0.0.1", nginx.port())).unwrap();
        s.write_all(b"GET /sub/hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("hello from nginx"), "{response}");
        assert_eq!(nginx.requests_served(), 1);
    }
}
