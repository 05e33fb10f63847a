//! Progress reporting and cooperative cancellation for long-running stages: the engine's one
//! cancellation mechanism.
//!
//! Every stage (prompt encoding, LM steps, Euler steps, VAE chunks, file writes) reports through
//! a [`ProgressFn`] at each unit of work ([`report`]); the callback returns
//! [`ControlFlow::Break`] to cancel, and the stage then stops at that boundary with the one error
//! [`Cancelled`], carried up through `anyhow` unchanged. The job runner recognises it with
//! [`is_cancelled`]. Nothing blocks on the caller.

use std::ops::ControlFlow;

pub use crate::protocol::Stage;

/// One progress report: `done` of `total` units of `stage`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub stage: Stage,
    pub done: u64,
    pub total: u64,
    /// Units per second so far (tokens/s for the LM), when known.
    pub rate: Option<f64>,
}

/// Called between units of work; `Break` cancels the stage.
pub type ProgressFn<'a> = dyn FnMut(Progress) -> ControlFlow<()> + 'a;

/// The error a stage returns when its progress callback asked it to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// Reports `p` and turns a cancel request into [`Cancelled`].
pub fn report(progress: &mut ProgressFn<'_>, p: Progress) -> Result<(), Cancelled> {
    match progress(p) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Cancelled),
    }
}

/// Whether `err` is (or was caused by) a cancellation.
pub fn is_cancelled(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Cancelled>())
}
