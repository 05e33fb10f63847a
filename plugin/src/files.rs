//! Files the plugin reads and writes off the audio thread: the per-user cache (takes and
//! captures) and WAV decoding/encoding.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

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

/// Folder a take's stems are written to. `take_id` must pass `songgen_protocol::check_id`
/// (see [`remove_take_dir`]).
pub fn take_dir(take_id: &str) -> PathBuf {
    takes_dir().join(take_id)
}

pub fn captures_dir() -> PathBuf {
    cache_dir().join("captures")
}

/// `path` as the file system sees it: absolute, with every symbolic link of its longest existing
/// ancestor resolved and the rest appended as written. `None` when it holds a `..` component
/// (a path from a project is never trusted to walk upwards) or cannot be made absolute.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return None;
    }
    let abs = std::path::absolute(path).ok()?;
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    loop {
        if let Ok(real) = base.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return Some(out);
        }
        rest.push(base.file_name()?.to_owned());
        base = base.parent()?;
    }
}

/// Whether `path` lies strictly inside `root` (both [`resolve`]d).
pub fn is_inside(path: &Path, root: &Path) -> bool {
    match (resolve(path), resolve(root)) {
        (Some(p), Some(r)) => p != r && p.starts_with(&r),
        _ => false,
    }
}

/// Folder of all takes (`<cache>/takes`).
pub fn takes_dir() -> PathBuf {
    cache_dir().join("takes")
}

/// Deletes a take's folder, only when `take_id` is a valid id and the folder lies strictly
/// inside [`takes_dir`] (a symbolic link there is removed, not followed).
pub fn remove_take_dir(take_id: &str) -> Result<()> {
    songgen_protocol::check_id(take_id).map_err(anyhow::Error::msg)?;
    let dir = take_dir(take_id);
    if !is_inside(&dir, &takes_dir()) || dir.parent() != Some(takes_dir().as_path()) {
        anyhow::bail!("{} is not a take folder of the cache", dir.display());
    }
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(m) if !m.is_dir() => {
            std::fs::remove_file(&dir).with_context(|| format!("removing {}", dir.display()))
        }
        _ => std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Reads a WAV file as stereo (mono is duplicated) at `sample_rate`, resampling linearly when the
/// file's rate differs. Decoding is `songgen_protocol::audio::read_wav` (any PCM/float format),
/// shared with the engine.
pub fn read_wav(path: &Path, sample_rate: f32) -> Result<Stereo> {
    let audio = songgen_protocol::audio::read_wav(path)?;
    let mut channels = audio.channels.into_iter();
    let left = channels.next().unwrap_or_default();
    let right = channels.next().unwrap_or_else(|| left.clone());
    let from = audio.sample_rate as f32;
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

    #[test]
    fn paths_resolve_through_links_and_never_walk_up() {
        let dir = std::env::temp_dir().join(format!("songgen-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("cache").join("takes");
        std::fs::create_dir_all(root.join("t1")).unwrap();
        std::fs::write(root.join("t1").join("a.wav"), b"x").unwrap();
        assert!(is_inside(&root.join("t1").join("a.wav"), &root));
        // Missing files and folders resolve lexically below their existing ancestor.
        assert!(is_inside(
            &root.join("t2").join("missing.wav"),
            &root.join("t2")
        ));
        assert!(!is_inside(&root, &root), "strictly inside");
        assert!(!is_inside(&root.join("t1/../../x"), &root));
        assert!(!is_inside(Path::new("/etc/passwd"), &root));
        assert!(!is_inside(&dir.join("cache").join("takes2"), &root));
        assert_eq!(resolve(Path::new("/a/../b")), None);
        #[cfg(unix)]
        {
            // A link inside the cache that points out of it is outside.
            let outside = dir.join("outside");
            std::fs::create_dir_all(&outside).unwrap();
            std::fs::write(outside.join("s.wav"), b"x").unwrap();
            std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
            assert!(!is_inside(&root.join("link").join("s.wav"), &root));
            assert!(!is_inside(&root.join("link").join("new.wav"), &root));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
