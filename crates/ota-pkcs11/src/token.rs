//! Opening a token (module, slot, login) and the key in it: signing, and generating a key pair that
//! never leaves the token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::pin::Pin;
use crate::public::{KeyAlgorithm, PublicKey, ED25519_PARAMS, P256_PARAMS};
use crate::uri::Pkcs11Uri;

/// What a URI may leave out: the module and the PIN file (from a config file, say).
#[derive(Debug, Clone, Default)]
pub struct TokenConfig {
    /// The module, when the URI has no `module-path`.
    pub module_path: Option<PathBuf>,
    /// The PIN file, when the URI has no `pin-source` (the environment variable comes after both).
    pub pin_file: Option<PathBuf>,
}

/// A signing key in a token, logged in and ready. Signing goes through one session at a time.
pub struct TokenKey {
    session: Mutex<Session>,
    key: ObjectHandle,
    public: PublicKey,
    token: String,
    object: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("token", &self.token)
            .field("object", &self.object)
            .field("algorithm", &self.public.algorithm())
            .finish()
    }
}

impl TokenKey {
    /// Opens the private key `uri` names: loads the module, finds the one matching token, logs in
    /// with the PIN (URI `pin-source`, then `config.pin_file`, then [`crate::PIN_ENV`]) and finds
    /// the one matching key and its public half.
    pub fn open(uri: &Pkcs11Uri, config: &TokenConfig) -> Result<TokenKey> {
        let (session, token) = open_session(uri, config, SessionKind::ReadOnly)?;
        let object = uri.object_description();
        let key = find_one(&session, uri, ObjectClass::PRIVATE_KEY, &token)?;
        let public_handle = find_one(&session, uri, ObjectClass::PUBLIC_KEY, &token)?;
        let public = read_public(&session, public_handle, &token, &object)?;
        Ok(TokenKey {
            session: Mutex::new(session),
            key,
            public,
            token,
            object,
        })
    }

    /// The key's public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The token's label and the key's attributes, for messages.
    pub fn describe(&self) -> String {
        format!("{} in token {}", self.object, self.token)
    }

    /// Signs `msg` in the token and returns the signature as TUF encodes it (see
    /// [`PublicKey::tuf_public`]): DER for ECDSA P-256 (SHA-256 computed here, the digest signed with
    /// `CKM_ECDSA`), 64 bytes for Ed25519 (`CKM_EDDSA` over the whole message).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let raw = match self.public {
            PublicKey::EcdsaP256(_) => session.sign(&Mechanism::Ecdsa, self.key, &Sha256::digest(msg)),
            PublicKey::Ed25519(_) => {
                let params = EddsaParams::new(EddsaSignatureScheme::Pure);
                session.sign(&Mechanism::Eddsa(params), self.key, msg)
            }
        }
        .map_err(|source| token_error(&self.token, "signing", source))?;
        self.public
            .tuf_signature(raw)
            .map_err(|why| Error::UnsupportedKey {
                token: self.token.clone(),
                object: self.object.clone(),
                why,
            })
    }
}

/// Generates a key pair inside the token `uri` names, labelled with its `object` and `id`: the
/// private half is sensitive and not extractable, so it never leaves the token. Refuses when a key
/// with that label or id already exists. Returns the public half.
pub fn generate_key_pair(
    uri: &Pkcs11Uri,
    config: &TokenConfig,
    algorithm: KeyAlgorithm,
) -> Result<PublicKey> {
    if uri.object.is_none() && uri.id.is_none() {
        return Err(Error::MalformedUri {
            uri: uri.to_string(),
            why: "name the new key with object= (and id= if you like)".into(),
        });
    }
    let (session, token) = open_session(uri, config, SessionKind::ReadWrite)?;
    let object = uri.object_description();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        if !find(&session, uri, class, &token)?.is_empty() {
            return Err(Error::KeyExists { token, object });
        }
    }
    let (mechanism, params) = match algorithm {
        KeyAlgorithm::EcdsaP256 => (Mechanism::EccKeyPairGen, P256_PARAMS),
        KeyAlgorithm::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS),
    };
    let mut public_template = vec![
        Attribute::Token(true),
        Attribute::Verify(true),
        Attribute::EcParams(params.to_vec()),
    ];
    let mut private_template = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ];
    let naming = naming_attributes(uri);
    public_template.extend(naming.iter().cloned());
    private_template.extend(naming);
    let (public_handle, _) = session
        .generate_key_pair(&mechanism, &public_template, &private_template)
        .map_err(|source| token_error(&token, "key pair generation", source))?;
    read_public(&session, public_handle, &token, &object)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SessionKind {
    ReadOnly,
    ReadWrite,
}

/// Loads the module, finds the token and logs in as its user.
fn open_session(uri: &Pkcs11Uri, config: &TokenConfig, kind: SessionKind) -> Result<(Session, String)> {
    let module = uri
        .module_path
        .as_ref()
        .or(config.module_path.as_ref())
        .ok_or_else(|| Error::NoModulePath { uri: uri.to_string() })?;
    let context = load_module(module)?;
    let (slot, token) = find_token(&context, uri, module)?;
    let pin = resolve_pin(uri, config, &token)?;
    let info = context
        .get_token_info(slot)
        .map_err(|source| token_error(&token, "reading token information", source))?;
    if info.user_pin_locked() {
        return Err(Error::TokenLocked { token });
    }
    if !info.user_pin_initialized() {
        return Err(Error::PinNotInitialized { token });
    }
    let session = match kind {
        SessionKind::ReadOnly => context.open_ro_session(slot),
        SessionKind::ReadWrite => context.open_rw_session(slot),
    }
    .map_err(|source| token_error(&token, "opening a session", source))?;
    let auth = AuthPin::from(pin.expose());
    match session.login(UserType::User, Some(&auth)) {
        // Login state is per token and application: a second key of the same token is already in.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok((session, token)),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(Error::WrongPin { token }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Error::TokenLocked { token }),
        Err(source) => Err(token_error(&token, "login", source)),
    }
}

/// The PIN from the URI's `pin-source`, else the configured file, else the environment.
fn resolve_pin(uri: &Pkcs11Uri, config: &TokenConfig, token: &str) -> Result<Pin> {
    if let Some(path) = uri.pin_source.as_ref().or(config.pin_file.as_ref()) {
        return Pin::from_file(path, token);
    }
    Pin::from_env(crate::PIN_ENV, token)?.ok_or_else(|| Error::NoPin { token: token.into() })
}

/// The module at `path`, loaded and initialised once per process: PKCS#11 allows one
/// `C_Initialize` per application, and several keys may live behind the same module.
fn load_module(path: &Path) -> Result<Pkcs11> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(context) = modules.get(path) {
        return Ok(context.clone());
    }
    if !path.exists() {
        return Err(Error::ModuleMissing {
            path: path.to_owned(),
        });
    }
    let load_err = |source| Error::ModuleLoad {
        path: path.to_owned(),
        source,
    };
    let context = Pkcs11::new(path).map_err(load_err)?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(load_err(e)),
    }
    modules.insert(path.to_owned(), context.clone());
    Ok(context)
}

/// The one slot whose token matches the URI's token attributes, and the token's label.
fn find_token(context: &Pkcs11, uri: &Pkcs11Uri, module: &Path) -> Result<(Slot, String)> {
    let wanted = uri.token_description();
    let slots = context
        .get_slots_with_token()
        .map_err(|source| token_error(&wanted, "listing slots", source))?;
    let mut found = Vec::new();
    for slot in slots {
        let info = context
            .get_token_info(slot)
            .map_err(|source| token_error(&wanted, "reading token information", source))?;
        let label = info.label().trim_end().to_string();
        let matches =
            |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have.trim_end());
        if matches(&uri.token, &label)
            && matches(&uri.manufacturer, info.manufacturer_id())
            && matches(&uri.serial, info.serial_number())
            && matches(&uri.model, info.model())
            && uri.slot_id.is_none_or(|id| id == slot.id())
        {
            found.push((slot, label));
        }
    }
    match found.len() {
        0 => Err(Error::TokenMissing {
            token: wanted,
            module: module.to_owned(),
        }),
        1 => found.pop().ok_or(Error::TokenMissing {
            token: wanted,
            module: module.to_owned(),
        }),
        count => Err(Error::AmbiguousToken { token: wanted, count }),
    }
}

/// The label and id attributes a URI names a key by.
fn naming_attributes(uri: &Pkcs11Uri) -> Vec<Attribute> {
    let mut attrs = Vec::new();
    if let Some(label) = &uri.object {
        attrs.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        attrs.push(Attribute::Id(id.clone()));
    }
    attrs
}

fn find(session: &Session, uri: &Pkcs11Uri, class: ObjectClass, token: &str) -> Result<Vec<ObjectHandle>> {
    let mut template = vec![Attribute::Class(class)];
    template.extend(naming_attributes(uri));
    session
        .find_objects(&template)
        .map_err(|source| token_error(token, "searching keys", source))
}

fn find_one(session: &Session, uri: &Pkcs11Uri, class: ObjectClass, token: &str) -> Result<ObjectHandle> {
    let mut found = find(session, uri, class, token)?;
    let object = uri.object_description();
    match found.len() {
        1 => found.pop().ok_or(Error::KeyNotFound {
            token: token.into(),
            object,
            class: "private",
        }),
        0 => Err(Error::KeyNotFound {
            token: token.into(),
            object,
            class: if class == ObjectClass::PRIVATE_KEY {
                "private"
            } else {
                "public"
            },
        }),
        count => Err(Error::AmbiguousKey {
            token: token.into(),
            object,
            count,
        }),
    }
}

fn read_public(session: &Session, handle: ObjectHandle, token: &str, object: &str) -> Result<PublicKey> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|source| token_error(token, "reading the public key", source))?;
    let (mut params, mut point) = (None, None);
    for a in attrs {
        match a {
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let unsupported = |why: String| Error::UnsupportedKey {
        token: token.into(),
        object: object.into(),
        why,
    };
    match (params, point) {
        (Some(params), Some(point)) => PublicKey::from_token(&params, &point).map_err(unsupported),
        _ => Err(unsupported(
            "it has no EC parameters or point (an RSA key?)".into(),
        )),
    }
}

fn token_error(token: &str, what: &'static str, source: CkError) -> Error {
    match source {
        CkError::Pkcs11(RvError::TokenNotPresent | RvError::DeviceRemoved, _) => {
            Error::TokenRemoved { token: token.into() }
        }
        source => Error::Token {
            token: token.into(),
            what,
            source,
        },
    }
}
