//! Parity units of the `decoder` fixtures.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Device;

use super::{Case, Manifest, Suite, Tensors};

pub struct DecoderSuite {}

impl DecoderSuite {
    pub fn load(_dir: &Path, _manifest: &Manifest, _device: &Device) -> Result<Self> {
        Ok(Self {})
    }
}

impl Suite for DecoderSuite {
    fn run(&mut self, case: &Case, _inputs: &Tensors) -> Result<Tensors> {
        bail!("unit {:?} is not implemented yet", case.unit)
    }
}
