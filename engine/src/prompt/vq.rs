//! Encoding with the tokenizers' one-codebook "RVQ" (`descript_quantize3`): a weight-normed 1×1
//! projection to the codebook space, then the nearest codebook row by cosine similarity.
//!
//! The code is chosen with the reference's own expression, `|e|² − 2e·c + |c|²` on L2-normalised
//! vectors, first index on ties, and computed in f64: codes are exact integers and designed
//! near-ties (margins down to 1e-5) must fall the same way as in the reference.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

/// Folds legacy `torch.nn.utils.weight_norm` (dim 0): `w = g · v / ‖v‖`, the norm taken over
/// every axis but the first.
pub fn fold_weight_norm(g: &Tensor, v: &Tensor) -> Result<Tensor> {
    let rows = v.dim(0)?;
    let flat = v.reshape((rows, ()))?;
    let norm = flat.sqr()?.sum_keepdim(1)?.sqrt()?;
    let g = g.reshape((rows, 1))?;
    Ok(flat
        .broadcast_mul(&g.broadcast_div(&norm)?)?
        .reshape(v.shape())?)
}

/// L2-normalises the rows of `x` `[N, D]` like `F.normalize` (norm floored at 1e-12).
fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&norm)?)
}

pub struct VqEncoder {
    /// `[D, H]` F64 folded `in_proj` weight and `[D]` bias.
    in_w: Tensor,
    in_b: Tensor,
    /// `[N, D]` F64 L2-normalised codebook and its squared row norms `[1, N]`.
    codebook: Tensor,
    codebook_sq: Tensor,
}

impl VqEncoder {
    /// `vb` is rooted at the quantizer (`rvq_bestrq_emb.quantizers.0`).
    pub fn load(
        input_dim: usize,
        codebook_size: usize,
        codebook_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let g = vb.get((codebook_dim, 1, 1), "in_proj.weight_g")?;
        let v = vb.get((codebook_dim, input_dim, 1), "in_proj.weight_v")?;
        let in_w =
            fold_weight_norm(&g.to_dtype(DType::F64)?, &v.to_dtype(DType::F64)?)?.squeeze(2)?;
        let in_b = vb.get(codebook_dim, "in_proj.bias")?.to_dtype(DType::F64)?;
        let cb = vb
            .get((codebook_size, codebook_dim), "codebook.weight")?
            .to_dtype(DType::F64)?;
        let codebook = normalize_rows(&cb)?;
        let codebook_sq = codebook.sqr()?.sum(1)?.unsqueeze(0)?;
        Ok(Self {
            in_w,
            in_b,
            codebook,
            codebook_sq,
        })
    }

    pub fn input_dim(&self) -> usize {
        self.in_w.dims()[1]
    }

    /// The projected latents `z_e` `[B, D, T]` (F64).
    pub fn project(&self, z: &Tensor) -> Result<Tensor> {
        let (_, h, _) = z.dims3()?;
        ensure!(
            h == self.input_dim(),
            "VQ input has {h} channels, expected {}",
            self.input_dim()
        );
        let z = z.to_dtype(DType::F64)?;
        Ok(self
            .in_w
            .broadcast_matmul(&z)?
            .broadcast_add(&self.in_b.unsqueeze(1)?)?)
    }

    /// Codes `[B, 1, T]` (I64) of `z` `[B, H, T]`.
    pub fn encode(&self, z: &Tensor) -> Result<Tensor> {
        let (b, _, t) = z.dims3()?;
        let ze = self.project(z)?; // [B, D, T]
        let e = ze.transpose(1, 2)?.reshape((b * t, ()))?;
        let e = normalize_rows(&e)?;
        let dist = e
            .sqr()?
            .sum_keepdim(1)?
            .broadcast_sub(&(e.matmul(&self.codebook.t()?)? * 2.0)?)?
            .broadcast_add(&self.codebook_sq)?;
        let dist = dist.to_vec2::<f64>()?;
        let codes: Vec<i64> = dist
            .iter()
            .map(|row| {
                // argmax of −dist, first index on ties.
                let mut best = 0;
                for (i, d) in row.iter().enumerate() {
                    if -d > -row[best] {
                        best = i;
                    }
                }
                best as i64
            })
            .collect();
        Ok(Tensor::from_vec(codes, (b, 1, t), z.device())?)
    }
}
