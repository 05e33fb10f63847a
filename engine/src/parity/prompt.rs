//! Parity units of the `prompt` fixtures.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Device;

use super::{Case, Manifest, Suite, Tensors};

pub struct PromptSuite {}

impl PromptSuite {
    pub fn load(_dir: &Path, _manifest: &Manifest, _device: &Device) -> Result<Self> {
        Ok(Self {})
    }
}

impl Suite for PromptSuite {
    fn run(&mut self, case: &Case, _inputs: &Tensors) -> Result<Tensors> {
        bail!("unit {:?} is not implemented yet", case.unit)
    }
}
