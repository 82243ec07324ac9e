//! Signatures per second through the path repo-tool signs with: tough's `KeySource` → `Sign`, for a
//! key file (`LocalKeySource`) and for keys in PKCS#11 tokens (`Pkcs11KeySource`). Used by
//! `scripts/bench-pkcs11.sh`, which sets up the SoftHSM2 tokens and prints the table.
//!
//! usage: sign_rate N MSG_BYTES KEY...   (KEY: a .pk8 file or a pkcs11: URI; module from
//! OTA_PKCS11_MODULE, PIN from the URI's pin-source). Prints `KEY<TAB>signatures/s<TAB>µs/signature`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ota_publish::{KeyRef, KeySource, Pkcs11KeySource};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [n, len, keys @ ..] = args.as_slice() else {
        panic!("usage: sign_rate N MSG_BYTES KEY...");
    };
    let n: u32 = n.parse().expect("N");
    let msg = vec![0x5a_u8; len.parse().expect("MSG_BYTES")];
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    for key in keys {
        let source: Box<dyn KeySource> = match key.parse::<KeyRef>().expect("key") {
            KeyRef::File(path) => Box::new(tough::key_source::LocalKeySource { path }),
            KeyRef::Pkcs11(uri) => Box::new(Pkcs11KeySource { uri, module: None }),
        };
        let sign = rt.block_on(source.as_sign()).expect("open key");
        // One signature first: login and the first operation are not what is measured.
        rt.block_on(sign.sign(&msg, &rng)).expect("sign");
        let start = Instant::now();
        for _ in 0..n {
            rt.block_on(sign.sign(&msg, &rng)).expect("sign");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{key}\t{:.0}\t{:.1}",
            f64::from(n) / secs,
            secs * 1e6 / f64::from(n)
        );
    }
}
