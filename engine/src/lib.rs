//! songgen engine: a native runtime for Tencent's SongGeneration 2 (LeVo 2).
//!
//! One module per component of the reference pipeline; `parity` runs the reference's golden
//! fixtures against them.

pub mod audio;
pub mod auto_prompt;
pub mod convert;
pub mod demucs;
pub mod doctor;
pub mod flow;
pub mod license;
pub mod lm;
pub mod lyrics;
pub mod models;
pub mod musicfm;
pub mod parity;
pub mod paths;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod prompt;
pub mod protocol;
pub mod quant;
pub mod render;
pub mod resample;
pub mod rvq;
pub mod service;
pub mod tags;
pub mod tokenizer;
pub mod vae;
pub mod vq;
pub mod weights;
