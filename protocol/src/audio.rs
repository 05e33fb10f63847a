//! Reading prompt clips and writing stems as WAV files.
//!
//! Stems are written to a hidden temporary file in the output folder and renamed into place once
//! complete, so an interrupted run never leaves a truncated `.wav` under a final name and never
//! replaces an earlier take halfway.

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Sample rate of everything the decoder produces.
pub const SAMPLE_RATE: u32 = 48_000;

/// Multichannel audio as one `Vec` per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub channels: Vec<Vec<f32>>,
    pub sample_rate: u32,
}

impl Audio {
    /// Length in sample frames (the shortest channel).
    pub fn frames(&self) -> usize {
        self.channels.iter().map(Vec::len).min().unwrap_or(0)
    }
}

/// Errors reading or writing audio files; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("audio file {path}: not found")]
    NotFound { path: PathBuf },
    #[error("audio file {path}: cannot read it as WAV ({reason}); convert it to a 16-bit, 24-bit or float WAV file")]
    Unreadable { path: PathBuf, reason: String },
    #[error("audio file {path}: holds no samples")]
    Empty { path: PathBuf },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path} already exists; pass --overwrite to replace it or choose another output folder or id")]
    Exists { path: PathBuf },
}

/// Reads a WAV file (8/16/24/32-bit integer or 32-bit float PCM, any rate and channel count).
pub fn read_wav(path: &Path) -> Result<Audio, AudioError> {
    let clip = read_wav_prefix(path, f64::INFINITY)?;
    if clip.truncated {
        return Err(AudioError::Unreadable {
            path: path.to_path_buf(),
            reason: "the file ends before the length its header gives (truncated)".into(),
        });
    }
    Ok(clip.audio)
}

/// The start of a WAV file, as [`read_wav_prefix`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipRead {
    /// At most the requested seconds.
    pub audio: Audio,
    /// Length of the whole file in seconds (by its header).
    pub file_seconds: f64,
    /// The file ends before its header says (a capture or copy that was cut off); `audio`
    /// holds what is there, as ffmpeg (the reference's reader) decodes it.
    pub truncated: bool,
}

/// Reads the first `max_seconds` of a WAV file, so a long file costs no more than that. A file
/// cut off mid-data yields the samples before the cut (`truncated`); one with no sample at all
/// is [`AudioError::Empty`].
pub fn read_wav_prefix(path: &Path, max_seconds: f64) -> Result<ClipRead, AudioError> {
    if !path.is_file() {
        return Err(AudioError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let unreadable = |e: hound::Error| AudioError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut reader = hound::WavReader::open(path).map_err(unreadable)?;
    let spec = reader.spec();
    if spec.sample_rate == 0 {
        return Err(AudioError::Unreadable {
            path: path.to_path_buf(),
            reason: "its header gives a sample rate of 0 Hz".into(),
        });
    }
    let n_ch = usize::from(spec.channels.max(1));
    let file_seconds = reader.duration() as f64 / spec.sample_rate as f64;
    let max_frames = (max_seconds * spec.sample_rate as f64).min(u32::MAX as f64) as usize;
    let wanted = (reader.duration() as usize).min(max_frames) * n_ch;
    let mut truncated = false;
    // Reads up to `wanted` samples; a read error after the header means the data was cut
    // off, and what came before it is kept.
    let mut take = |samples: &mut dyn Iterator<Item = Result<f32, hound::Error>>| -> Vec<f32> {
        let mut out = Vec::with_capacity(wanted);
        for s in samples.take(wanted) {
            match s {
                Ok(v) => out.push(v),
                Err(_) => {
                    truncated = true;
                    break;
                }
            }
        }
        out
    };
    let mut interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => take(&mut reader.samples::<f32>()),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            take(&mut reader.samples::<i32>().map(|s| s.map(|s| s as f32 * scale)))
        }
    };
    interleaved.truncate(interleaved.len() / n_ch * n_ch);
    if interleaved.len() < n_ch {
        return Err(AudioError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut channels = vec![Vec::with_capacity(interleaved.len() / n_ch); n_ch];
    for frame in interleaved.chunks_exact(n_ch) {
        for (ch, &s) in channels.iter_mut().zip(frame) {
            ch.push(s);
        }
    }
    Ok(ClipRead {
        audio: Audio {
            channels,
            sample_rate: spec.sample_rate,
        },
        file_seconds,
        truncated,
    })
}

/// Checks that `path` is a WAV file with samples, without reading them; returns its format and
/// length.
pub fn probe_wav(path: &Path) -> Result<WavInfo, AudioError> {
    if !path.is_file() {
        return Err(AudioError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let reader = hound::WavReader::open(path).map_err(|e| AudioError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if reader.duration() == 0 || reader.spec().sample_rate == 0 {
        return Err(AudioError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(WavInfo {
        spec: reader.spec(),
        seconds: reader.duration() as f64 / reader.spec().sample_rate as f64,
    })
}

/// What [`probe_wav`] reads from a WAV header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WavInfo {
    pub spec: hound::WavSpec,
    /// Length by the header.
    pub seconds: f64,
}

/// Writes `audio` as 32-bit float WAV (the decoder's output is not clipped, and peaks above 1.0
/// happen, so an integer format would distort them) through a temporary file and a rename.
/// Refuses to replace an existing file unless `overwrite`.
pub fn write_wav(path: &Path, audio: &Audio, overwrite: bool) -> Result<(), AudioError> {
    let mut w = WavStream::create(
        path,
        audio.channels.len() as u16,
        audio.sample_rate,
        overwrite,
    )?;
    let n = audio.frames();
    let channels: Vec<&[f32]> = audio.channels.iter().map(|c| &c[..n]).collect();
    w.append(&channels)?;
    w.finish()
}

/// A WAV file (32-bit float) written while its audio arrives: samples go to the hidden
/// temporary file (a valid WAV after every [`Self::append`]: its header is updated, so players
/// can open the growing file), which [`Self::finish`] renames into place. Dropped unfinished
/// (cancel, error), the temporary file is removed: nothing is ever left under the final name.
pub struct WavStream {
    path: PathBuf,
    tmp: PathBuf,
    overwrite: bool,
    writer: Option<hound::WavWriter<BufWriter<fs::File>>>,
    channels: usize,
    frames: u64,
}

impl WavStream {
    /// Creates the temporary file for `path`; fails at once when `path` exists and not
    /// `overwrite`.
    pub fn create(
        path: &Path,
        channels: u16,
        sample_rate: u32,
        overwrite: bool,
    ) -> Result<Self, AudioError> {
        if !overwrite && path.exists() {
            return Err(AudioError::Exists {
                path: path.to_path_buf(),
            });
        }
        let tmp = temp_path(path);
        let spec = hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let writer = fs::File::create(&tmp)
            .map_err(hound::Error::from)
            .and_then(|f| hound::WavWriter::new(BufWriter::new(f), spec))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                AudioError::Write {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            overwrite,
            writer: Some(writer),
            channels: usize::from(channels),
            frames: 0,
        })
    }

    /// The file being written until [`Self::finish`].
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Sample frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Appends planar samples (one slice per channel, equal lengths) and flushes them.
    pub fn append(&mut self, channels: &[&[f32]]) -> Result<(), AudioError> {
        let write_err = |reason: String| AudioError::Write {
            path: self.path.clone(),
            reason,
        };
        if channels.len() != self.channels {
            return Err(write_err(format!(
                "{} channels given to a {}-channel file",
                channels.len(),
                self.channels
            )));
        }
        let n = channels.iter().map(|c| c.len()).min().unwrap_or(0);
        let w = self.writer.as_mut().expect("open until finish");
        let result = (|| -> Result<(), hound::Error> {
            for i in 0..n {
                for ch in channels {
                    w.write_sample(ch[i])?;
                }
            }
            w.flush()
        })();
        result.map_err(|e| write_err(e.to_string()))?;
        self.frames += n as u64;
        Ok(())
    }

    /// Completes the file and moves it to its final name.
    pub fn finish(mut self) -> Result<(), AudioError> {
        let write_err = |reason: String| AudioError::Write {
            path: self.path.clone(),
            reason,
        };
        let w = self.writer.take().expect("open until finish");
        if let Err(e) = w.finalize() {
            let _ = fs::remove_file(&self.tmp);
            return Err(write_err(e.to_string()));
        }
        publish(&self.tmp, &self.path, self.overwrite).map_err(|e| write_err(e.to_string()))
    }
}

impl Drop for WavStream {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            drop(w);
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes a small text file (the JSON record) the same way as the stems.
pub fn write_text(path: &Path, text: &str, overwrite: bool) -> Result<(), AudioError> {
    if !overwrite && path.exists() {
        return Err(AudioError::Exists {
            path: path.to_path_buf(),
        });
    }
    let tmp = temp_path(path);
    fs::write(&tmp, text)
        .and_then(|()| publish(&tmp, path, overwrite))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            AudioError::Write {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })
}

/// `.<name>.partial` next to the destination, so the rename stays on one file system.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Moves the finished temporary file into place. Without `overwrite` a hard link is used, which
/// fails instead of replacing a file that appeared meanwhile.
fn publish(tmp: &Path, path: &Path, overwrite: bool) -> std::io::Result<()> {
    if overwrite {
        return fs::rename(tmp, path);
    }
    let linked = fs::hard_link(tmp, path);
    match linked {
        Ok(()) => fs::remove_file(tmp),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(tmp);
            Err(e)
        }
        // File systems without hard links: check-then-rename is the best available.
        Err(_) if !path.exists() => fs::rename(tmp, path),
        Err(e) => {
            let _ = fs::remove_file(tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trip_and_no_silent_overwrite() {
        let dir = std::env::temp_dir().join(format!("songgen-audio-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("take.wav");
        let audio = Audio {
            channels: vec![vec![0.5, -1.5, 0.25], vec![0.0, 1.0, -0.125]],
            sample_rate: SAMPLE_RATE,
        };
        write_wav(&path, &audio, false).unwrap();
        assert_eq!(read_wav(&path).unwrap(), audio);
        let err = write_wav(&path, &audio, false).unwrap_err();
        assert!(matches!(err, AudioError::Exists { .. }), "{err}");
        write_wav(&path, &audio, true).unwrap();
        // A stream: a valid WAV while it grows, nothing under the final name until finished,
        // and no temporary file once dropped unfinished.
        let streamed = dir.join("stream.wav");
        let mut w = WavStream::create(&streamed, 2, SAMPLE_RATE, false).unwrap();
        w.append(&[&[0.5, -1.5], &[0.0, 1.0]]).unwrap();
        assert_eq!(hound::WavReader::open(w.temp_path()).unwrap().duration(), 2);
        assert!(!streamed.exists());
        w.append(&[&[0.25], &[-0.125]]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_wav(&streamed).unwrap(), audio);
        let mut w = WavStream::create(&dir.join("dropped.wav"), 2, SAMPLE_RATE, false).unwrap();
        w.append(&[&[0.5], &[0.5]]).unwrap();
        drop(w);
        assert!(!dir.join("dropped.wav").exists());
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty());
        // Cut off mid-data: the strict reader refuses, the prompt reader keeps the start.
        let long = Audio {
            channels: vec![(0..1000).map(|i| i as f32 / 1000.0).collect(); 2],
            sample_rate: 8000,
        };
        write_wav(&path, &long, true).unwrap();
        let bytes = fs::read(&path).unwrap();
        let cut = dir.join("cut.wav");
        fs::write(&cut, &bytes[..bytes.len() - 4 * 2 * 300 - 3]).unwrap();
        let err = read_wav(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut.wav") && err.contains("truncated"),
            "{err}"
        );
        let clip = read_wav_prefix(&cut, f64::INFINITY).unwrap();
        assert!(clip.truncated);
        assert_eq!(clip.audio.frames(), 699);
        assert_eq!(clip.audio.channels[1][..699], long.channels[1][..699]);
        assert_eq!(clip.file_seconds, 1000.0 / 8000.0);
        // Only the requested start is read.
        let clip = read_wav_prefix(&path, 0.01).unwrap();
        assert!(!clip.truncated);
        assert_eq!(clip.audio.frames(), 80);
        fs::write(dir.join("bad.wav"), b"not a wav").unwrap();
        let err = read_wav(&dir.join("bad.wav")).unwrap_err().to_string();
        assert!(err.contains("bad.wav") && err.contains("WAV"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
