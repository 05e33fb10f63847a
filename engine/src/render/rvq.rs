//! Token → conditioning lookup of the decoder (`ResidualVectorQuantize.from_codes` with one
//! codebook): `codebook[code]` (raw, not L2-normalised) → weight-normed 1×1 `out_proj` + bias.
//!
//! The vocal (`rvq_bestrq_emb`) and accompaniment (`rvq_bestrq_bgm_emb`) streams each have
//! their own codebook. The runtime checkpoint may store these tensors in F16; they are upcast.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::render::vae::layers::load_weight_norm;

/// Codebook geometry of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RvqConfig {
    pub codebook_size: usize,
    pub codebook_dim: usize,
    /// Width of the projected conditioning (1024 in the release).
    pub output_dim: usize,
}

/// The decode half of one single-codebook RVQ.
#[derive(Debug, Clone)]
pub struct RvqDecoder {
    name: String,
    codebook: Tensor,
    out_proj: Linear,
    cfg: RvqConfig,
}

impl RvqDecoder {
    /// Loads `{vb}.quantizers.0.{codebook.weight, out_proj.*}` in F32.
    pub fn load(vb: VarBuilder, cfg: RvqConfig) -> Result<Self> {
        let name = vb.prefix();
        let q = vb.pp("quantizers").pp("0");
        let codebook = q.get_with_hints_dtype(
            (cfg.codebook_size, cfg.codebook_dim),
            "codebook.weight",
            Default::default(),
            DType::F32,
        )?;
        let op = q.pp("out_proj");
        let w = load_weight_norm(&op, (cfg.output_dim, cfg.codebook_dim, 1))?
            .reshape((cfg.output_dim, cfg.codebook_dim))?;
        let b = op.get_with_hints_dtype(cfg.output_dim, "bias", Default::default(), DType::F32)?;
        Ok(Self {
            name,
            codebook,
            out_proj: Linear::new(w, Some(b)),
            cfg,
        })
    }

    pub fn config(&self) -> RvqConfig {
        self.cfg
    }

    /// Checks that every code is a codebook row, naming the stream and frame of the first that
    /// is not (EOS/pad ids must be cut before decoding).
    pub fn validate(&self, stream: &str, codes: &[i64]) -> Result<()> {
        check_codes(stream, codes, self.cfg.codebook_size)
    }

    /// Raw codebook rows `[1, T, codebook_dim]` for `codes` (validated).
    pub fn rows(&self, codes: &[i64]) -> Result<Tensor> {
        self.validate(&self.name, codes)?;
        let ids: Vec<u32> = codes.iter().map(|&c| c as u32).collect();
        let ids = Tensor::from_vec(ids, codes.len(), self.codebook.device())?;
        Ok(self.codebook.index_select(&ids, 0)?.unsqueeze(0)?)
    }

    /// `[1, T, output_dim]` F32 conditioning for `codes`.
    pub fn decode(&self, codes: &[i64]) -> Result<Tensor> {
        Ok(self.out_proj.forward(&self.rows(codes)?)?)
    }

    pub fn device(&self) -> &Device {
        self.codebook.device()
    }
}

/// Rejects codes outside `0..codebook_size`.
pub fn check_codes(stream: &str, codes: &[i64], codebook_size: usize) -> Result<()> {
    if let Some((frame, &code)) = codes
        .iter()
        .enumerate()
        .find(|(_, &c)| c < 0 || c as u64 >= codebook_size as u64)
    {
        bail!(
            "{stream} token {code} at frame {frame} is outside the codebook (0..{codebook_size}); \
             end-of-sequence and padding ids must be cut before rendering"
        );
    }
    Ok(())
}

/// Reads an integer code tensor of any shape into a flat `Vec<i64>`.
pub fn codes_to_vec(codes: &Tensor) -> Result<Vec<i64>> {
    let codes = codes.flatten_all()?;
    let v = match codes.dtype() {
        DType::I64 => codes.to_vec1::<i64>()?,
        DType::U32 => codes.to_vec1::<u32>()?.into_iter().map(i64::from).collect(),
        DType::U8 => codes.to_vec1::<u8>()?.into_iter().map(i64::from).collect(),
        other => bail!("token tensor has dtype {other:?}; expected an integer type"),
    };
    Ok(v)
}

/// `codes_to_vec` with context naming the tensor.
pub fn named_codes(name: &str, codes: &Tensor) -> Result<Vec<i64>> {
    codes_to_vec(codes).with_context(|| format!("reading {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_codes() {
        assert!(check_codes("vocal", &[0, 5, 16383], 16384).is_ok());
        let err = check_codes("bgm", &[0, 16384], 16384)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bgm token 16384 at frame 1"), "{err}");
        let err = check_codes("vocal", &[-1], 16384).unwrap_err().to_string();
        assert!(err.contains("vocal token -1 at frame 0"), "{err}");
    }
}
