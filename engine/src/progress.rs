//! Progress reporting and cooperative cancellation for long-running stages.
//!
//! Every stage (LM steps, render windows, VAE chunks, prompt encoding) reports through a
//! [`ProgressFn`] between units of work; the callback returns [`ControlFlow::Break`] to cancel,
//! and the stage then stops at that boundary with [`Cancelled`]. Nothing blocks on the caller.

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
