//! Audio files: WAV reading (any PCM/float format) and atomic WAV/text writing. The code lives in
//! `songgen-protocol` (the plugin reads takes with it too); re-exported here.

pub use songgen_protocol::audio::*;
