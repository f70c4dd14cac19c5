//! Errors that cross the plugin boundary, and the panic guard every call goes through.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::std_types::{RResult, RString};
use abi_stable::StableAbi;

/// An error reported by a plugin: a message meant for the user of the host.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    message: RString,
}

impl PluginError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: RString::from(message.into()),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }

    /// Prefixes the message with what was being done: `"{context}: {message}"`.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self::new(format!("{context}: {}", self.message))
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

impl From<String> for PluginError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for PluginError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<crate::tensor::TensorError> for PluginError {
    fn from(err: crate::tensor::TensorError) -> Self {
        Self::new(err.to_string())
    }
}

impl From<crate::args::ArgsError> for PluginError {
    fn from(err: crate::args::ArgsError) -> Self {
        Self::new(err.to_string())
    }
}

/// Shorthand for results of plugin code.
pub type PluginResult<T> = Result<T, PluginError>;

thread_local! {
    /// Whether this thread is inside [`guard`], whose caller reports the panic.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// Where the last guarded panic happened.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once, a panic hook that keeps quiet about panics inside [`guard`] (recording
/// where they happened, for the error) and hands every other panic to the hook before it.
/// Without it the standard hook prints the panic and the host prints it again as an error.
fn install_quiet_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                PANIC_LOCATION.with(|slot| *slot.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning both its error and a panic into a [`PluginError`], so that nothing unwinds
/// across the FFI boundary. `what` names the call in the message (`"the constructor"`); the
/// host adds the plugin and the entry. The panic is reported once, by that error, with the
/// place in the plugin's source it came from.
pub fn guard<T>(what: &str, f: impl FnOnce() -> PluginResult<T>) -> RResult<T, PluginError> {
    install_quiet_hook();
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    match result {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(err)) => RResult::RErr(err),
        Err(payload) => {
            let detail = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "a panic with a non-text payload".to_string()
            };
            let place = PANIC_LOCATION
                .with(|slot| slot.borrow_mut().take())
                .map(|at| format!(" at {at}"))
                .unwrap_or_default();
            RResult::RErr(PluginError::new(format!(
                "{what} panicked{place}: {detail}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_naming_the_call() {
        let line = line!() + 1;
        let result: RResult<(), PluginError> = guard("toy forward", || panic!("boom {}", 7));
        assert_eq!(
            result.unwrap_err().message(),
            format!("toy forward panicked at {}:{line}: boom 7", file!())
        );
        let ok = guard("toy", || Ok(3));
        assert_eq!(ok.unwrap(), 3);
        let err: RResult<(), PluginError> = guard("toy", || Err("bad input".into()));
        assert_eq!(err.unwrap_err().message(), "bad input");
    }
}
