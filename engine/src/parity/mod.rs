//! The parity runner: executes every case of a fixture directory in the common
//! `songgen-parity/1` format against the engine and compares with the reference's tensors.
//!
//! The format, not any particular set of files, is the contract: a directory names its `kind`
//! (which suite of engine units runs it), its tiny model `config` and `weights`, and its cases.
//! Each case names a `unit` (the engine function to run), scalar `params`, `in.*` input tensors,
//! `out.*` expected outputs and tolerances. Suites turn a case into output tensors; this module
//! does the comparing and reporting, identically for every kind.

mod compare;
pub mod decoder;
pub mod lelm;
pub mod prompt;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

pub use compare::{compare_case, Verdict};

/// Tensors by name (`in.*` for inputs, `out.*`/`dbg.*` for outputs).
pub type Tensors = HashMap<String, Tensor>;

/// `manifest.json` of a fixture directory.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub kind: String,
    /// Everything needed to build the tiny models, under the upstream config key names.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Weight file names relative to the directory (a string, or an object of named files).
    #[serde(default)]
    pub weights: serde_json::Value,
    pub cases: Vec<Case>,
    /// All other top-level keys (e.g. `tokenizer_dir`), for the suites.
    #[serde(flatten)]
    pub extra: HashMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    pub unit: String,
    pub file: PathBuf,
    #[serde(default)]
    pub params: serde_json::Value,
    #[serde(default)]
    pub tolerance: Tolerance,
    #[serde(default)]
    pub decimate: HashMap<String, Decimate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Tolerance {
    #[serde(default)]
    pub atol: f64,
    #[serde(default)]
    pub rtol: f64,
    #[serde(default)]
    pub per_tensor: HashMap<String, TensorTolerance>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TensorTolerance {
    #[serde(default)]
    pub atol: f64,
    #[serde(default)]
    pub rtol: f64,
    /// A `dbg.*` 0/1 mask of near-tie elements exempt from exact integer matching.
    #[serde(default)]
    pub fragile_key: Option<String>,
}

/// Only every `stride`-th sample along the last axis is stored; the full output must have
/// `full_shape`.
#[derive(Debug, Clone, Deserialize)]
pub struct Decimate {
    pub stride: usize,
    pub full_shape: Vec<usize>,
}

/// A suite runs the units of one fixture `kind` with the models built from one manifest.
pub trait Suite {
    /// Runs `case` on its `in.*` tensors and returns the `out.*` (and checked `dbg.*`) tensors.
    fn run(&mut self, case: &Case, inputs: &Tensors) -> Result<Tensors>;
}

/// What a directory run produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

impl Summary {
    pub fn add(self, other: Summary) -> Summary {
        Summary {
            passed: self.passed + other.passed,
            failed: self.failed + other.failed,
        }
    }
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let manifest: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if manifest.format != "songgen-parity/1" {
            bail!(
                "{}: unsupported format {:?}",
                path.display(),
                manifest.format
            );
        }
        Ok(manifest)
    }

    /// Path of a weight file named in `weights` (either the string itself or `weights[key]`,
    /// which may be a string or an object with a `file` field).
    pub fn weight_path(&self, dir: &Path, key: Option<&str>) -> Result<PathBuf> {
        let entry = match key {
            None => &self.weights,
            Some(key) => self
                .weights
                .get(key)
                .with_context(|| format!("manifest has no weights entry {key:?}"))?,
        };
        let file = entry
            .as_str()
            .or_else(|| entry.get("file").and_then(|f| f.as_str()))
            .with_context(|| format!("weights entry {key:?} is not a file name"))?;
        Ok(dir.join(file))
    }
}

fn load_suite(dir: &Path, manifest: &Manifest, device: &Device) -> Result<Box<dyn Suite>> {
    Ok(match manifest.kind.as_str() {
        "lelm" => Box::new(lelm::LelmSuite::load(dir, manifest, device)?),
        "decoder" => Box::new(decoder::DecoderSuite::load(dir, manifest, device)?),
        "prompt" => Box::new(prompt::PromptSuite::load(dir, manifest, device)?),
        other => bail!("{}: unknown fixture kind {other:?}", dir.display()),
    })
}

/// `parity [--filter SUBSTR] [--device cpu|cuda] <DIR>...`, as run by `cargo xtask parity` and
/// `songgen-check parity`: every case of each directory, one line per case and a closing
/// `N passed, M failed` line on `out`. Returns whether every case passed; an error for bad
/// arguments or an unusable device.
pub fn command(args: &[String], out: &mut dyn Write) -> Result<bool> {
    let mut filter = None;
    let mut device = Device::Cpu;
    let mut dirs = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--filter" => filter = Some(it.next().context("--filter needs a value")?.clone()),
            "--device" => {
                device = match it.next().map(String::as_str) {
                    Some("cpu") => Device::Cpu,
                    Some("cuda") => {
                        let d = Device::new_cuda(0).context("--device cuda")?;
                        crate::gpu::configure_numerics();
                        d
                    }
                    other => bail!("--device takes cpu or cuda, not {other:?}"),
                }
            }
            _ if arg.starts_with("--") => bail!("unknown option {arg:?}"),
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if dirs.is_empty() {
        bail!("parity needs at least one fixture directory");
    }
    Ok(run_dirs(&dirs, filter.as_deref(), &device, out)?.failed == 0)
}

/// Runs every directory with [`run_dir_on`]; a directory that cannot be loaded counts as one
/// failure. Ends with the `N passed, M failed` line.
pub fn run_dirs(
    dirs: &[PathBuf],
    filter: Option<&str>,
    device: &Device,
    out: &mut dyn Write,
) -> std::io::Result<Summary> {
    let mut total = Summary::default();
    for dir in dirs {
        match run_dir_on(dir, filter, device, out) {
            Ok(s) => total = total.add(s),
            Err(e) => {
                writeln!(out, "FAIL {} - {e:#}", dir.display())?;
                total.failed += 1;
            }
        }
    }
    writeln!(out, "{} passed, {} failed", total.passed, total.failed)?;
    Ok(total)
}

/// Runs every case of `dir` on the CPU, printing one line per case to `out`.
/// `filter` keeps only the cases whose name contains it.
pub fn run_dir(dir: &Path, filter: Option<&str>, out: &mut dyn Write) -> Result<Summary> {
    run_dir_on(dir, filter, &Device::Cpu, out)
}

/// [`run_dir`] with the models and the case inputs on `device` (f32, as the fixtures were made).
pub fn run_dir_on(
    dir: &Path,
    filter: Option<&str>,
    device: &Device,
    out: &mut dyn Write,
) -> Result<Summary> {
    let manifest = Manifest::read(dir)?;
    let mut suite = load_suite(dir, &manifest, device)
        .with_context(|| format!("loading the {} suite of {}", manifest.kind, dir.display()))?;
    let mut summary = Summary::default();
    for case in manifest
        .cases
        .iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
    {
        let verdict = run_case(dir, suite.as_mut(), case, device);
        match &verdict {
            Verdict::Pass { max_err } => {
                summary.passed += 1;
                writeln!(out, "PASS {} {} {max_err:.3e}", case.name, case.unit)?;
            }
            Verdict::Fail { tensor, detail } => {
                summary.failed += 1;
                writeln!(out, "FAIL {} {} {tensor} {detail}", case.name, case.unit)?;
            }
        }
        out.flush()?;
    }
    Ok(summary)
}

fn run_case(dir: &Path, suite: &mut dyn Suite, case: &Case, device: &Device) -> Verdict {
    let path = dir.join(&case.file);
    let tensors = match candle_core::safetensors::load(&path, &Device::Cpu) {
        Ok(t) => t,
        Err(e) => return Verdict::error(format!("cannot read {}: {e}", path.display())),
    };
    let inputs: Result<Tensors, _> = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("in."))
        .map(|(k, v)| v.to_device(device).map(|v| (k.clone(), v)))
        .collect();
    let inputs = match inputs {
        Ok(i) => i,
        Err(e) => return Verdict::error(format!("cannot move the inputs to the device: {e}")),
    };
    match suite.run(case, &inputs) {
        Ok(got) => compare_case(case, &tensors, &got),
        Err(e) => Verdict::error(format!("{e:#}")),
    }
}

/// Reads a scalar parameter of a case, with a clear error when it is missing or mistyped.
pub fn param<T: serde::de::DeserializeOwned>(case: &Case, key: &str) -> Result<T> {
    let value = case
        .params
        .get(key)
        .with_context(|| format!("case {}: missing param {key:?}", case.name))?;
    serde_json::from_value(value.clone())
        .with_context(|| format!("case {}: param {key:?} = {value}", case.name))
}

/// An input tensor of a case, with a clear error when it is missing.
pub fn input<'a>(case: &Case, inputs: &'a Tensors, name: &str) -> Result<&'a Tensor> {
    inputs
        .get(name)
        .with_context(|| format!("case {}: missing input tensor {name:?}", case.name))
}
