//! Issue 15, the dashboard in a real browser: the real `collector serve` on 127.0.0.1, fed signed reports
//! over HTTP, and Debian's Chromium (headless) loading `GET /`; the test reads the DOM Chromium rendered
//! (after the page's script fetched the summary and the history) and checks the counts, the release and
//! wave names, and that a hostile failure reason is shown as text, never as markup.
//!
//! Needs `chromium` (`scripts/test.sh` installs it); without it the test fails, naming the package.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ota_report::Outcome;

/// A reason a hostile device could send: markup and a script that would mark the page if they ran.
const HOSTILE: &str = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>";

/// Chromium's path, or a failure naming the package.
fn chromium() -> &'static str {
    for path in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("Chromium is not installed: `apt-get install chromium` (scripts/test.sh installs it)");
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=PATH`) and returns what
/// it printed. Virtual time lets the page's fetches and drawing finish before Chromium reads the page.
/// Its output goes to files (a pipe read only at the end would fill and stall it); a bound on the wall
/// clock (generous: it only keeps a wedged browser from hanging the suite) kills it.
fn run_chromium(url: &str, mode: &str, profile: &Path) -> String {
    let stdout = profile.join("stdout");
    let stderr = profile.join("stderr");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.join("profile").display()))
        .arg(mode)
        .arg(url)
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(180) {
            child.kill().ok();
            child.wait().ok();
            panic!("chromium did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "chromium: {}",
        std::fs::read_to_string(&stderr).unwrap()
    );
    std::fs::read_to_string(&stdout).unwrap()
}

/// The part of `dom` from the element whose attribute is `marker` to the next element with the same
/// attribute name (or the end).
fn section<'a>(dom: &'a str, marker: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page:\n{dom}"));
    let attribute = &marker[..marker.find('=').unwrap() + 1];
    let rest = &dom[start + marker.len()..];
    let end = rest
        .find(attribute)
        .map_or(dom.len(), |i| start + marker.len() + i);
    &dom[start..end]
}

/// The count a tile or cell shows: `data-count="KIND">` then the number (in a `<b>` for tiles).
fn count(html: &str, kind: &str) -> String {
    let marker = format!("data-count=\"{kind}\">");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {kind} count in:\n{html}"));
    let text = html[at + marker.len()..].trim_start_matches("<b>");
    text[..text.find('<').unwrap()].to_string()
}

/// Enrols devices 1..=5 and sends their reports: on board-a/stable 1.1.0 two commit, one rolls back
/// with a hostile reason, one fails with "disk full"; device 5 reports only on 1.0.0 (pending on 1.1.0).
async fn feed(db: &Db, server: &Server) {
    for n in 1..=5 {
        db.enroll(&device_key(n));
    }
    let client = reqwest::Client::new();
    let sends = [
        (5, "1.0.0", Outcome::Committed, ""),
        (1, "1.1.0", Outcome::Committed, ""),
        (2, "1.1.0", Outcome::Committed, ""),
        (3, "1.1.0", Outcome::RolledBack, HOSTILE),
        (4, "1.1.0", Outcome::Failed, "disk full"),
    ];
    for (n, to, outcome, reason) in sends {
        let key = device_key(n);
        let body = signed(&report(&key, 1, to, outcome, reason), &key);
        let (status, answer) = post(&client, &server.base, body).await;
        assert_eq!(status, 201, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_fleet_and_shows_a_hostile_reason_as_text() {
    chromium();
    let db = Db::new();
    let server = Server::start(&db.path, &[]);
    feed(&db, &server).await;
    let dom = rendered_dom(&server.base).await;

    assert!(
        dom.contains("2 release(s); updated"),
        "the script did not finish:\n{dom}"
    );
    let new = section(&dom, "data-release=\"board-a/stable/1.1.0\"");
    assert!(new.contains("board-a / stable / 1.1.0"), "{new}");
    assert!(new.contains("data-status=\"active\""), "{new}");
    for (kind, shown) in [
        ("devices", "4"),
        ("committed", "2"),
        ("rolled_back", "1"),
        ("failed", "1"),
        ("pending", "1"),
        ("converge", "not yet"),
    ] {
        assert_eq!(count(new, kind), shown, "tile {kind}");
    }
    let wave = section(new, "data-wave=\"none\"");
    assert!(wave.contains(">no wave<"), "{wave}");
    assert_eq!(
        (
            count(wave, "committed"),
            count(wave, "rolled_back"),
            count(wave, "failed")
        ),
        ("2".into(), "1".into(), "1".into())
    );
    assert!(new.contains("<svg"), "no chart drawn:\n{new}");
    assert!(new.contains(">disk full<"), "{new}");
    let old = section(&dom, "data-release=\"board-a/stable/1.0.0\"");
    assert!(old.contains("data-status=\"converged\""), "{old}");
    assert_eq!(count(old, "committed"), "1");

    // The hostile reason is there as text (escaped by the serializer), and nothing of it ran or parsed.
    let as_text = HOSTILE
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(new.contains(&as_text), "the reason is not shown as text:\n{new}");
    assert!(!dom.contains("<img"), "the reason became an element:\n{dom}");
    assert!(
        !dom.contains("<script>document"),
        "the reason became a script:\n{dom}"
    );
    assert!(
        dom.contains("<title>Fleet rollouts</title>"),
        "the title changed:\n{dom}"
    );
}

/// The page, its script and style sheet carry the Content-Security-Policy; the JSON it reads answers; a
/// screenshot renders (kept at `OTA_DASHBOARD_SCREENSHOT` when set, to look at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_self_contained_and_guarded() {
    chromium();
    let db = Db::new();
    let server = Server::start(&db.path, &[]);
    feed(&db, &server).await;
    let client = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let resp = client.get(format!("{}{path}", server.base)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let header = |name: &str| resp.headers()[name].to_str().unwrap().to_string();
        assert!(header("content-type").starts_with(kind), "{path}");
        assert_eq!(
            header("content-security-policy"),
            collector::dashboard::CONTENT_SECURITY_POLICY
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        // Nothing from elsewhere: no URL with a scheme, nor a protocol-relative one, in any asset (the SVG
        // namespace is a name, not a fetch).
        let body = resp
            .text()
            .await
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        for outside in ["http://", "https://", "\"//", "'//", "url("] {
            assert!(!body.contains(outside), "{path} refers outside: {outside}");
        }
        assert!(
            !body.contains("innerHTML") && !body.contains("outerHTML"),
            "{path}"
        );
    }
    let history: serde_json::Value = client
        .get(format!("{}/v1/history?buckets=5", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["buckets"], 5);
    assert_eq!(history["releases"][1]["to_version"], "1.1.0");
    assert_eq!(history["releases"][1]["waves"][0]["states"][4]["committed"], 2);
    let bad = client
        .get(format!("{}/v1/history?buckets=many", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    for write in ["/", "/v1/history", "/dashboard.js"] {
        let resp = client
            .post(format!("{}{write}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "POST {write}");
    }

    let profile = tempfile::tempdir().unwrap();
    let png = profile.path().join("dashboard.png");
    let url = format!("{}/", server.base);
    let mode = format!("--screenshot={}", png.display());
    let profile_dir = profile.path().to_owned();
    tokio::task::spawn_blocking(move || run_chromium(&url, &mode, &profile_dir))
        .await
        .unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("OTA_DASHBOARD_SCREENSHOT") {
        std::fs::write(keep, bytes).unwrap();
    }
}

/// The dashboard at `base` as Chromium rendered it (its DOM after the scripts ran).
async fn rendered_dom(base: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{base}/");
    tokio::task::spawn_blocking(move || run_chromium(&url, "--dump-dom", profile.path()))
        .await
        .unwrap()
}

/// Serves with a halt rule (its keys given when `keys`), sends reports on 1.2.0 that trip it (2 of 3
/// devices roll back), waits for the collector's action, and returns the page Chromium rendered, the
/// action as `summary --json` lists it, and the repository.
async fn rendered_after_the_rule(keys: bool) -> (String, serde_json::Value, Repo) {
    let db = Db::new();
    let repo = Repo::new();
    let server = serve_and_trip_the_rule(&db, &repo, keys, 1).await;
    // Read through the CLI, not `GET /v1/history`, so the page's history is computed after the action.
    let summary = wait_for_action(&db.path).await;
    let dom = rendered_dom(&server.base).await;
    assert!(
        dom.contains("1 release(s); updated"),
        "the script did not finish:\n{dom}"
    );
    (dom, summary["actions"][0].clone(), repo)
}

/// `at` of an action (RFC 3339) as the page writes times.
fn shown_time(action: &serde_json::Value) -> String {
    let at: chrono::DateTime<chrono::Utc> = action["at"].as_str().unwrap().parse().unwrap();
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The collector halts 1.2.0 by its rule before any device reports "skipped": the card reads halted,
/// with the time, and the reason the signed halt carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_a_release_the_collector_halted_as_halted_with_its_reason() {
    chromium();
    let (dom, action, repo) = rendered_after_the_rule(true).await;
    assert_eq!(action["action"], "halted", "{action}");
    let card = section(&dom, "data-release=\"board-a/stable/1.2.0\"");
    assert!(card.contains("data-status=\"halted\""), "{card}");
    assert!(!card.contains("data-alert="), "{card}");
    let listed = section(card, "data-action=\"halted\"");
    assert!(listed.contains("halted by the collector"), "{listed}");
    assert!(listed.contains(&shown_time(&action)), "{listed}");
    let (state, reason) = repo.standing();
    assert_eq!(state, ota_release::RolloutState::Halted);
    assert!(reason.starts_with("collector rule rollback_percent=60,min_reports=3: 2 of 3 rolled back"));
    assert!(
        listed.contains(&reason),
        "the published reason {reason:?} is not shown:\n{listed}"
    );
    assert!(listed.contains("published "), "{listed}");
    // The devices alone would make it converged (all three reported, none skipped).
    assert_eq!(count(card, "skipped"), "0");
}

/// Without the halt keys the rule only alerts: the card carries the alert marker and why, and reads as
/// its devices make it (not halted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_marks_an_alert_only_action() {
    chromium();
    let (dom, action, repo) = rendered_after_the_rule(false).await;
    assert_eq!(action["action"], "alerted", "{action}");
    let card = section(&dom, "data-release=\"board-a/stable/1.2.0\"");
    assert!(card.contains("data-status=\"converged\""), "{card}");
    assert!(card.contains("data-alert=\"true\""), "{card}");
    let listed = section(card, "data-action=\"alerted\"");
    assert!(listed.contains(&shown_time(&action)), "{listed}");
    assert!(
        listed.contains("collector rule rollback_percent=60,min_reports=3: 2 of 3 rolled back"),
        "{listed}"
    );
    assert!(listed.contains("no rollout-control key: not halted"), "{listed}");
    assert_eq!(repo.standing().0, ota_release::RolloutState::Active);
}
