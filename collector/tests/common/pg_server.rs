//! A real PostgreSQL server for the test binary that uses it: Debian's `postgresql` started on 127.0.0.1
//! at a free port from a fresh `initdb` in a temporary directory, once per test binary, one database
//! per test. It runs as the `postgres` user when the tests run as root (initdb refuses root; CI is
//! root). A watchdog shell holds the server: when the test binary exits, however it exits, the
//! watchdog's stdin closes and it stops the server and removes the directory. A missing PostgreSQL
//! fails the test with what to install, never skips it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The password of the server's `postgres` user (TCP connections need it: scram-sha-256).
pub const PASSWORD: &str = "collector-test-s3cret";

/// The running server.
pub struct PgServer {
    pub port: u16,
    /// Held open until the test binary exits: closing it stops the server.
    _watchdog_stdin: Mutex<ChildStdin>,
    _watchdog: Mutex<Child>,
}

/// A fresh database on this binary's server.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

/// The server, started at the first call.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(start)
}

impl PgDb {
    pub fn new() -> PgDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = server();
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = server.client("postgres");
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        PgDb {
            url: server.url(&name),
            name,
        }
    }

    pub fn client(&self) -> postgres::Client {
        server().client(&self.name)
    }
}

impl PgServer {
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    pub fn client(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls).unwrap()
    }
}

/// The newest /usr/lib/postgresql/VERSION/bin holding `initdb` and `postgres`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): install the Debian \
             package `postgresql` (scripts/test.sh does)"
        ),
    }
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `program` run as the `postgres` user when we are root (setpriv execs it: same pid), else as us.
fn as_server_user(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> PgServer {
    let bin = bin_dir();
    let root = running_as_root();
    let dir = tempfile::Builder::new()
        .prefix("collector-pg.")
        .tempdir()
        .unwrap()
        .keep();
    std::fs::write(dir.join("pw"), PASSWORD).unwrap();
    if root {
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        assert!(chown.unwrap().success(), "chown {dir:?} to postgres");
    }
    let data = dir.join("data");
    let initdb = as_server_user(&bin.join("initdb"), root)
        .current_dir(&dir)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", dir.join("pw").display()))
        .output()
        .unwrap();
    assert!(
        initdb.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    let port = free_port();
    let log = dir.join("server.log");
    // The watchdog: starts the server, waits for its stdin to close (the test binary exited), then
    // stops the server (fast shutdown) and removes the directory.
    let mut watchdog = Command::new("sh")
        .args([
            "-c",
            r#"dir="$1"; shift; "$@" >"$dir/server.log" 2>&1 & pid=$!
               echo "$pid" >"$dir/server.pid"; read -r _ || true; kill -INT "$pid"; wait "$pid"; rm -rf "$dir""#,
            "watchdog",
        ])
        .arg(&dir)
        .arg(if root { "setpriv" } else { "env" })
        .args(if root {
            vec!["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        } else {
            vec![]
        })
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(&dir)
        // Tests need no durability; CI time does matter.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=200"])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = watchdog.stdin.take().unwrap();
    wait_until_ready(port, &mut watchdog, &log);
    PgServer {
        port,
        _watchdog_stdin: Mutex::new(stdin),
        _watchdog: Mutex::new(watchdog),
    }
}

fn wait_until_ready(port: u16, watchdog: &mut Child, log: &Path) {
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres");
    let started = Instant::now();
    loop {
        let tried = match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(_) => return,
            Err(e) => e,
        };
        let mut text = String::new();
        std::fs::File::open(log)
            .and_then(|mut f| f.read_to_string(&mut text))
            .ok();
        let exited = watchdog.try_wait().unwrap().is_some() || server_exited(log);
        if exited || started.elapsed() > Duration::from_secs(60) {
            panic!("PostgreSQL did not start on 127.0.0.1:{port}: {tried}\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The server process (pid written by the watchdog next to the log) is gone or a zombie.
fn server_exited(log: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(log.with_file_name("server.pid")) else {
        return false;
    };
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        // The state follows the command name in parentheses: Z is a zombie.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}
