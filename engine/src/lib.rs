//! songgen engine: a native runtime for Tencent's SongGeneration 2 (LeVo 2).
//!
//! One module per component of the reference pipeline; `parity` runs the reference's golden
//! fixtures against them.

pub mod flow;
pub mod parity;
pub mod paths;
pub mod progress;
pub mod protocol;
pub mod render;
pub mod rvq;
pub mod vae;
pub mod weights;
