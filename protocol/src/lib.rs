//! songgen's light shared layer, used by the engine and the plugin alike: no candle, no
//! tokenizers, nothing that needs a GPU toolkit.
//!
//! - [`wire`]: the engine service protocol (requests, events, jobs), re-exported at the root;
//! - [`lyrics`]: the lyric checker and normaliser, and the model's section tags;
//! - [`tags`]: the style-tag vocabularies and the auto-prompt genres;
//! - [`license`]: the record of the user's acceptance of the weights' licence;
//! - [`paths`]: per-user folders and the layout of a model folder;
//! - [`audio`]: WAV reading (any PCM/float format) and atomic WAV writing;
//! - [`Stem`] (in [`wire`]): the stems a job renders.

pub mod audio;
pub mod license;
pub mod lyrics;
pub mod paths;
pub mod tags;
pub mod wire;

pub use wire::*;
