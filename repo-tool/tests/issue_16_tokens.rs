//! Issue 16, "release engineer's keys in hardware": repo-tool signs with keys generated inside real
//! SoftHSM2 tokens (`keys generate-in-token`, `--key pkcs11:...`): the root offline on one token
//! (ECDSA P-256), targets on another (Ed25519), a targets threshold of 2 met by two tokens in turn
//! through `add --stage` / `role sign` / `role publish`; python-tuf's ngclient and the project's own
//! TUF client (ota-tuf) verify the result. A wrong PIN, a missing token, a default PIN and a PIN in
//! the URI are each refused with their own message.
//!
//! Each test has its own SoftHSM2 configuration and token directory (SOFTHSM2_CONF, passed to every
//! repo-tool run); PINs reach repo-tool through pin-source files (mode 0600) or OTA_PKCS11_PIN.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{add_args, ngclient, sha256_file, succeeded};
use ota_testbed::SoftHsm;

const SO_PIN: &str = "so-4kq-93jd";

/// A SoftHSM2 token set for one test, with a key URI per token.
struct Tokens {
    hsm: SoftHsm,
    dir: tempfile::TempDir,
}

impl Tokens {
    fn new(tokens: &[(&str, &str)]) -> Tokens {
        let hsm = SoftHsm::new();
        for (label, pin) in tokens {
            hsm.init_token(label, SO_PIN, pin);
        }
        let dir = tempfile::tempdir().unwrap();
        Tokens { hsm, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `pkcs11:token=TOKEN;object=OBJECT?pin-source=...` with a 0600 PIN file holding `pin`.
    fn uri(&self, token: &str, object: &str, pin: &str) -> String {
        let pin_file = self
            .hsm
            .pin_file(&format!("{token}.{object}.{pin}.pin"), pin, 0o600);
        format!(
            "pkcs11:token={token};object={object}?pin-source={}",
            pin_file.display()
        )
    }

    /// Runs repo-tool in the test directory with this token set and the module in the environment.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let (k, v) = self.hsm.env();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_repo-tool"));
        cmd.current_dir(self.path())
            .env(k, v)
            .env("OTA_PKCS11_MODULE", SoftHsm::module())
            .env_remove("OTA_PKCS11_PIN")
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args, &[]))
    }

    fn fails(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run(args, env);
        assert!(!out.status.success(), "{args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }
}

#[test]
fn issue_16_token_keys_sign_root_and_targets_and_clients_verify() {
    let t = Tokens::new(&[
        ("ota-root", "root-pin-77x"),
        ("ota-targets", "tgt-pin-31q"),
        ("ota-targets-2", "tgt2-pin-58w"),
    ]);
    let root = t.uri("ota-root", "root-1", "root-pin-77x");
    let targets = t.uri("ota-targets", "targets-1", "tgt-pin-31q");
    // The second targets token gets its module from the URI, not the environment.
    let targets2 = format!(
        "{}&module-path={}",
        t.uri("ota-targets-2", "targets-2", "tgt2-pin-58w"),
        SoftHsm::module().display()
    );

    let gen = |uri: &str, alg: &str, name: &str| {
        let out = t.ok(&[
            "keys",
            "generate-in-token",
            "--uri",
            uri,
            "--algorithm",
            alg,
            "--dir",
            "keys",
            "--name",
            name,
        ]);
        assert!(out.starts_with(&format!("{name}\t")), "{out}");
    };
    gen(&root, "ecdsa-p256", "root");
    gen(&targets, "ed25519", "targets");
    gen(&targets2, "ecdsa-p256", "targets2");
    let pub_json = fs::read_to_string(t.path().join("keys/root.pub.json")).unwrap();
    assert!(
        pub_json.contains("ecdsa-sha2-nistp256") && pub_json.contains("BEGIN PUBLIC KEY"),
        "{pub_json}"
    );
    t.ok(&["keys", "generate", "--dir", "keys", "snapshot", "timestamp"]);

    // The root signs offline on its token; the targets key is named by its URI (read from the token).
    t.ok(&[
        "init",
        "--repo",
        "repo",
        "--no-qr",
        "--root-key",
        "keys/root.pub.json",
        "--targets-key",
        &targets,
        "--snapshot-key",
        "keys/snapshot.pub.json",
        "--timestamp-key",
        "keys/timestamp.pub.json",
        "--key",
        &root,
        "--key",
        &targets,
        "--keys-dir",
        "keys",
    ]);
    fs::create_dir(t.path().join("img")).unwrap();
    fs::write(t.path().join("img/fw-1.0.0.bin"), ota_testbed::noise(1, 4000)).unwrap();
    fs::write(t.path().join("img/fw-1.1.0.bin"), ota_testbed::noise(2, 4000)).unwrap();
    let add = |img: &str, version: &str, extra: &[&str]| {
        let mut args = add_args(img, version, "gw", &["--deltas", "0"]);
        args.extend(extra);
        t.ok(&args)
    };
    add("img/fw-1.0.0.bin", "1.0.0", &["--key", &targets]);

    // Root rotation signed on the root token: targets now needs both tokens.
    t.ok(&[
        "root",
        "stage",
        "--repo",
        "repo",
        "--out",
        "root2.json",
        "--add-key",
        "targets=keys/targets2.pub.json",
        "--threshold",
        "targets=2",
    ]);
    t.ok(&["root", "sign", "root2.json", "--repo", "repo", "--key", &root]);
    // Publishing re-signs targets with its new keys: two tokens in one process (one module, two
    // slots, two logins).
    t.ok(&[
        "root",
        "publish",
        "--repo",
        "repo",
        "root2.json",
        "--keys-dir",
        "keys",
        "--key",
        &targets,
        "--key",
        &targets2,
    ]);

    // Threshold 2 met by two tokens in turn; the second one's PIN from the environment.
    let out = add(
        "img/fw-1.1.0.bin",
        "1.1.0",
        &["--stage", "stage.json", "--key", &targets],
    );
    assert!(out.contains("1 of 2 signature(s) present"), "{out}");
    let targets2_env_pin = "pkcs11:token=ota-targets-2;object=targets-2";
    let out = t.run(
        &[
            "role",
            "sign",
            "--file",
            "stage.json",
            "--repo",
            "repo",
            "--key",
            targets2_env_pin,
        ],
        &[("OTA_PKCS11_PIN", "tgt2-pin-58w")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 of 2 signature(s) present; ready"), "{stdout}");
    t.ok(&[
        "role",
        "publish",
        "--repo",
        "repo",
        "--file",
        "stage.json",
        "--keys-dir",
        "keys",
    ]);
    t.ok(&["verify", "--repo", "repo"]);

    // python-tuf's ngclient, from the first root through the rotation.
    let repo = t.path().join("repo");
    let nginx = ota_testbed::Nginx::serve(&repo);
    let root1 = repo.join("metadata/1.root.json");
    let names = ["gw/stable/fw-1.0.0.bin", "gw/stable/fw-1.1.0.bin"];
    let run = ngclient(
        &nginx.url(),
        &root1,
        &t.path().join("ng-cache"),
        &t.path().join("ng-dl"),
        &names,
    );
    assert!(run.ok, "ngclient: {}", run.stderr);
    assert_eq!(
        run.target(names[1])["sha256"],
        sha256_file(&t.path().join("img/fw-1.1.0.bin"))
    );

    // The device's TUF client (pure Rust) too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let md = t.path().join("device");
        ota_tuf::Client::init(&md, &fs::read(&root1).unwrap()).unwrap();
        let config = ota_tuf::ClientConfig::new(
            format!("{}/metadata", nginx.url()),
            format!("{}/targets", nginx.url()),
        );
        let mut client = ota_tuf::Client::load(&md, config).unwrap();
        client.refresh().await.unwrap();
        for name in names {
            let info = client
                .target(name)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name} not found"));
            let mut body = Vec::new();
            client.download_target(&info, &mut body).await.unwrap();
            assert_eq!(body.len() as u64, info.length);
        }
    });
}

#[test]
fn issue_16_token_refusals_name_their_cause() {
    let t = Tokens::new(&[("ota-targets", "tgt-pin-31q"), ("factory", "1234")]);
    let good = t.uri("ota-targets", "targets-1", "tgt-pin-31q");
    let good_uri = good.as_str();
    let generate = |name: &'static str| {
        [
            "keys",
            "generate-in-token",
            "--uri",
            good_uri,
            "--dir",
            "keys",
            "--name",
            name,
        ]
    };
    t.ok(&generate("targets"));
    let sign = |key: &str, env: &[(&str, &str)]| {
        t.fails(&["role", "sign", "--file", "absent.json", "--key", key], env)
    };

    let wrong = t.uri("ota-targets", "targets-1", "not-the-pin");
    let err = sign(&wrong, &[]);
    assert!(err.contains("wrong PIN for PKCS#11 token ota-targets"), "{err}");

    let missing = good.replace("token=ota-targets", "token=ota-absent");
    let err = sign(&missing, &[]);
    assert!(err.contains("PKCS#11 token token=ota-absent is missing"), "{err}");

    let factory = t.uri("factory", "k", "1234");
    let err = sign(&factory, &[]);
    assert!(
        err.contains("refusing a well-known default PIN for PKCS#11 token factory"),
        "{err}"
    );
    let err = sign(
        "pkcs11:token=ota-targets;object=targets-1",
        &[("OTA_PKCS11_PIN", "0000")],
    );
    assert!(err.contains("well-known default PIN"), "{err}");

    let err = sign(
        "pkcs11:token=ota-targets;object=targets-1?pin-value=tgt-pin-31q",
        &[],
    );
    assert!(err.contains("refusing a pkcs11 URI with pin-value"), "{err}");
    assert!(!err.contains("tgt-pin-31q"), "the PIN was echoed: {err}");

    let err = sign("pkcs11:token=ota-targets;object=targets-1", &[]);
    assert!(err.contains("no PIN for PKCS#11 token ota-targets"), "{err}");

    let nokey = good.replace("object=targets-1", "object=absent");
    let err = sign(&nokey, &[]);
    assert!(
        err.contains("no private key object=absent in PKCS#11 token ota-targets"),
        "{err}"
    );

    let err = sign(&good, &[("OTA_PKCS11_MODULE", "/nonexistent/pkcs11.so")]);
    assert!(
        err.contains("PKCS#11 module /nonexistent/pkcs11.so is missing"),
        "{err}"
    );
    // A file that is no module: the loader's reason follows the message.
    let fake = t.path().join("fake.so");
    fs::write(&fake, b"not a shared library").unwrap();
    let err = sign(&good, &[("OTA_PKCS11_MODULE", fake.to_str().unwrap())]);
    assert!(
        err.contains("fake.so could not be loaded: libloading error"),
        "{err}"
    );

    let err = t.fails(&generate("again"), &[]);
    assert!(err.contains("already holds a key object=targets-1"), "{err}");
}
