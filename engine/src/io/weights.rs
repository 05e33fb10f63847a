//! Weight files in the layouts the reference ships: `.safetensors` (memory-mapped) and PyTorch
//! zip pickles (`model.pt`, `.ckpt` with a nested `state_dict`, `.pth`).
//!
//! Tensors are looked up by their ORIGINAL names and converted to the dtype the model asks for
//! (checkpoints mix F16/BF16/F32 per tensor). A missing or mis-shaped tensor is an error that
//! names the file, the tensor and the expected shape: a model never silently runs with a weight
//! it did not load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Errors while opening a weight file.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("weight file {path}: not found")]
    NotFound { path: PathBuf },
    #[error("weight file {path}: cannot read it ({reason}); the file may be truncated or not a checkpoint")]
    Unreadable { path: PathBuf, reason: String },
    #[error("weight file {path}: holds no tensors (expected a state dict)")]
    Empty { path: PathBuf },
}

enum Source {
    Safetensors(MmapedSafetensors),
    Pth(PthTensors),
}

/// One checkpoint file, opened lazily: tensors are read when a model asks for them.
pub struct WeightFile {
    path: PathBuf,
    source: Source,
    shapes: HashMap<String, (Vec<usize>, DType)>,
}

impl WeightFile {
    /// Opens a checkpoint, picking the reader from the file's content (not its extension, since
    /// the reference names pickles `.pt`, `.pth` and `.ckpt` alike). Lightning-style pickles that
    /// wrap the weights in `state_dict` are unwrapped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(WeightError::NotFound { path });
        }
        let unreadable = |e: &dyn std::fmt::Display| WeightError::Unreadable {
            path: path.clone(),
            reason: first_line(e),
        };
        let source = if is_zip(&path).map_err(|e| unreadable(&e))? {
            let pth = PthTensors::new(&path, None).map_err(|e| unreadable(&e))?;
            let pth = if pth.tensor_infos().is_empty() {
                PthTensors::new(&path, Some("state_dict")).map_err(|e| unreadable(&e))?
            } else {
                pth
            };
            Source::Pth(pth)
        } else {
            // SAFETY: the file is mapped read-only; like every mmap-based loader we assume it is
            // not modified while the model is loaded.
            Source::Safetensors(
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| unreadable(&e))?,
            )
        };
        let shapes: HashMap<_, _> = match &source {
            Source::Safetensors(st) => st
                .tensors()
                .into_iter()
                .filter_map(|(name, view)| {
                    let dtype = DType::try_from(view.dtype()).ok()?;
                    Some((name, (view.shape().to_vec(), dtype)))
                })
                .collect(),
            Source::Pth(pth) => pth
                .tensor_infos()
                .iter()
                .map(|(name, info)| (name.clone(), (info.layout.dims().to_vec(), info.dtype)))
                .collect(),
        };
        if shapes.is_empty() {
            return Err(WeightError::Empty { path });
        }
        Ok(Self {
            path,
            source,
            shapes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names in the file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
    }

    /// The stored shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(|(s, _)| s.as_slice())
    }

    /// The stored dtype of `name`, if present.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.shapes.get(name).map(|(_, d)| *d)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// Reads `name` in its stored dtype.
    pub fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        if !self.contains(name) {
            return Err(load_error(format!(
                "{}: missing tensor `{name}`",
                self.path.display()
            )));
        }
        let read = match &self.source {
            Source::Safetensors(st) => st.load(name, device),
            Source::Pth(pth) => pth
                .get(name)
                .and_then(|t| t.ok_or_else(|| load_error("not present".into())))
                .and_then(|t| t.to_device(device)),
        };
        read.map_err(|e| {
            load_error(format!(
                "{}: cannot read tensor `{name}` ({}); the file may be truncated",
                self.path.display(),
                first_line(&e)
            ))
        })
    }

    /// A [`VarBuilder`] over this file that converts every tensor to `dtype` on `device`.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl SimpleBackend for WeightFile {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.shape(name) {
            None => Err(load_error(format!(
                "{}: missing tensor `{name}` (expected shape {:?})",
                self.path.display(),
                shape.dims()
            ))),
            Some(stored) if stored != shape.dims() => Err(load_error(format!(
                "{}: tensor `{name}` has shape {stored:?}, expected {:?}",
                self.path.display(),
                shape.dims()
            ))),
            Some(_) => self.load(name, device)?.to_dtype(dtype),
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// A loading error as one line. candle's own constructors attach a backtrace when
/// `RUST_BACKTRACE` is set, which would turn "missing tensor X" into a page of frames.
fn load_error(message: String) -> candle_core::Error {
    candle_core::Error::Msg(message)
}

fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn is_zip(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path)?;
    let n = file.read(&mut magic)?;
    Ok(n == 4 && magic == *b"PK\x03\x04")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("songgen-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn write_st(path: &Path) {
        let a = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = a.to_dtype(DType::F16).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("a".to_string(), a), ("b".to_string(), b)]),
            path,
        )
        .unwrap();
    }

    #[test]
    fn upcasts_and_checks_shapes() {
        let path = tmp("ok.safetensors");
        write_st(&path);
        let vb = WeightFile::open(&path)
            .unwrap()
            .var_builder(DType::F32, &Device::Cpu);
        let b = vb.get((2, 3), "b").unwrap();
        assert_eq!(b.dtype(), DType::F32);
        assert_eq!(
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2., 3., 4., 5.]
        );
        let err = vb.get((3, 2), "a").unwrap_err().to_string();
        assert!(
            err.contains("`a` has shape [2, 3], expected [3, 2]"),
            "{err}"
        );
        let err = vb.get((2, 3), "c").unwrap_err().to_string();
        assert!(
            err.contains("missing tensor `c` (expected shape [2, 3])"),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_missing_files_are_named() {
        let path = tmp("trunc.safetensors");
        write_st(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = WeightFile::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("trunc.safetensors") && err.contains("truncated"),
            "{err}"
        );
        let err = WeightFile::open(tmp("absent.pt"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("absent.pt: not found"), "{err}");
    }
}
