//! The PKCS#11 backend (cryptoki).
//!
//! - The module is initialized once per process (OS locking), whatever the
//!   number of backends using it.
//! - Sessions are pooled (a `Session` is not `Sync`): a signing thread takes
//!   the session it used last if it is free, else any free one, else waits
//!   for its own; login is token-wide, so "already logged in" counts as
//!   success. Callers know nothing of sessions.
//! - Key handles are looked up once per session and cached.
//! - Startup never blocks on the token: the slot is found lazily, and while
//!   the token is absent calls fail fast with [`HsmError::Unavailable`],
//!   retrying the token with exponential backoff.
//! - After a session- or device-level error the worker's session is dropped
//!   and reopened once at once, then with backoff.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use const_oid::ObjectIdentifier;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::Decode;
use serde::Deserialize;
use tracing::{info, warn};

use crate::pin::{PinSource, SecretPin};
use signer_keys::{
    digest_info_prefix, ecdsa_raw_to_der, spki_ec, spki_ed25519, spki_rsa, Hash, HsmError,
    KeyGenerator, KeyKind, KeyStatus, PublicKey, Scheme, SigningBackend, ED25519, SECP256R1,
    SECP384R1,
};

/// Which token to use. In YAML: `{label: …}`, `{serial: …}` or `{slot: N}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SelectorRepr")]
pub enum TokenSelector {
    /// The token with this label.
    Label(String),
    /// The token with this serial number.
    Serial(String),
    /// The token in this slot.
    Slot(u64),
}

impl TokenSelector {
    /// For messages: `labelled signer-a`, `with serial …`, `in slot 0`.
    pub fn describe(&self) -> String {
        match self {
            TokenSelector::Label(l) => format!("labelled {l}"),
            TokenSelector::Serial(s) => format!("with serial {s}"),
            TokenSelector::Slot(n) => format!("in slot {n}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorRepr {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    slot: Option<u64>,
}

impl TryFrom<SelectorRepr> for TokenSelector {
    type Error = &'static str;

    fn try_from(r: SelectorRepr) -> Result<Self, Self::Error> {
        match (r.label, r.serial, r.slot) {
            (Some(l), None, None) => Ok(TokenSelector::Label(l)),
            (None, Some(s), None) => Ok(TokenSelector::Serial(s)),
            (None, None, Some(n)) => Ok(TokenSelector::Slot(n)),
            _ => Err("expected exactly one of label, serial or slot"),
        }
    }
}

/// A token and how to log in to it.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Path of the PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// Where the user PIN comes from.
    pub pin: PinSource,
}

/// A configured key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The name handlers use.
    pub name: String,
    /// `CKA_LABEL` on the token.
    pub label: Option<String>,
    /// `CKA_ID` on the token.
    pub id: Option<Vec<u8>>,
}

impl KeySpec {
    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(label) = &self.label {
            t.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }

    fn describe(&self) -> String {
        match (&self.label, &self.id) {
            (Some(l), Some(id)) => format!("{} (label {l}, id {})", self.name, hex_string(id)),
            (Some(l), None) => format!("{} (label {l})", self.name),
            (None, Some(id)) => format!("{} (id {})", self.name, hex_string(id)),
            (None, None) => self.name.clone(),
        }
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads and initializes a module once per process.
fn module(path: &Path) -> Result<Pkcs11, HsmError> {
    let mut registry = lock(modules());
    if let Some(ctx) = registry.get(path) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        HsmError::Failed(format!(
            "cannot load PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            let why = crate::softhsm::diagnose(path)
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            return Err(HsmError::Failed(format!(
                "C_Initialize of {}: {e}{why}",
                path.display()
            )));
        }
    }
    registry.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Sorts a cryptoki error into the backend's error kinds.
fn classify(e: &CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::HostMemory
            | RvError::SessionCount => HsmError::Unavailable(e.to_string()),
            RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::PinInvalid => HsmError::Pin(e.to_string()),
            RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => {
                HsmError::Unavailable(e.to_string())
            }
            RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::KeyTypeInconsistent => HsmError::Unsupported(e.to_string()),
            _ => HsmError::Failed(e.to_string()),
        },
        other => HsmError::Failed(other.to_string()),
    }
}

struct Worker {
    session: Option<Session>,
    handles: HashMap<String, (ObjectHandle, KeyKind)>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The backend's `reopened` count when this worker's session failed.
    failed_at_reopen: u64,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Signs with keys on one PKCS#11 token.
pub struct Pkcs11Backend {
    ctx: Pkcs11,
    config: TokenConfig,
    pin: SecretPin,
    keys: Vec<KeySpec>,
    workers: Vec<Mutex<Worker>>,
    public: Mutex<HashMap<String, PublicKey>>,
    status: Mutex<HashMap<String, KeyStatus>>,
    /// Set once the token refused the PIN: logging in again with the same PIN
    /// could only lock the token, so no further attempt is made.
    pin_refused: std::sync::atomic::AtomicBool,
    /// Sessions reopened after a failure: when one worker finds the token
    /// back, the others stop waiting out their backoff.
    reopened: std::sync::atomic::AtomicU64,
    /// Some worker is waiting out a backoff.
    backing_off: std::sync::atomic::AtomicBool,
    /// The module said CKR_CRYPTOKI_NOT_INITIALIZED (it lost its state, e.g.
    /// an HSM client restarted): C_Initialize again before the next session.
    needs_init: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.config.module)
            .field("token", &self.config.token)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Loads the module and reads the PIN; does not wait for the token.
    /// `sessions` is how many signatures may run at once (one session each).
    pub fn open(
        config: TokenConfig,
        keys: Vec<KeySpec>,
        sessions: usize,
    ) -> Result<Self, HsmError> {
        let pin = config.pin.read()?;
        Self::open_with_pin(config, pin, keys, sessions)
    }

    /// Like [`Pkcs11Backend::open`] with the PIN given.
    pub fn open_with_pin(
        config: TokenConfig,
        pin: SecretPin,
        keys: Vec<KeySpec>,
        workers: usize,
    ) -> Result<Self, HsmError> {
        let ctx = module(&config.module)?;
        let status = keys
            .iter()
            .map(|k| {
                (
                    k.name.clone(),
                    KeyStatus {
                        name: k.name.clone(),
                        available: false,
                        logged_in: false,
                        last_sign_us: None,
                        last_error: None,
                    },
                )
            })
            .collect();
        Ok(Pkcs11Backend {
            ctx,
            config,
            pin,
            keys,
            // One more session than workers: the last serves public-key reads and set-up.
            workers: (0..workers.max(1) + 1)
                .map(|_| {
                    Mutex::new(Worker {
                        session: None,
                        handles: HashMap::new(),
                        retry_at: None,
                        backoff: MIN_BACKOFF,
                        failed_at_reopen: 0,
                    })
                })
                .collect(),
            public: Mutex::new(HashMap::new()),
            status: Mutex::new(status),
            pin_refused: std::sync::atomic::AtomicBool::new(false),
            reopened: std::sync::atomic::AtomicU64::new(0),
            backing_off: std::sync::atomic::AtomicBool::new(false),
            needs_init: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sorts an error, noting when the module needs initializing again.
    fn fail(&self, e: &CkError) -> HsmError {
        if matches!(e, CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) {
            self.needs_init
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        classify(e)
    }

    /// C_Initialize again after the module reported it is not initialized.
    fn reinitialize(&self) -> Result<(), HsmError> {
        match self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                warn!(module = %self.config.module.display(), "the PKCS#11 module had lost its initialization; initialized it again");
                Ok(())
            }
            Err(e) => {
                self.needs_init
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Err(HsmError::Unavailable(format!("C_Initialize again: {e}")))
            }
        }
    }

    fn find_slot(&self) -> Result<Slot, HsmError> {
        let slots = self.ctx.get_slots_with_token().map_err(|e| self.fail(&e))?;
        for slot in slots {
            let matches = match &self.config.token {
                TokenSelector::Slot(id) => slot.id() == *id,
                TokenSelector::Label(label) | TokenSelector::Serial(label) => {
                    let Ok(info) = self.ctx.get_token_info(slot) else {
                        continue;
                    };
                    let have = match &self.config.token {
                        TokenSelector::Label(_) => info.label(),
                        _ => info.serial_number(),
                    };
                    have.trim_end() == label.as_str()
                }
            };
            if matches {
                return Ok(slot);
            }
        }
        let token = self.config.token.describe();
        let why = crate::softhsm::diagnose(&self.config.module)
            .map(|d| format!(": {d}"))
            .unwrap_or_else(|| format!("; {}", self.tokens_present()));
        Err(HsmError::Unavailable(format!(
            "token {token} is not present{why}"
        )))
    }

    /// What the module shows instead, for an operator looking for a token
    /// (the labels the module reports; nothing secret).
    fn tokens_present(&self) -> String {
        let labels: Vec<String> = self
            .ctx
            .get_slots_with_token()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|slot| self.ctx.get_token_info(slot).ok())
            .map(|info| {
                format!(
                    "{:?} (serial {:?})",
                    info.label().trim_end(),
                    info.serial_number().trim_end()
                )
            })
            .collect();
        let opensc = self.config.module.to_string_lossy().contains("opensc");
        match (labels.is_empty(), opensc) {
            (true, true) => "the module shows no token: is pcscd running (systemctl status pcscd) and the card or HSM connected (pcsc_scan, opensc-tool --list-readers)?".into(),
            (true, false) => "the module shows no token: is the HSM connected and initialized (the vendor's tool lists its tokens)?".into(),
            (false, _) => format!("the module shows {}", labels.join(", ")),
        }
    }

    fn open_session(&self, rw: bool) -> Result<Session, HsmError> {
        if self.pin_refused.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(HsmError::Pin(
                "the token refused the PIN earlier; not trying again (fix the PIN and restart)"
                    .into(),
            ));
        }
        if self
            .needs_init
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.reinitialize()?;
        }
        let slot = self.find_slot()?;
        let session = if rw {
            self.ctx.open_rw_session(slot)
        } else {
            self.ctx.open_ro_session(slot)
        }
        .map_err(|e| self.fail(&e))?;
        let pin = AuthPin::new(self.pin.expose().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => {
                let e = self.fail(&e);
                if matches!(e, HsmError::Pin(_)) {
                    self.pin_refused
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    warn!(cause = %e, "the token refused the PIN; no further login attempts");
                }
                Err(e)
            }
        }
    }

    fn spec(&self, key: &str) -> Result<&KeySpec, HsmError> {
        self.keys
            .iter()
            .find(|k| k.name == key)
            .ok_or_else(|| HsmError::UnknownKey(key.to_string()))
    }

    /// Ensures the worker has a session, respecting its backoff.
    fn session<'w>(&self, w: &'w mut Worker) -> Result<&'w Session, HsmError> {
        if w.session.is_none() {
            let reopened = self.reopened.load(std::sync::atomic::Ordering::SeqCst);
            if let Some(at) = w.retry_at {
                if Instant::now() < at && reopened == w.failed_at_reopen {
                    return Err(HsmError::Unavailable(
                        "token not reachable; retrying with backoff".into(),
                    ));
                }
            }
            match self.open_session(false) {
                Ok(s) => {
                    w.session = Some(s);
                    if w.retry_at.take().is_some() {
                        self.reopened
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    w.backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    w.retry_at = Some(Instant::now() + w.backoff);
                    w.backoff = (w.backoff * 2).min(MAX_BACKOFF);
                    w.failed_at_reopen = reopened;
                    self.backing_off
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        w.session
            .as_ref()
            .ok_or_else(|| HsmError::Unavailable("no session".into()))
    }

    fn key_handle(&self, w: &mut Worker, key: &str) -> Result<(ObjectHandle, KeyKind), HsmError> {
        if let Some(h) = w.handles.get(key) {
            return Ok(*h);
        }
        let spec = self.spec(key)?.clone();
        let session = self.session(w)?;
        let found = session
            .find_objects(&spec.template(ObjectClass::PRIVATE_KEY))
            .map_err(|e| self.fail(&e))?;
        let handle = match found.as_slice() {
            [one] => *one,
            [] => return Err(HsmError::KeyNotFound(spec.describe())),
            _ => {
                return Err(HsmError::Failed(format!(
                    "{} matches {} private keys; give both label and id",
                    spec.describe(),
                    found.len()
                )))
            }
        };
        let kind = key_kind(session, handle)?;
        w.handles.insert(key.to_string(), (handle, kind));
        Ok((handle, kind))
    }

    fn note(&self, key: &str, result: Result<Duration, &HsmError>, logged_in: bool) {
        let mut status = lock(&self.status);
        if let Some(s) = status.get_mut(key) {
            match result {
                Ok(took) => {
                    // The token answers again: workers waiting out a backoff
                    // try at once instead.
                    if self
                        .backing_off
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        self.reopened
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    s.available = true;
                    s.last_sign_us = Some(took.as_micros() as u64);
                    s.last_error = None;
                }
                Err(e) => {
                    s.available = false;
                    s.last_error = Some(e.to_string());
                }
            }
            s.logged_in = logged_in;
        }
    }

    /// A signing session for this thread: the one it used last if free, else
    /// any free one, else it waits for the one it used last.
    fn checkout(&self) -> MutexGuard<'_, Worker> {
        use std::sync::TryLockError;
        thread_local! {
            static PREFERRED: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let slots = self.workers.len() - 1;
        let start = PREFERRED.with(|p| {
            p.get()
                .unwrap_or_else(|| NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        }) % slots;
        for i in 0..slots {
            let index = (start + i) % slots;
            match self.workers[index].try_lock() {
                Ok(guard) => {
                    PREFERRED.with(|p| p.set(Some(index)));
                    return guard;
                }
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        lock(&self.workers[start])
    }

    /// The last session slot is reserved for public-key reads and set-up.
    fn admin(&self) -> &Mutex<Worker> {
        &self.workers[self.workers.len() - 1]
    }
}

fn key_kind(session: &Session, handle: ObjectHandle) -> Result<KeyKind, HsmError> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Modulus,
                AttributeType::EcParams,
            ],
        )
        .map_err(|e| classify(&e))?;
    let mut key_type = None;
    let mut modulus = None;
    let mut params = None;
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::EcParams(p) => params = Some(p),
            _ => {}
        }
    }
    match key_type {
        Some(KeyType::RSA) => {
            let m = modulus
                .ok_or_else(|| HsmError::Unsupported("RSA key without readable modulus".into()))?;
            let bits = m.iter().skip_while(|&&b| b == 0).count() * 8;
            Ok(KeyKind::Rsa { bits: bits as u32 })
        }
        Some(KeyType::EC) => {
            let p = params
                .ok_or_else(|| HsmError::Unsupported("EC key without CKA_EC_PARAMS".into()))?;
            curve_kind(&p)
        }
        Some(KeyType::EC_EDWARDS) => {
            let p = params
                .ok_or_else(|| HsmError::Unsupported("Edwards key without CKA_EC_PARAMS".into()))?;
            // The curve as an OID (RFC 8410) or as the printable name.
            let named = ObjectIdentifier::from_der(&p).ok() == Some(ED25519)
                || der::asn1::PrintableStringRef::from_der(&p)
                    .is_ok_and(|n| n.as_str() == "edwards25519");
            if named {
                Ok(KeyKind::Ed25519)
            } else {
                Err(HsmError::Unsupported(
                    "an Edwards curve other than Ed25519".into(),
                ))
            }
        }
        other => Err(HsmError::Unsupported(format!("key type {other:?}"))),
    }
}

fn curve_kind(params: &[u8]) -> Result<KeyKind, HsmError> {
    let oid = ObjectIdentifier::from_der(params)
        .map_err(|_| HsmError::Unsupported("EC parameters are not a named curve".into()))?;
    match oid {
        SECP256R1 => Ok(KeyKind::EcP256),
        SECP384R1 => Ok(KeyKind::EcP384),
        other => Err(HsmError::Unsupported(format!("curve {other}"))),
    }
}

fn read_public(session: &Session, handle: ObjectHandle) -> Result<PublicKey, HsmError> {
    let kind = key_kind(session, handle)?;
    let spki_der = if kind.is_rsa() {
        let attrs = session
            .get_attributes(
                handle,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .map_err(|e| classify(&e))?;
        let (mut m, mut e) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Modulus(v) => m = v,
                Attribute::PublicExponent(v) => e = v,
                _ => {}
            }
        }
        spki_rsa(&m, &e)
    } else if kind == KeyKind::Ed25519 {
        let point = ec_point(session, handle)?;
        if point.len() != 32 {
            return Err(HsmError::Unsupported(format!(
                "an Ed25519 key of {} bytes",
                point.len()
            )));
        }
        spki_ed25519(&point)
    } else {
        let point = ec_point(session, handle)?;
        let curve = if kind == KeyKind::EcP256 {
            SECP256R1
        } else {
            SECP384R1
        };
        spki_ec(curve, &point)
    }
    .map_err(|e| HsmError::Failed(format!("encoding the public key: {e}")))?;
    Ok(PublicKey { kind, spki_der })
}

/// CKA_EC_POINT without its OCTET STRING wrapping.
fn ec_point(session: &Session, handle: ObjectHandle) -> Result<Vec<u8>, HsmError> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .map_err(|e| classify(&e))?;
    let raw = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| HsmError::Unsupported("EC key without CKA_EC_POINT".into()))?;
    // SoftHSM2 (and PKCS#11 v2.40) wrap the point in an OCTET STRING; some tokens do not.
    Ok(der::asn1::OctetString::from_der(&raw)
        .map(|o| o.into_bytes().into_vec())
        .unwrap_or(raw))
}

fn mechanism_hash(hash: Hash) -> (MechanismType, PkcsMgfType) {
    match hash {
        Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        Hash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    }
}

impl SigningBackend for Pkcs11Backend {
    fn public_key(&self, key: &str) -> Result<PublicKey, HsmError> {
        if let Some(k) = lock(&self.public).get(key) {
            return Ok(k.clone());
        }
        let spec = self.spec(key)?.clone();
        let mut w = lock(self.admin());
        let result = (|| {
            let session = self.session(&mut w)?;
            let found = session
                .find_objects(&spec.template(ObjectClass::PUBLIC_KEY))
                .map_err(|e| self.fail(&e))?;
            let handle = match found.first() {
                Some(h) => *h,
                // Tokens without a public-key object: RSA private keys carry the modulus.
                None => self.key_handle(&mut w, key)?.0,
            };
            let session = self.session(&mut w)?;
            read_public(session, handle)
        })();
        if result.as_ref().is_err_and(HsmError::is_transient) {
            w.session = None;
            w.handles.clear();
        }
        let public = result?;
        lock(&self.public).insert(key.to_string(), public.clone());
        Ok(public)
    }

    fn sign_digest(&self, key: &str, scheme: Scheme, digest: &[u8]) -> Result<Vec<u8>, HsmError> {
        // Ed25519 signs the message itself (short notes only).
        let fits = match scheme {
            Scheme::Ed25519 => !digest.is_empty() && digest.len() <= 64 * 1024,
            _ => digest.len() == scheme.hash().len(),
        };
        if !fits {
            return Err(HsmError::Unsupported(format!(
                "{} bytes to sign for {scheme:?}",
                digest.len(),
            )));
        }
        let mut w = self.checkout();
        let mut last = None;
        for attempt in 0..2 {
            let started = Instant::now();
            let result = self.sign_once(&mut w, key, scheme, digest);
            match result {
                Ok(sig) => {
                    self.note(key, Ok(started.elapsed()), true);
                    return Ok(sig);
                }
                Err(e) if e.is_transient() => {
                    // Drop the session and its handles: after a device error every
                    // later call on the old session would fail too.
                    w.session = None;
                    w.handles.clear();
                    if attempt == 0 {
                        warn!(key_label = key, cause = %e, "HSM call failed; reopening the session");
                    }
                    last = Some(e);
                }
                Err(e) => {
                    self.note(key, Err(&e), w.session.is_some());
                    return Err(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| HsmError::Unavailable("unknown".into()));
        self.note(key, Err(&e), false);
        Err(e)
    }

    fn status(&self) -> Vec<KeyStatus> {
        let status = lock(&self.status);
        self.keys
            .iter()
            .filter_map(|k| status.get(&k.name).cloned())
            .collect()
    }
}

impl Pkcs11Backend {
    fn sign_once(
        &self,
        w: &mut Worker,
        key: &str,
        scheme: Scheme,
        digest: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let (handle, kind) = self.key_handle(w, key)?;
        if !kind.supports(scheme) {
            return Err(HsmError::Unsupported(format!(
                "{scheme:?} with a {kind} key"
            )));
        }
        let session = self.session(w)?;
        match scheme {
            Scheme::RsaPkcs1(hash) => {
                let mut data = digest_info_prefix(hash).to_vec();
                data.extend_from_slice(digest);
                session
                    .sign(&Mechanism::RsaPkcs, handle, &data)
                    .map_err(|e| self.fail(&e))
            }
            Scheme::RsaPss(hash) => {
                let (hash_alg, mgf) = mechanism_hash(hash);
                let params = PkcsPssParams {
                    hash_alg,
                    mgf,
                    s_len: (hash.len() as u64).into(),
                };
                session
                    .sign(&Mechanism::RsaPkcsPss(params), handle, digest)
                    .map_err(|e| self.fail(&e))
            }
            Scheme::Ecdsa(_) => {
                let raw = session
                    .sign(&Mechanism::Ecdsa, handle, digest)
                    .map_err(|e| self.fail(&e))?;
                ecdsa_raw_to_der(&raw).ok_or_else(|| {
                    HsmError::Failed(format!("ECDSA signature of {} bytes", raw.len()))
                })
            }
            Scheme::Ed25519 => session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    handle,
                    digest,
                )
                .map_err(|e| self.fail(&e)),
        }
    }
}

impl KeyGenerator for Pkcs11Backend {
    /// Logs in and checks that no object on the token has `label` (what
    /// `generate` checks first; a dry run stops here).
    fn check_label_free(&self, label: &str) -> Result<(), HsmError> {
        let session = self.open_session(true)?;
        let existing = session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| self.fail(&e))?;
        if !existing.is_empty() {
            return Err(HsmError::Failed(format!(
                "the token already holds an object labelled {label}"
            )));
        }
        Ok(())
    }

    /// Generates a key pair on the token: sensitive, not extractable, with a
    /// random 16-byte `CKA_ID` and the given label. Refuses a label in use.
    fn generate(&self, kind: KeyKind, label: &str) -> Result<(PublicKey, Vec<u8>), HsmError> {
        self.check_label_free(label)?;
        let session = self.open_session(true)?;
        let id: [u8; 16] = rand::random();
        // PKCS#11 v2.40 §4.9: CKA_SENSITIVE true and CKA_EXTRACTABLE false keep the
        // private key inside the token; CKA_TOKEN true makes it persistent.
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let mechanism = match kind {
            KeyKind::Rsa { bits } => {
                public.push(Attribute::ModulusBits(u64::from(bits).into()));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
            KeyKind::EcP256 | KeyKind::EcP384 => {
                let curve = if kind == KeyKind::EcP256 {
                    SECP256R1
                } else {
                    SECP384R1
                };
                let params =
                    der::Encode::to_der(&curve).map_err(|e| HsmError::Failed(e.to_string()))?;
                public.push(Attribute::EcParams(params));
                Mechanism::EccKeyPairGen
            }
            KeyKind::Ed25519 => {
                let params =
                    der::Encode::to_der(&ED25519).map_err(|e| HsmError::Failed(e.to_string()))?;
                public.push(Attribute::EcParams(params));
                Mechanism::EccEdwardsKeyPairGen
            }
        };
        let (pub_handle, _priv) = session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| self.fail(&e))?;
        let key = read_public(&session, pub_handle)?;
        info!(key_label = label, kind = %key.kind, "generated key pair on the token");
        Ok((key, id.to_vec()))
    }
}
