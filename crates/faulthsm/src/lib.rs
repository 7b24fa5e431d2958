//! A PKCS#11 module for fault-injection tests.
//!
//! ```text
//! signerd ─ cryptoki ─► libsigner_faulthsm.so ── forwards ──► libsofthsm2.so
//!                              │ C_OpenSession, C_Login, C_FindObjectsInit,
//!                              │ C_SignInit, C_Sign: first read the control file
//!                              ▼
//!            FAULTHSM_CONTROL: ""                  forward (no fault)
//!                              "device_error"      CKR_DEVICE_ERROR
//!                              "session_invalid"   CKR_SESSION_HANDLE_INVALID
//!                              "token_not_present" CKR_TOKEN_NOT_PRESENT
//!                              "slow <ms>"         sleep, then forward
//!                              "hang"              block until the file says otherwise
//!                              "finalize"          C_Finalize the real module once (it
//!                                                  loses its state, as when an HSM client
//!                                                  restarts): CKR_CRYPTOKI_NOT_INITIALIZED
//!                                                  until the signer calls C_Initialize again
//! ```
//!
//! `FAULTHSM_MODULE` names the real module (default: Debian's SoftHSM2). The
//! control file is read on every intercepted call, so a test changes faults
//! while the signer runs. Only for tests: never install it on a signer.
#![allow(unsafe_code)] // a C ABI module: every entry point is `extern "C"`
#![allow(non_snake_case)] // PKCS#11 names its functions C_Xxx
#![deny(missing_docs)]

use std::sync::OnceLock;
use std::time::Duration;

use cryptoki_sys::{
    CKR_ARGUMENTS_BAD, CKR_DEVICE_ERROR, CKR_FUNCTION_NOT_SUPPORTED, CKR_GENERAL_ERROR, CKR_OK,
    CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT, CK_ATTRIBUTE, CK_BYTE, CK_FLAGS,
    CK_FUNCTION_LIST, CK_FUNCTION_LIST_PTR_PTR, CK_MECHANISM, CK_NOTIFY, CK_OBJECT_HANDLE, CK_RV,
    CK_SESSION_HANDLE, CK_SLOT_ID, CK_ULONG, CK_USER_TYPE, CK_UTF8CHAR,
};

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Real {
    _lib: libloading::Library,
    list: CK_FUNCTION_LIST,
}

static REAL: OnceLock<Option<Real>> = OnceLock::new();
static OURS: OnceLock<CK_FUNCTION_LIST> = OnceLock::new();

fn real() -> Option<&'static CK_FUNCTION_LIST> {
    REAL.get_or_init(|| {
        let path = std::env::var("FAULTHSM_MODULE").unwrap_or_else(|_| DEFAULT_MODULE.into());
        // SAFETY: loading a PKCS#11 module runs its initializers; that is
        // what any PKCS#11 consumer does with the module it is given.
        let lib = unsafe { libloading::Library::new(&path) }.ok()?;
        let mut list_ptr: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
        let rv = unsafe {
            let get: libloading::Symbol<
                '_,
                unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV,
            > = lib.get(b"C_GetFunctionList\0").ok()?;
            get(&mut list_ptr)
        };
        if rv != CKR_OK || list_ptr.is_null() {
            return None;
        }
        // SAFETY: the module returned a valid list that lives as long as the module.
        let list = unsafe { *list_ptr };
        Some(Real { _lib: lib, list })
    })
    .as_ref()
    .map(|r| &r.list)
}

enum Fault {
    None,
    Finalize,
    Fail(CK_RV),
    Slow(Duration),
    Hang,
}

fn fault() -> Fault {
    let Ok(path) = std::env::var("FAULTHSM_CONTROL") else {
        return Fault::None;
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut words = text.split_whitespace();
    match words.next() {
        Some("device_error") => Fault::Fail(CKR_DEVICE_ERROR),
        Some("session_invalid") => Fault::Fail(CKR_SESSION_HANDLE_INVALID),
        Some("token_not_present") => Fault::Fail(CKR_TOKEN_NOT_PRESENT),
        Some("slow") => Fault::Slow(Duration::from_millis(
            words.next().and_then(|w| w.parse().ok()).unwrap_or(100),
        )),
        Some("hang") => Fault::Hang,
        Some("finalize") => Fault::Finalize,
        _ => Fault::None,
    }
}

/// Set once "finalize" has acted; cleared when the control file changes.
static FINALIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The error to return instead of forwarding, after any delay.
fn inject() -> Option<CK_RV> {
    let now = fault();
    if !matches!(now, Fault::Finalize) {
        FINALIZED.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    match now {
        Fault::None => None,
        Fault::Finalize => {
            if !FINALIZED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                if let Some(finalize) = real().and_then(|l| l.C_Finalize) {
                    // SAFETY: C_Finalize with NULL is how any application ends
                    // its use of a module; later calls get CKR_CRYPTOKI_NOT_INITIALIZED.
                    unsafe { finalize(std::ptr::null_mut()) };
                }
            }
            None
        }
        Fault::Fail(rv) => Some(rv),
        Fault::Slow(d) => {
            std::thread::sleep(d);
            None
        }
        Fault::Hang => {
            while matches!(fault(), Fault::Hang) {
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        }
    }
}

macro_rules! forward {
    ($name:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            if let Some(rv) = inject() {
                return rv;
            }
            match real().and_then(|l| l.$name) {
                // SAFETY: the arguments are the caller's, passed on unchanged
                // to the real module's function of the same signature.
                Some(f) => unsafe { f($($arg),*) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            }
        }
    };
}

forward!(C_OpenSession(slot: CK_SLOT_ID, flags: CK_FLAGS, app: *mut std::os::raw::c_void, notify: CK_NOTIFY, session: *mut CK_SESSION_HANDLE));
forward!(C_Login(session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, len: CK_ULONG));
forward!(C_FindObjectsInit(session: CK_SESSION_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG));
forward!(C_SignInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE));
forward!(C_Sign(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, signature: *mut CK_BYTE, signature_len: *mut CK_ULONG));

/// The module's entry point: the real module's functions, with the signing
/// path routed through the fault switch.
///
/// # Safety
/// `list` must be valid for writing one pointer (PKCS#11 v2.40 §5.2).
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let Some(real) = real() else {
        return CKR_GENERAL_ERROR;
    };
    let ours = OURS.get_or_init(|| CK_FUNCTION_LIST {
        C_GetFunctionList: Some(C_GetFunctionList),
        C_OpenSession: Some(C_OpenSession),
        C_Login: Some(C_Login),
        C_FindObjectsInit: Some(C_FindObjectsInit),
        C_SignInit: Some(C_SignInit),
        C_Sign: Some(C_Sign),
        ..*real
    });
    // SAFETY: checked non-null above; the caller only reads the list.
    unsafe { *list = ours as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
    CKR_OK
}
