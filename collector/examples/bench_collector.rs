//! Load generator and store filler for `scripts/bench-collector.sh` (issue 15's benchmark).
//!
//! - `ingest DB URL DEVICES REPORTS_PER_DEVICE`: enrols DEVICES keys in DB, signs every report up front,
//!   then each device sends its reports in order, all devices at once, each over its own connection, to
//!   a running `collector serve`; prints `reports N seconds S per_second R client_cpu_ticks T` (T: this
//!   process's CPU while the clock ran). Every request's bytes are built before the clock starts and
//!   sent over a plain TCP stream (no HTTP client library), so the client costs little of the cores it
//!   shares with the server.
//! - `fill DB DEVICES REPORTS_PER_DEVICE`: stores reports straight through the `Store` trait (no HTTP,
//!   no signature check: only to give `summary` a large table) from `FILL_THREADS` threads (default
//!   16), devices cycling through 4 releases.
//!
//! DB is anything `open_store` takes: a SQLite file or a `postgres://` URL.
//! - `pad DB COPIES`: adds COPIES copies of every stored report straight by SQL, each copy's sequence
//!   number 1000 x k above the original's (same device, release, outcome): the store then holds what
//!   storing them through `Store::insert_report` would leave, except `release_status.sequence` and
//!   `devices.last_sequence`, which the summary does not read. Only to reach 1,000,000 reports quickly.
//! - `summary DB RUNS`: times `Store::summary` RUNS times, prints each in ms.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeZone as _, Utc};
use collector::{open_store, StoredReport};
use ota_report::{
    Channel, Envelope, HardwareId, InstallMethod, Outcome, Reason, Report, ReportSigner as _, TargetName,
    Version,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

fn key(i: u64) -> ed25519_dalek::SigningKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

fn report(key: &ed25519_dalek::SigningKey, sequence: u64) -> Report {
    let release = sequence % 4;
    let outcome = match (sequence * 7 + release) % 10 {
        0 => Outcome::RolledBack,
        1 => Outcome::Failed,
        _ => Outcome::Committed,
    };
    let reason = match outcome {
        Outcome::Committed => String::new(),
        _ => format!("health check {} failed", sequence % 3),
    };
    Report {
        schema: ota_report::SCHEMA_VERSION,
        device_id: key.public_key().device_id(),
        sequence,
        hardware: HardwareId::new("board-a").unwrap(),
        channel: Channel::new("stable").unwrap(),
        from_version: Version::new(1, 0, 0),
        to_version: Version::new(1, 1, release),
        target: TargetName::new(format!("board-a/stable/1.1.{release}/fw.img")).unwrap(),
        outcome,
        reason: Reason::new(reason).unwrap(),
        started: Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap(),
        finished: Utc.with_ymd_and_hms(2026, 12, 7, 9, 3, 0).unwrap(),
        bytes_downloaded: 1 << 20,
        install_method: Some(InstallMethod::Delta),
        reports_dropped: 0,
    }
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i)
        .map(String::as_str)
        .expect("missing argument (see the doc)")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let db = arg(&args, 2);
    match arg(&args, 1) {
        "ingest" => ingest(
            db,
            arg(&args, 3),
            arg(&args, 4).parse().unwrap(),
            arg(&args, 5).parse().unwrap(),
        ),
        "fill" => fill(db, arg(&args, 3).parse().unwrap(), arg(&args, 4).parse().unwrap()),
        "pad" => pad(db, arg(&args, 3).parse().unwrap()),
        "summary" => {
            let store = open_store(db).unwrap();
            for _ in 0..arg(&args, 3).parse::<u32>().unwrap() {
                let t = Instant::now();
                let s = store.summary().unwrap();
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                println!("summary_ms {ms:.1} releases {}", s.releases.len());
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

fn ingest(db: &str, url: &str, devices: u64, per_device: u64) {
    let store = open_store(db).unwrap();
    let keys: Vec<_> = (0..devices).map(key).collect();
    for k in &keys {
        store.enroll(&k.public_key(), Utc::now()).unwrap();
    }
    let first = store.report_count().unwrap();
    let bodies: Vec<Vec<Vec<u8>>> = keys
        .iter()
        .map(|k| {
            let next = store
                .device(&k.public_key().device_id())
                .unwrap()
                .unwrap()
                .last_sequence
                .unwrap_or(0)
                + 1;
            (next..next + per_device)
                .map(|s| Envelope::sign(&report(k, s), k).unwrap().to_json())
                .collect()
        })
        .collect();
    // Each request's bytes built before the clock starts: the client only writes them and reads the
    // answer (it shares the cores with the server it measures).
    let host = url.trim_start_matches("http://").to_string();
    let requests: Vec<Vec<Vec<u8>>> = bodies
        .into_iter()
        .map(|device| device.into_iter().map(|b| request(&host, &b)).collect())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cpu_before = cpu_ticks();
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|device_requests| {
                let host = host.clone();
                tokio::spawn(async move {
                    // One connection per device, as a real device has.
                    let stream = tokio::net::TcpStream::connect(host.as_str()).await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    let mut stream = tokio::io::BufReader::new(stream);
                    for request in device_requests {
                        stream.get_mut().write_all(&request).await.unwrap();
                        let (status, body) = read_response(&mut stream).await;
                        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let client_ticks = cpu_ticks() - cpu_before;
    let n = devices * per_device;
    assert_eq!(store.report_count().unwrap() - first, n, "every report stored");
    println!(
        "reports {n} seconds {secs:.2} per_second {:.0} client_cpu_ticks {client_ticks}",
        n as f64 / secs
    );
}

/// A `POST /v1/reports` of `body`, as bytes on the wire.
fn request(host: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/reports HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Reads one HTTP/1.1 response (the collector always sends a content-length): its status and body.
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(stream: &mut R) -> (u16, Vec<u8>) {
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    (status, body)
}

/// This process's CPU time so far (user + system), in clock ticks (`getconf CLK_TCK`).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name (in parentheses, which may hold spaces): utime is the 14th
    // field of the line, stime the 15th.
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn fill(db: &str, devices: u64, per_device: u64) {
    let store: Arc<dyn collector::Store> = Arc::from(open_store(db).unwrap());
    // One envelope's worth of text: the column is as large as in real use.
    let sample = Envelope::sign(&report(&key(0), 1), &key(0)).unwrap().to_json();
    let envelope = String::from_utf8(sample).unwrap();
    let started = Instant::now();
    // FILL_THREADS callers at once (default 16), each with its own devices: the stores' group commits
    // batch them as they would concurrent HTTP requests.
    let threads: u64 = std::env::var("FILL_THREADS").map_or(16, |v| v.parse().unwrap());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (store, envelope) = (store.clone(), envelope.clone());
            std::thread::spawn(move || {
                for d in (t..devices).step_by(threads as usize) {
                    let k = key(1_000_000 + d);
                    store.enroll(&k.public_key(), Utc::now()).unwrap();
                    for s in 1..=per_device {
                        let stored = StoredReport {
                            report: report(&k, s),
                            envelope: envelope.clone(),
                            received_at: Utc::now(),
                        };
                        store.insert_report(&stored).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let n = devices * per_device;
    let secs = started.elapsed().as_secs_f64();
    println!("filled {n} seconds {secs:.2} per_second {:.0}", n as f64 / secs);
}

const PAD_COLUMNS: &str = "received_at, hardware, channel, from_version, to_version, target, outcome,
    reason, started_at, finished_at, bytes_downloaded, install_method, wave, envelope";

fn pad(db: &str, copies: i64) {
    let started = Instant::now();
    let sql = |p: &str| {
        format!(
            "INSERT INTO reports (device_id, sequence, {PAD_COLUMNS})
             SELECT device_id, sequence + 1000 * CAST({p} AS BIGINT), {PAD_COLUMNS} FROM reports WHERE sequence <= 1000"
        )
    };
    if db.starts_with("postgres") {
        let mut client = postgres::Client::connect(db, postgres::NoTls).unwrap();
        for k in 1..=copies {
            client.execute(&sql("$1"), &[&k]).unwrap();
        }
        client.batch_execute("VACUUM ANALYZE").unwrap();
    } else {
        let conn = rusqlite::Connection::open(db).unwrap();
        for k in 1..=copies {
            conn.execute(&sql("?1"), [k]).unwrap();
        }
    }
    println!(
        "padded copies {copies} seconds {:.2}",
        started.elapsed().as_secs_f64()
    );
}
