//! Matmul-ready linear layers and the LM's weight precisions.
//!
//! candle's `Linear` keeps the checkpoint's `[out, in]` weight and multiplies by its transposed
//! view, so on the CPU gemm re-packs the whole strided matrix on every call (most of a decode
//! step). [`QLinear`] stores the weight the way the kernel reads it, once at load:
//! - float precisions: the transposed weight `[in, out]`, contiguous, multiplied as one
//!   `[rows, in] x [in, out]` gemm (leading dimensions folded into the rows);
//! - `q8_0` / `q4_k`: a GGML quantized tensor behind candle's `QMatMul` (CPU and CUDA kernels),
//!   fed activations in the model's float dtype.
//!
//! [`LinearLoader`] builds them from the float checkpoint (quantizing at load) or from an
//! ahead-of-time `songgen quantize` GGUF file ([`GgufWeights`]). A weight whose input width is
//! not a multiple of the quantization block (tiny test models only) is zero-padded to the
//! next multiple, and so is its input.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Storage format of the LM's weights (`--lm-precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LmPrecision {
    F32,
    F16,
    Bf16,
    /// GGML 8-bit blocks of 32 (8.5 bits per weight).
    Q8_0,
    /// GGML 4-bit k-quant super-blocks of 256 (4.5 bits per weight).
    Q4K,
}

impl LmPrecision {
    pub const ALL: [LmPrecision; 5] = [
        LmPrecision::F32,
        LmPrecision::F16,
        LmPrecision::Bf16,
        LmPrecision::Q8_0,
        LmPrecision::Q4K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LmPrecision::F32 => "f32",
            LmPrecision::F16 => "f16",
            LmPrecision::Bf16 => "bf16",
            LmPrecision::Q8_0 => "q8_0",
            LmPrecision::Q4K => "q4_k",
        }
    }

    /// The GGML block format of a quantized precision.
    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            LmPrecision::Q8_0 => Some(GgmlDType::Q8_0),
            LmPrecision::Q4K => Some(GgmlDType::Q4K),
            _ => None,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.ggml().is_some()
    }

    /// The float dtype of a float precision.
    pub fn float_dtype(self) -> Option<DType> {
        match self {
            LmPrecision::F32 => Some(DType::F32),
            LmPrecision::F16 => Some(DType::F16),
            LmPrecision::Bf16 => Some(DType::BF16),
            _ => None,
        }
    }

    /// The float precision of `dtype`.
    pub fn from_dtype(dtype: DType) -> Self {
        match dtype {
            DType::F16 => LmPrecision::F16,
            DType::BF16 => LmPrecision::Bf16,
            _ => LmPrecision::F32,
        }
    }

    /// Bytes per weight of a `[out, in]` matrix stored in this precision (block overhead
    /// included; exact when `in` is a multiple of the block).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            LmPrecision::F32 => 4.0,
            LmPrecision::F16 | LmPrecision::Bf16 => 2.0,
            LmPrecision::Q8_0 | LmPrecision::Q4K => {
                let g = self.ggml().expect("quantized");
                g.type_size() as f64 / g.block_size() as f64
            }
        }
    }

    /// The file `songgen quantize` writes into a model folder for this precision.
    pub fn gguf_file_name(self) -> String {
        format!("model.{}.gguf", self.name())
    }
}

impl fmt::Display for LmPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LmPrecision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let norm = s.to_ascii_lowercase().replace('-', "_");
        LmPrecision::ALL
            .into_iter()
            .find(|p| p.name() == norm || (norm == "q4k" && *p == LmPrecision::Q4K))
            .ok_or_else(|| {
                let names: Vec<_> = LmPrecision::ALL.iter().map(|p| p.name()).collect();
                format!("unknown precision {s:?} (expected {})", names.join(", "))
            })
    }
}

/// From this many rows, a quantized CPU layer multiplies through its expanded float weight.
const DEQUANTIZE_ROWS: usize = 64;

/// A linear layer `y = x W^T + b` with its weight in matmul layout.
#[derive(Debug, Clone)]
pub enum QLinear {
    /// `wt`: the transposed weight `[in, out]`, contiguous.
    Float { wt: Tensor, bias: Option<Tensor> },
    /// A GGML quantized `[out, in + pad]` weight (zero columns after `in`); the bias in the
    /// activation dtype.
    Quant {
        w: QMatMul,
        out: usize,
        pad: usize,
        bias: Option<Tensor>,
    },
}

impl QLinear {
    /// From a float `[out, in]` weight.
    pub fn from_weight(w: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(QLinear::Float {
            wt: w.t()?.contiguous()?,
            bias,
        })
    }

    /// From a `[in, out]` weight already laid out for `x · W` (HF `Conv1D`).
    pub fn from_transposed(wt: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(QLinear::Float {
            wt: wt.contiguous()?,
            bias,
        })
    }

    fn from_qtensor(q: QTensor, pad: usize, bias: Option<Tensor>) -> Result<Self> {
        let (out, _) = q.shape().dims2()?;
        Ok(QLinear::Quant {
            w: QMatMul::from_qtensor(q)?,
            out,
            pad,
            bias,
        })
    }

    /// Whether the weight is stored quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(
            self,
            QLinear::Quant {
                w: QMatMul::QTensor(_),
                ..
            }
        )
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let k = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / k.max(1);
        let x2 = x.reshape((rows, k))?;
        let (y, out, bias) = match self {
            QLinear::Float { wt, bias } => (x2.matmul(wt)?, wt.dim(1)?, bias),
            QLinear::Quant { w, out, pad, bias } => {
                let x2 = if *pad > 0 {
                    x2.pad_with_zeros(1, 0, *pad)?
                } else {
                    x2.contiguous()?
                };
                let y = match w {
                    // candle's CPU quantized matmul is a dot product per output element, fine
                    // for a decode step's few rows but 3.5x slower than f32 gemm for a prefill's
                    // thousands (docs/perf.md): there, expand this layer's weight to floats for
                    // one blocked gemm. The expansion costs one pass over the weight, and only
                    // one layer's float copy lives at a time.
                    QMatMul::QTensor(q) if x2.device().is_cpu() && rows >= DEQUANTIZE_ROWS => {
                        let wf = q.dequantize(x2.device())?.to_dtype(x2.dtype())?;
                        x2.matmul(&wf.t()?)?
                    }
                    _ => w.forward(&x2)?,
                };
                (y, *out, bias)
            }
        };
        let y = match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        y.reshape(shape)
    }
}

/// Builds the LM's linear layers in one precision.
#[derive(Clone)]
pub struct LinearLoader {
    precision: LmPrecision,
    gguf: Option<Arc<GgufWeights>>,
}

impl LinearLoader {
    /// Float layers in the VarBuilder's dtype (no quantization).
    pub fn float() -> Self {
        Self {
            precision: LmPrecision::F32,
            gguf: None,
        }
    }

    /// Layers in `precision`; quantized ones come from `gguf` when it holds them.
    pub fn new(precision: LmPrecision, gguf: Option<Arc<GgufWeights>>) -> Self {
        Self { precision, gguf }
    }

    pub fn precision(&self) -> LmPrecision {
        self.precision
    }

    /// `vb.pp(...)` names the layer (`<prefix>.weight`, `<prefix>.bias`).
    pub fn linear(&self, d_in: usize, d_out: usize, bias: bool, vb: VarBuilder) -> Result<QLinear> {
        let b = if bias {
            Some(vb.get(d_out, "bias")?)
        } else {
            None
        };
        let Some(ggml) = self.precision.ggml() else {
            return QLinear::from_weight(&vb.get((d_out, d_in), "weight")?, b);
        };
        let pad = d_in.next_multiple_of(ggml.block_size()) - d_in;
        let name = format!("{}.weight", vb.prefix());
        if let Some(g) = &self.gguf {
            if let Some(q) = g.qtensor(&name, ggml, (d_out, d_in + pad), vb.device())? {
                return QLinear::from_qtensor(q, pad, b);
            }
        }
        let w = vb
            .get((d_out, d_in), "weight")?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .pad_with_zeros(1, 0, pad)?;
        QLinear::from_qtensor(QTensor::quantize_onto(&w, ggml, vb.device())?, pad, b)
    }
}

/// Metadata key naming the precision of a `songgen quantize` file.
const GGUF_PRECISION_KEY: &str = "songgen.lm_precision";

/// An ahead-of-time quantized LM (`songgen quantize`): every tensor the LM loads, the linear
/// weights in GGML blocks and the rest in their stored float dtype, under the checkpoint's names.
pub struct GgufWeights {
    path: PathBuf,
    content: gguf_file::Content,
    file: Mutex<std::fs::File>,
    precision: Option<String>,
}

impl GgufWeights {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            candle_core::Error::Msg(format!(
                "{}: not a readable GGUF file ({e})",
                path.display()
            ))
        })?;
        let precision = match content.metadata.get(GGUF_PRECISION_KEY) {
            Some(gguf_file::Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            precision,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The precision recorded by `songgen quantize`.
    pub fn precision(&self) -> Option<&str> {
        self.precision.as_deref()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// All tensor names and their (GGML dtype, dims).
    pub fn infos(&self) -> impl Iterator<Item = (&str, GgmlDType, &[usize])> {
        self.content
            .tensor_infos
            .iter()
            .map(|(n, i)| (n.as_str(), i.ggml_dtype, i.shape.dims()))
    }

    fn read(&self, name: &str, device: &Device) -> Result<QTensor> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| candle_core::Error::Msg("GGUF reader poisoned".into()))?;
        self.content
            .tensor(&mut *file, name, device)
            .map_err(|e| candle_core::Error::Msg(format!("{}: `{name}`: {e}", self.path.display())))
    }

    fn check_shape(&self, name: &str, shape: &Shape) -> Result<()> {
        let info = &self.content.tensor_infos[name];
        if info.shape.dims() != shape.dims() {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor `{name}` has shape {:?}, expected {:?}",
                self.path.display(),
                info.shape.dims(),
                shape.dims()
            )));
        }
        Ok(())
    }

    /// The quantized tensor `name` when the file stores it in `ggml`.
    fn qtensor(
        &self,
        name: &str,
        ggml: GgmlDType,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Option<QTensor>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        if info.ggml_dtype != ggml {
            return Ok(None);
        }
        self.check_shape(name, &shape.into())?;
        self.read(name, device).map(Some)
    }

    /// A VarBuilder over the file's float tensors (quantized ones are dequantized).
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(GgufBackend(self.clone())), dtype, device.clone())
    }
}

struct GgufBackend(Arc<GgufWeights>);

impl SimpleBackend for GgufBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if !self.0.contains(name) {
            return Err(candle_core::Error::Msg(format!(
                "{}: missing tensor `{name}` (expected shape {:?})",
                self.0.path.display(),
                shape.dims()
            )));
        }
        self.0.check_shape(name, &shape)?;
        self.get_unchecked(name, dtype, device)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.0
            .read(name, &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Writes the tensors `names` (read one at a time by `load`) to a GGUF file: names in
/// `quantize` are stored in `precision`'s blocks when their input width allows it, the others
/// in their float dtype. Returns how many were quantized.
pub fn write_gguf(
    path: &Path,
    precision: LmPrecision,
    names: &[String],
    load: &dyn Fn(&str) -> Result<Tensor>,
    quantize: &dyn Fn(&str) -> bool,
) -> Result<usize> {
    let mut stored: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut quantized = 0;
    for name in names {
        let t = &load(name)?;
        let q = match precision.ggml() {
            Some(g) if quantize(name) && t.rank() == 2 => {
                quantized += 1;
                let k = t.dim(1)?;
                let pad = k.next_multiple_of(g.block_size()) - k;
                QTensor::quantize(&t.to_dtype(DType::F32)?.pad_with_zeros(1, 0, pad)?, g)?
            }
            _ => {
                let g = match t.dtype() {
                    DType::F16 => GgmlDType::F16,
                    DType::BF16 => GgmlDType::BF16,
                    _ => GgmlDType::F32,
                };
                let t = if g == GgmlDType::F32 {
                    t.to_dtype(DType::F32)?
                } else {
                    t.clone()
                };
                QTensor::quantize(&t, g)?
            }
        };
        stored.push((name.clone(), q));
    }
    let tmp = path.with_extension("gguf.partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", tmp.display())))?,
    );
    let value = gguf_file::Value::String(precision.name().to_string());
    let refs: Vec<(&str, &QTensor)> = stored.iter().map(|(n, q)| (n.as_str(), q)).collect();
    gguf_file::write(&mut out, &[(GGUF_PRECISION_KEY, &value)], &refs)?;
    drop(out);
    std::fs::rename(&tmp, path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    Ok(quantized)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Largest absolute difference of two f32 tensors (the engine's unit tests share it).
    pub(crate) fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn float_layout_matches_candle_linear() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (24, 16), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 24, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev)?;
        let want = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(&x)?;
        let got = QLinear::from_weight(&w, Some(b))?.forward(&x)?;
        assert_eq!(got.dims(), &[2, 5, 24]);
        assert!(max_abs(&want, &got) < 1e-5);
        Ok(())
    }

    #[test]
    fn quantized_linear_is_close_and_pads_below_the_block() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 256), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 64, &dev)?;
        let ws = Tensor::randn(0f32, 1.0, (4, 8), &dev)?;
        let vb = VarBuilder::from_tensors(
            HashMap::from([
                ("l.weight".to_string(), w.clone()),
                ("l.bias".to_string(), b.clone()),
                ("s.weight".to_string(), ws.clone()),
            ]),
            DType::F32,
            &dev,
        );
        let x = Tensor::randn(0f32, 1.0, (2, 1, 256), &dev)?;
        let float = candle_nn::Linear::new(w, Some(b));
        let want = float.forward(&x)?;
        for p in [LmPrecision::Q8_0, LmPrecision::Q4K] {
            let l = LinearLoader::new(p, None).linear(256, 64, true, vb.pp("l"))?;
            assert!(l.is_quantized(), "{p}");
            // RMS error relative to the outputs' RMS: about 0.5 % (q8_0) and 7-9 % (q4_k:
            // 16 levels per 32-value sub-block on Gaussian weights).
            let rms = |t: &Tensor| -> Result<f32> { t.sqr()?.mean_all()?.sqrt()?.to_scalar() };
            let rel = rms(&(&want - l.forward(&x)?)?)? / rms(&want)?;
            let tol = if p == LmPrecision::Q8_0 { 0.015 } else { 0.15 };
            assert!(rel < tol && rel > 0.0, "{p}: relative error {rel}");
            // A prefill's many rows go through the expanded weight: the same layer, within
            // the same error of the float one, and each row as the few-row kernel gives it
            // up to the activations' own 8-bit rounding there.
            let xs = Tensor::randn(0f32, 1.0, (2, DEQUANTIZE_ROWS / 2 + 3, 256), &dev)?;
            let many = l.forward(&xs)?;
            let rel_many = rms(&(float.forward(&xs)? - &many)?)? / rms(&many)?;
            assert!(
                rel_many < tol && rel_many > 0.0,
                "{p}: many rows, error {rel_many}"
            );
            let few = Tensor::cat(
                &(0..xs.dim(1)?)
                    .map(|i| l.forward(&xs.narrow(1, i, 1)?))
                    .collect::<Result<Vec<_>>>()?,
                1,
            )?;
            let rel_rows = rms(&(&few - &many)?)? / rms(&many)?;
            assert!(rel_rows < 0.02, "{p}: many vs few rows {rel_rows}");
        }
        // Below the block the weight and its input are zero-padded.
        let small = LinearLoader::new(LmPrecision::Q8_0, None).linear(8, 4, false, vb.pp("s"))?;
        assert!(small.is_quantized());
        let x = Tensor::randn(0f32, 1.0, (3, 8), &dev)?;
        let want = x.matmul(&ws.t()?)?;
        let got = small.forward(&x)?;
        assert_eq!(got.dims(), &[3, 4]);
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(max_abs(&want, &got) < 0.02 * scale);
        Ok(())
    }

    #[test]
    fn precision_names_round_trip() {
        for p in LmPrecision::ALL {
            assert_eq!(p.name().parse::<LmPrecision>(), Ok(p));
        }
        assert_eq!("Q4K".parse::<LmPrecision>(), Ok(LmPrecision::Q4K));
        assert!("q3".parse::<LmPrecision>().unwrap_err().contains("q8_0"));
        assert_eq!(LmPrecision::Q8_0.bytes_per_weight(), 34.0 / 32.0);
        assert_eq!(LmPrecision::Q4K.bytes_per_weight(), 144.0 / 256.0);
    }

    #[test]
    fn gguf_round_trip_keeps_floats_and_quantizes_linears() -> Result<()> {
        let dev = Device::Cpu;
        let dir = std::env::temp_dir().join(format!("songgen-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        let w = Tensor::randn(0f32, 1.0, (8, 64), &dev)?;
        let e = Tensor::randn(0f32, 1.0, (5, 4), &dev)?.to_dtype(DType::F16)?;
        let (w2, e2) = (w.clone(), e.clone());
        let n = write_gguf(
            &path,
            LmPrecision::Q8_0,
            &["l.weight".into(), "emb".into()],
            &|n| Ok(if n == "emb" { e2.clone() } else { w2.clone() }),
            &|n| n == "l.weight",
        )?;
        assert_eq!(n, 1);
        let g = Arc::new(GgufWeights::open(&path)?);
        assert_eq!(g.precision(), Some("q8_0"));
        let vb = g.var_builder(DType::F32, &dev);
        let e2 = vb.get((5, 4), "emb")?;
        assert_eq!(max_abs(&e.to_dtype(DType::F32)?, &e2), 0.0);
        let err = vb.get((4, 5), "emb").unwrap_err().to_string();
        assert!(err.contains("has shape [5, 4], expected [4, 5]"), "{err}");
        let l = LinearLoader::new(LmPrecision::Q8_0, Some(g.clone())).linear(
            64,
            8,
            false,
            vb.pp("l"),
        )?;
        assert!(l.is_quantized());
        let x = Tensor::randn(0f32, 1.0, (3, 64), &dev)?;
        let want = x.matmul(&w.t()?)?;
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(max_abs(&want, &l.forward(&x)?) < 0.02 * scale);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
