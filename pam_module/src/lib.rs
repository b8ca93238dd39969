//! pam_sparekey.so: accepts sparekey bypass codes at a PAM prompt.
//!
//! This file is the FFI edge and the only part that touches the PAM handle: it reads the
//! module's arguments and the PAM items, loads the config and opens the store, and hands
//! the rest to [`flow`], which knows nothing of FFI. `pam-bindings` generates the exported
//! `pam_sm_*` functions; it rejects a null handle or argument vector and turns a panic
//! into `PAM_ABORT`. Each hook here also runs under its own `catch_unwind`, so that a
//! panic in this module is logged and answered with `PAM_SERVICE_ERR`: a failure, never
//! success.
//!
//! Return codes of `pam_sm_authenticate`: `PAM_SUCCESS`; `PAM_AUTH_ERR` (wrong, used or
//! expired code, locked out, disabled, not enrolled, trashed, bypass with
//! `bypass_status=deny`); `PAM_USER_UNKNOWN` or `PAM_IGNORE` (`unknown_user=`);
//! `PAM_AUTHINFO_UNAVAIL` (config, key or store unusable); `PAM_CONV_ERR` (no
//! conversation, or it failed); `PAM_SERVICE_ERR` (a bad argument on the pam.d line, or a
//! bug). `pam_sm_acct_mgmt`: `PAM_SUCCESS`, `PAM_PERM_DENIED` (disabled, trashed, locked
//! out), `PAM_USER_UNKNOWN`/`PAM_IGNORE`, `PAM_AUTHINFO_UNAVAIL`, `PAM_SERVICE_ERR`.

// The crate may use FFI, but its own code needs no `unsafe`: the raw pointers stay inside
// `pam-bindings` and the entry points its macro generates. Keep it that way.
#![deny(unsafe_code)]

pub mod flow;
pub mod log;
pub mod options;
pub mod trust;

use std::ffi::CStr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use pam::constants::{PAM_PROMPT_ECHO_OFF, PamFlag, PamResultCode};
use pam::conv::Conv;
use pam::items::{AuthTok, RHost, Service, Tty};
use pam::module::{PamHandle, PamHooks};
use zeroize::Zeroizing;

use sparekey::Store;

use crate::flow::{Attempt, Conversation, Secret};
use crate::log::{Kind, Level, Log};
use crate::options::{Options, PamSection, Settings};
use crate::trust::Unusable;

/// The config file read when the pam.d line has no `config=`. The module never reads
/// `$SPAREKEY_CONFIG`: sudo and su run it with the environment of the user asking, who
/// could otherwise point it at a store of their own.
pub const DEFAULT_CONFIG: &str = sparekey::config::DEFAULT_PATH;

/// The module, as `pam-bindings` sees it.
#[derive(Debug)]
pub struct PamSparekey;

pam::pam_hooks!(PamSparekey);

impl PamHooks for PamSparekey {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        guarded(pamh, Kind::Auth, &args, |pamh, call, store, log| {
            let attempt = call.attempt();
            let mut conv = PamConversation { pamh };
            flow::authenticate(store, &call.settings, &attempt, &mut conv, log)
        })
    }

    fn acct_mgmt(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        guarded(pamh, Kind::Account, &args, |_, call, store, log| {
            flow::account(store, &call.settings, &call.attempt(), log)
        })
    }

    /// Bypass codes establish no credentials; authentication has already decided.
    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }
}

/// What one call knows before it asks the store anything.
#[derive(Debug)]
struct Call {
    service: String,
    user: String,
    rhost: Option<String>,
    tty: Option<String>,
    settings: Settings,
}

impl Call {
    fn attempt(&self) -> Attempt<'_> {
        Attempt {
            service: &self.service,
            user: &self.user,
            rhost: self.rhost.as_deref(),
            tty: self.tty.as_deref(),
        }
    }
}

/// Runs a hook under `catch_unwind` after the common steps: arguments, user, config,
/// store. A panic is logged and answered with `PAM_SERVICE_ERR`.
fn guarded(
    pamh: &mut PamHandle,
    kind: Kind,
    args: &[&CStr],
    hook: impl FnOnce(&mut PamHandle, &Call, &mut Store, &Log) -> PamResultCode,
) -> PamResultCode {
    let service =
        item_string(pamh.get_item::<Service<'_>>()).unwrap_or_else(|| "unknown".to_owned());
    contain(&service, kind, || {
        let mut log = Log::new(&service, kind);
        let (call, mut store) = match prepare(pamh, &service, args, &mut log) {
            Ok(x) => x,
            Err(code) => return code,
        };
        hook(pamh, &call, &mut store, &log)
    })
}

/// Runs `f`, turning a panic into a logged `PAM_SERVICE_ERR`: a failure, never success.
fn contain(service: &str, kind: Kind, f: impl FnOnce() -> PamResultCode) -> PamResultCode {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(code) => code,
        Err(payload) => {
            // Dropping the payload may panic in turn; forget it if so.
            let _ = catch_unwind(AssertUnwindSafe(|| drop(payload))).map_err(std::mem::forget);
            let _ = catch_unwind(|| {
                Log::new(service, kind).line(Level::Err, "internal error (panic); refusing");
            });
            PamResultCode::PAM_SERVICE_ERR
        }
    }
}

/// Parses the arguments, finds the user, loads the config and opens the store.
fn prepare(
    pamh: &mut PamHandle,
    service: &str,
    args: &[&CStr],
    log: &mut Log,
) -> Result<(Call, Store), PamResultCode> {
    let options = Options::parse(args.iter().map(|a| a.to_bytes())).map_err(|e| {
        log.line(Level::Err, &format!("{e}; refusing (fix the pam.d line)"));
        PamResultCode::PAM_SERVICE_ERR
    })?;
    log.set_debug(options.debug);
    let user = pamh.get_user(None).map_err(|e| {
        log.line(Level::Err, &format!("cannot get the user name ({e:?})"));
        flow::failure(e)
    })?;
    let path = options
        .config
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_CONFIG).to_owned());
    let unavailable = |log: &Log, u: Unusable| {
        log.line(
            Level::Err,
            &format!(
                "user={} outcome=error reason={}: {}",
                sparekey::audit::display_login(&user),
                u.reason,
                u.why
            ),
        );
        PamResultCode::PAM_AUTHINFO_UNAVAIL
    };
    let config = trust::load_config(&path).map_err(|u| unavailable(log, u))?;
    let section = config
        .section::<PamSection>("pam")
        .map_err(|e| unavailable(log, Unusable::config(e.to_string())))?;
    let settings = options.settings(section.as_ref()).map_err(|e| {
        unavailable(
            log,
            Unusable::config(format!("config {} [pam]: {e}", path.display())),
        )
    })?;
    log.set_debug(settings.debug);
    log.line(
        Level::Debug,
        &format!("config {} settings {settings:?}", path.display()),
    );
    let store = trust::open_store(&config).map_err(|why| unavailable(log, why))?;
    let call = Call {
        service: service.to_owned(),
        user,
        rhost: item_string(pamh.get_item::<RHost<'_>>()),
        tty: item_string(pamh.get_item::<Tty<'_>>()),
        settings,
    };
    Ok((call, store))
}

/// A string item, if PAM has one.
fn item_string<'a, T: std::ops::Deref<Target = &'a CStr>>(
    item: Result<Option<T>, PamResultCode>,
) -> Option<String> {
    item.ok()
        .flatten()
        .map(|v| v.to_string_lossy().into_owned())
}

/// The application's conversation and `PAM_AUTHTOK`, through `pam-bindings`.
struct PamConversation<'a> {
    pamh: &'a mut PamHandle,
}

impl Conversation for PamConversation<'_> {
    fn authtok(&mut self) -> Result<Option<Secret>, PamResultCode> {
        match self.pamh.get_item::<AuthTok<'_>>() {
            Ok(Some(t)) => Ok(Some(Zeroizing::new(t.as_bytes().to_vec()))),
            Ok(None) => Ok(None),
            Err(e) => Err(flow::failure(e)),
        }
    }

    fn ask_secret(&mut self, prompt: &str) -> Result<Secret, PamResultCode> {
        let conv = match self.pamh.get_item::<Conv<'_>>() {
            Ok(Some(c)) => c,
            _ => return Err(PamResultCode::PAM_CONV_ERR),
        };
        match conv.send(PAM_PROMPT_ECHO_OFF, prompt) {
            Ok(Some(answer)) => Ok(Zeroizing::new(answer.as_bytes().to_vec())),
            _ => Err(PamResultCode::PAM_CONV_ERR),
        }
    }
}

impl std::fmt::Debug for PamConversation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PamConversation")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::panic)]
    fn a_panic_is_a_service_error_never_success() {
        let code = contain("sshd", Kind::Auth, || panic!("boom"));
        assert_eq!(code, PamResultCode::PAM_SERVICE_ERR);
        let code = contain("sshd", Kind::Auth, || {
            std::panic::panic_any(PamResultCode::PAM_SUCCESS)
        });
        assert_eq!(code, PamResultCode::PAM_SERVICE_ERR);
        assert_eq!(
            contain("sshd", Kind::Auth, || PamResultCode::PAM_AUTH_ERR),
            PamResultCode::PAM_AUTH_ERR
        );
    }
}
