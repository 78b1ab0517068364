//! User-facing errors: what failed, on what, and what to do next. Rendered once, in `render`.

use std::process::ExitCode;

/// An error the user can act on, with a hint and an exit code.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
    pub code: u8,
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

pub fn user(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError { message: message.into(), hint: Some(hint.into()), code: 1 })
}

/// Prints the whole error chain once, and the hint of the first user error in it.
pub fn render(error: &anyhow::Error) {
    eprintln!("error: {error:#}");
    let hint = error.chain().find_map(|cause| cause.downcast_ref::<UserError>()).and_then(|e| e.hint.clone());
    let hint = hint.or_else(|| {
        error
            .chain()
            .find_map(|cause| cause.downcast_ref::<berth_deploy::LoadError>())
            .and_then(|e| e.hint())
            .or_else(|| error.chain().find_map(|cause| cause.downcast_ref::<berth_deploy::StepError>())?.hint())
            .or_else(|| error.chain().find_map(|cause| cause.downcast_ref::<berth_deploy::ReleaseError>())?.hint())
            .map(str::to_owned)
    });
    if let Some(hint) = hint {
        eprintln!("  hint: {hint}");
    }
}

pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    let code = error.chain().find_map(|cause| cause.downcast_ref::<UserError>()).map(|e| e.code).unwrap_or(1);
    ExitCode::from(code)
}
