//! Converting PyTorch checkpoints (`model.pt`, Lightning `.ckpt`, `.pth`) to safetensors.
//!
//! Safetensors files are memory-mapped, so a converted `model.safetensors` loads in seconds
//! instead of unpickling a 10+ GB zip. Tensor names, shapes and dtypes are kept exactly, so
//! the loaders find the same tensors in either file. Tensors are read one at a time while the
//! output is written, so memory use stays at the size of the largest tensor.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use safetensors::tensor::{Dtype, View};

use crate::io::weights::WeightFile;

/// What a conversion wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub output: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
}

/// A tensor of the source file, read when the writer asks for its bytes.
struct LazyTensor<'a> {
    file: &'a WeightFile,
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    len: usize,
    error: &'a RefCell<Option<String>>,
}

impl View for LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = self
            .file
            .load(&self.name, &Device::Cpu)
            .map(|t| t.data().into_owned());
        match bytes {
            Ok(b) if b.len() == self.len => Cow::Owned(b),
            Ok(b) => {
                self.fail(format!(
                    "tensor `{}`: read {} bytes, expected {}",
                    self.name,
                    b.len(),
                    self.len
                ));
                Cow::Owned(vec![0; self.len])
            }
            Err(e) => {
                self.fail(e.to_string());
                Cow::Owned(vec![0; self.len])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

impl LazyTensor<'_> {
    fn fail(&self, message: String) {
        self.error.borrow_mut().get_or_insert(message);
    }
}

fn st_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I64 => Dtype::I64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        _ => return None,
    })
}

/// Converts `input` to safetensors at `output` (default: the input's name with `.safetensors`).
/// Refuses to replace an existing output unless `overwrite`; the output appears only once
/// complete.
pub fn to_safetensors(
    input: &Path,
    output: Option<&Path>,
    overwrite: bool,
) -> anyhow::Result<Converted> {
    let output = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| input.with_extension("safetensors"));
    if output == input {
        anyhow::bail!("{} is already the output path", input.display());
    }
    if output.exists() && !overwrite {
        anyhow::bail!(
            "{} already exists (pass --overwrite to replace it)",
            output.display()
        );
    }
    let file = WeightFile::open(input)?;
    let error = RefCell::new(None);
    let mut views = Vec::new();
    for name in file.names() {
        let shape = file.shape(name).unwrap_or_default().to_vec();
        let dtype = file.dtype(name).unwrap_or(DType::F32);
        let st = st_dtype(dtype).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: tensor `{name}` has dtype {dtype:?}, which safetensors cannot hold here",
                input.display()
            )
        })?;
        let len = shape.iter().product::<usize>() * dtype.size_in_bytes();
        views.push((
            name.to_string(),
            LazyTensor {
                file: &file,
                name: name.to_string(),
                shape,
                dtype: st,
                len,
                error: &error,
            },
        ));
    }
    let tensors = views.len();
    let tmp = output.with_file_name(format!(
        ".{}.{}.partial",
        output.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = safetensors::tensor::serialize_to_file(views, None, &tmp);
    if let Some(e) = error.into_inner() {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("{}: {e}", input.display());
    }
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot write {}: {e}", output.display());
    }
    // Check the result before it takes the final name.
    let check = WeightFile::open(&tmp)?;
    if check.names().count() != tensors {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("{}: wrote an incomplete file", output.display());
    }
    drop(check);
    std::fs::rename(&tmp, &output)?;
    let bytes = std::fs::metadata(&output)?.len();
    Ok(Converted {
        output,
        tensors,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lightning_ckpt_converts_to_identical_tensors() {
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity/decoder/vae.ckpt");
        let out = std::env::temp_dir().join(format!(
            "songgen-convert-{}.safetensors",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&out);
        let c = to_safetensors(&src, Some(&out), false).unwrap();
        let a = WeightFile::open(&src).unwrap();
        let b = WeightFile::open(&out).unwrap();
        assert_eq!(c.tensors, a.names().count());
        for name in a.names() {
            assert_eq!(a.dtype(name), b.dtype(name), "{name}");
            let x = a.load(name, &Device::Cpu).unwrap();
            let y = b.load(name, &Device::Cpu).unwrap();
            assert_eq!(x.data(), y.data(), "{name}");
        }
        let err = to_safetensors(&src, Some(&out), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        std::fs::remove_file(out).unwrap();
    }
}
