//! songgen engine: a native runtime for Tencent's SongGeneration 2 (LeVo 2).
//!
//! Grouped by pipeline stage (see `docs/architecture.md`):
//! - [`lm`]: LeLM, lyrics + style (+ prompt tokens) → three token streams at 25 Hz;
//! - [`render`]: tokens → audio (RVQ embedding, flow-matching decoder, Oobleck VAE decoder,
//!   window schedule and cross-fade);
//! - [`prompt`]: a reference clip → prompt tokens and render prompts (resampling, HTDemucs,
//!   MusicFM + VQ audio tokenizers, VAE encoder), and the auto-prompt library;
//! - [`io`]: weight files (model.pt / safetensors / ckpt), audio files, checkpoint conversion;
//! - [`service`]: one job from inputs to files ([`service::pipeline`]), the models behind it,
//!   the JSON-lines engine service and the environment report (`doctor`);
//! - [`gpu`]: what the engine knows about a CUDA device (free memory) and the GPU numerics;
//! - [`quant`]: linear weights laid out for the matmul (pre-transposed f32/f16/bf16, GGML
//!   q8_0/q4_k) and GGUF files of quantized LMs;
//! - [`plan`]: the memory plan of a job from shapes alone (`songgen doctor --plan`);
//! - [`progress`]: progress reports and the one cancellation mechanism every stage uses;
//! - [`cli`]: the `songgen` command (feature `cli`; `src/bin/songgen.rs` is its `main`, and
//!   the tests build the same command as `songgen-cli`);
//! - `parity`: the reference-fixture runner (feature `parity`, used by xtask and the tests).
//!
//! The wire protocol, lyric checker, tag vocabularies, licence record and paths live in the
//! light `songgen-protocol` crate (shared with the plugin) and are re-exported here.

// The CLI modules name the library by its crate name, as any user of it does.
extern crate self as songgen_engine;

#[cfg(feature = "cli")]
pub mod cli;
pub mod gpu;
pub mod heap;
pub mod io;
pub mod kernels;
pub mod lm;
#[cfg(feature = "parity")]
pub mod parity;
pub mod plan;
pub mod progress;
pub mod prompt;
pub mod quant;
pub mod render;
pub mod service;

pub use songgen_protocol as protocol;
pub use songgen_protocol::{license, lyrics, paths, tags};
