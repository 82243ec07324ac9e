//! Issue 16: keys in a real SoftHSM2 token. Generated inside the token, signatures checked in pure
//! Rust; each refusal (wrong PIN, missing token, missing module, missing key, default PIN, PIN file
//! others can read, pin-value in the URI) with its own error.
//!
//! One SoftHSM2 configuration per test binary: PKCS#11 initialises a module once per process and
//! SoftHSM2 reads `SOFTHSM2_CONF` and its token directory then, so every test's token is made first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::OnceLock;

use ota_pkcs11::{generate_key_pair, Error, KeyAlgorithm, Pkcs11Uri, PublicKey, TokenConfig, TokenKey};
use ota_testbed::SoftHsm;

const PIN: &str = "k7-Rq2vw-test";

/// Each test's token: label and user PIN.
const TOKENS: &[(&str, &str)] = &[
    ("p256", PIN),
    ("ed", PIN),
    ("sealed", PIN),
    ("refusals", PIN),
    ("default-pin", "1234"),
];

fn hsm() -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let hsm = SoftHsm::new();
        for (label, pin) in TOKENS {
            hsm.init_token(label, "so-pin-9f3k", pin);
        }
        let (k, v) = hsm.env();
        std::env::set_var(k, v);
        hsm
    })
}

/// A URI naming key `k1` in a test's own token, with a private PIN file holding `user_pin`.
fn token(label: &str, user_pin: &str) -> (Pkcs11Uri, TokenConfig) {
    let hsm = hsm();
    let pin = hsm.pin_file(&format!("{label}.pin"), user_pin, 0o600);
    let uri = format!("pkcs11:token={label};object=k1?pin-source={}", pin.display());
    let config = TokenConfig {
        module_path: Some(SoftHsm::module()),
        pin_file: None,
    };
    (uri.parse().unwrap(), config)
}

#[test]
fn p256_key_generated_in_the_token_signs_der_that_p256_verifies() {
    use p256::ecdsa::signature::Verifier as _;
    let (uri, config) = token("p256", PIN);
    let public = generate_key_pair(&uri, &config, KeyAlgorithm::EcdsaP256).unwrap();
    let key = TokenKey::open(&uri, &config).unwrap();
    assert_eq!(key.public_key(), &public);
    let sig = key.sign(b"signed metadata").unwrap();
    let PublicKey::EcdsaP256(p) = public else {
        panic!("not p256")
    };
    let vk = p256::ecdsa::VerifyingKey::from(p);
    let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
    vk.verify(b"signed metadata", &sig).unwrap();
    assert!(vk.verify(b"other metadata", &sig).is_err());
    // The same name again is refused: a key is never duplicated or replaced.
    let e = generate_key_pair(&uri, &config, KeyAlgorithm::EcdsaP256).unwrap_err();
    assert!(matches!(e, Error::KeyExists { .. }), "{e}");
}

/// The private half of a generated key is sensitive and has never been extractable, read back from the
/// token through cryptoki directly.
#[test]
fn a_generated_private_key_never_leaves_the_token() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;

    let (uri, config) = token("sealed", PIN);
    generate_key_pair(&uri, &config, KeyAlgorithm::Ed25519).unwrap();
    let ctx = Pkcs11::new(SoftHsm::module()).unwrap();
    // Already initialised in this process by ota-pkcs11: that answer is expected.
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == "sealed")
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&PIN.to_string().into()));
    let template = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(b"k1".to_vec()),
    ];
    let key = session.find_objects(&template).unwrap()[0];
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
            ],
        )
        .unwrap();
    assert_eq!(attrs.len(), 3, "{attrs:?}");
    for a in attrs {
        match a {
            Attribute::Sensitive(v) => assert!(v),
            Attribute::Extractable(v) => assert!(!v),
            Attribute::NeverExtractable(v) => assert!(v),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn ed25519_key_generated_in_the_token_signs_what_dalek_verifies() {
    let (uri, config) = token("ed", PIN);
    let public = generate_key_pair(&uri, &config, KeyAlgorithm::Ed25519).unwrap();
    let key = TokenKey::open(&uri, &config).unwrap();
    let sig = key.sign(b"report").unwrap();
    let PublicKey::Ed25519(raw) = public else {
        panic!("not ed25519")
    };
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    vk.verify_strict(b"report", &sig).unwrap();
}

#[test]
fn each_refusal_says_which() {
    let (uri, config) = token("refusals", PIN);
    generate_key_pair(&uri, &config, KeyAlgorithm::Ed25519).unwrap();
    let hsm = hsm();

    let wrong = hsm.pin_file("wrong.pin", "not-the-pin", 0o600);
    let mut u = uri.clone();
    u.pin_source = Some(wrong);
    let e = TokenKey::open(&u, &config).unwrap_err();
    assert!(matches!(e, Error::WrongPin { .. }), "{e}");
    assert_eq!(e.to_string(), "wrong PIN for PKCS#11 token refusals");

    let mut u = uri.clone();
    u.token = Some("absent".into());
    let e = TokenKey::open(&u, &config).unwrap_err();
    assert!(e.to_string().contains("token token=absent is missing"), "{e}");

    let missing = TokenConfig {
        module_path: Some("/nonexistent/libpkcs11.so".into()),
        pin_file: None,
    };
    let e = TokenKey::open(&uri, &missing).unwrap_err();
    assert!(
        e.to_string()
            .contains("module /nonexistent/libpkcs11.so is missing"),
        "{e}"
    );

    let mut u = uri.clone();
    u.object = Some("nokey".into());
    let e = TokenKey::open(&u, &config).unwrap_err();
    assert!(matches!(e, Error::KeyNotFound { .. }), "{e}");
    assert!(e.to_string().contains("no private key object=nokey"), "{e}");

    let open = hsm.pin_file("open.pin", PIN, 0o644);
    let mut u = uri.clone();
    u.pin_source = Some(open);
    let e = TokenKey::open(&u, &config).unwrap_err();
    assert!(
        e.to_string().contains("accessible to group or others (mode 644)"),
        "{e}"
    );

    let e = "pkcs11:token=refusals?pin-value=k7"
        .parse::<Pkcs11Uri>()
        .unwrap_err();
    assert!(
        e.to_string().contains("refusing a pkcs11 URI with pin-value"),
        "{e}"
    );
}

#[test]
fn a_token_with_a_default_pin_is_refused_before_login() {
    let (uri, config) = token("default-pin", "1234");
    let e = TokenKey::open(&uri, &config).unwrap_err();
    assert!(matches!(e, Error::DefaultPin { .. }), "{e}");
    assert!(e.to_string().contains("well-known default PIN"), "{e}");
}
