//! Files the plugin reads and writes off the audio thread: the per-user cache (takes, captures,
//! the licence acknowledgement) and WAV decoding/encoding.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::playback::Stereo;

/// Environment variable overriding the cache folder.
pub const CACHE_ENV: &str = "SONGGEN_CACHE_DIR";

/// Per-user cache: `$SONGGEN_CACHE_DIR`, else `$XDG_CACHE_HOME/songgen`, else `~/.cache/songgen`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("songgen");
    }
    match std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")) {
        Some(home) => PathBuf::from(home).join(".cache").join("songgen"),
        None => std::env::temp_dir().join("songgen"),
    }
}

/// Folder a take's stems are written to.
pub fn take_dir(take_id: &str) -> PathBuf {
    cache_dir().join("takes").join(take_id)
}

pub fn captures_dir() -> PathBuf {
    cache_dir().join("captures")
}

fn licence_marker() -> PathBuf {
    cache_dir().join("licence-accepted")
}

/// Whether this user acknowledged the model licence notice.
pub fn licence_accepted() -> bool {
    licence_marker().is_file()
}

pub fn accept_licence() -> Result<()> {
    let marker = licence_marker();
    std::fs::create_dir_all(marker.parent().expect("cache dir"))?;
    std::fs::write(&marker, "accepted\n").with_context(|| format!("writing {}", marker.display()))
}

/// Reads a WAV file as stereo (mono is duplicated) at `sample_rate`, resampling linearly when the
/// file's rate differs.
pub fn read_wav(path: &Path, sample_rate: f32) -> Result<Stereo> {
    let mut reader =
        hound::WavReader::open(path).with_context(|| format!("opening {}", path.display()))?;
    let spec = reader.spec();
    let channels = spec.channels as usize;
    if channels == 0 {
        bail!("{}: no channels", path.display());
    }
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
        }
    }
    .with_context(|| format!("decoding {}", path.display()))?;
    let frames = samples.len() / channels;
    let mut left = Vec::with_capacity(frames);
    let mut right = Vec::with_capacity(frames);
    for f in samples.chunks_exact(channels) {
        left.push(f[0]);
        right.push(if channels > 1 { f[1] } else { f[0] });
    }
    let from = spec.sample_rate as f32;
    if (from - sample_rate).abs() < 0.5 {
        return Ok(Stereo { left, right });
    }
    Ok(Stereo {
        left: resample_linear(&left, from, sample_rate),
        right: resample_linear(&right, from, sample_rate),
    })
}

/// Linear-interpolation resampling: cheap and click-free, good enough for monitoring takes in
/// the host (exported stems are copied untouched).
pub fn resample_linear(x: &[f32], from: f32, to: f32) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let ratio = from as f64 / to as f64;
    let n = ((x.len() as f64) / ratio).round() as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 * ratio;
            let k = t.floor() as usize;
            let frac = (t - k as f64) as f32;
            let a = x[k.min(x.len() - 1)];
            let b = x[(k + 1).min(x.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

/// Writes stereo audio as 16-bit PCM (what every audio loader reads).
pub fn write_wav(path: &Path, left: &[f32], right: &[f32], sample_rate: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("creating {}", path.display()))?;
    for (l, r) in left.iter().zip(right) {
        for s in [l, r] {
            w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)?;
        }
    }
    w.finalize()
        .with_context(|| format!("writing {}", path.display()))
}

/// Peak level of `bins` equal slices of a stereo signal, for drawing a waveform.
pub fn peaks(left: &[f32], right: &[f32], bins: usize) -> Vec<f32> {
    let n = left.len().min(right.len());
    if n == 0 || bins == 0 {
        return Vec::new();
    }
    (0..bins)
        .map(|b| {
            let (s, e) = (
                b * n / bins,
                ((b + 1) * n / bins).max(b * n / bins + 1).min(n),
            );
            left[s..e]
                .iter()
                .chain(&right[s..e])
                .fold(0.0f32, |m, v| m.max(v.abs()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trip_and_resampling() {
        let dir = std::env::temp_dir().join(format!("songgen-files-{}", std::process::id()));
        let path = dir.join("x.wav");
        let left: Vec<f32> = (0..100).map(|i| i as f32 / 200.0).collect();
        let right: Vec<f32> = left.iter().map(|v| -v).collect();
        write_wav(&path, &left, &right, 100).unwrap();
        let same = read_wav(&path, 100.0).unwrap();
        assert_eq!(same.frames(), 100);
        assert!((same.left[50] - 0.25).abs() < 1e-4);
        assert!((same.right[50] + 0.25).abs() < 1e-4);
        let double = read_wav(&path, 200.0).unwrap();
        assert_eq!(double.frames(), 200);
        assert!((double.left[101] - 0.2525).abs() < 1e-3);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(peaks(&[0.1, -0.5, 0.2, 0.3], &[0.0; 4], 2), [0.5, 0.3]);
    }
}
