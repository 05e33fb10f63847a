//! Reading and writing what lies on disk: weight files in the released layouts (`model.pt`
//! zips, `.safetensors`, Lightning `.ckpt`; F16/F32 mixes), audio files, and the one-off
//! conversion of released checkpoints to safetensors.

pub mod audio;
pub mod convert;
pub mod weights;
