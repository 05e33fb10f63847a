//! Style-prompt clips as users give them, through the tiny model folder's own prompt encoders
//! (sized by their checkpoints): every kind of file a producer may drop in either encodes the
//! way the reference does or fails with a clear error naming the file, never a panic.
//! The same cases through `songgen generate` are in `cli_prompt.rs`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use songgen_engine::io::audio::{read_wav_prefix, Audio};
use songgen_engine::paths::ModelPaths;
use songgen_engine::progress::Progress;
use songgen_engine::prompt::{EncodedPrompt, PromptEncoder, READ_SECONDS};

/// The released LM's "no prompt" filler id, the encoder's default.
const PROMPT_PAD_TOKEN: i64 = 16385;
use songgen_tests::{temp_dir, tiny_model};

fn model() -> &'static (ModelPaths, PromptEncoder) {
    static MODEL: OnceLock<(ModelPaths, PromptEncoder)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let tiny = tiny_model::write(&temp_dir("prompt-clips-model"), 7).unwrap();
        let paths = ModelPaths::resolve(&tiny.model_dir, Some(&tiny.runtime_dir)).unwrap();
        let enc = PromptEncoder::load(&paths, &Device::Cpu).unwrap();
        (paths, enc)
    })
}

/// "Music": two detuned tones, a bass line and clicks, `gain` × about 0.9 peak.
pub fn music(seconds: f64, rate: u32, channels: usize, gain: f32) -> Vec<Vec<f32>> {
    let n = (seconds * rate as f64) as usize;
    (0..channels)
        .map(|c| {
            (0..n)
                .map(|i| {
                    let t = i as f32 / rate as f32;
                    let tone = (2.0 * std::f32::consts::PI * (220.0 + 3.0 * c as f32) * t).sin();
                    let bass = (2.0 * std::f32::consts::PI * 55.0 * t).sin();
                    let click = if (t * 4.0).fract() < 0.01 { 0.5 } else { 0.0 };
                    gain * (0.3 * tone + 0.2 * bass + click)
                })
                .collect()
        })
        .collect()
}

/// Writes `channels` as a WAV of the given sample format.
fn write(path: &Path, channels: &[Vec<f32>], rate: u32, bits: u16, float: bool) {
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let full = ((1i64 << (bits - 1)) - 1) as f32;
    for i in 0..channels[0].len() {
        for c in channels {
            let v = c[i].clamp(-1.0, 1.0);
            match (float, bits) {
                (true, _) => w.write_sample(v).unwrap(),
                (false, 8) => w.write_sample((v * full).round() as i8).unwrap(),
                (false, 16) => w.write_sample((v * full).round() as i16).unwrap(),
                (false, _) => w.write_sample((v * full).round() as i32).unwrap(),
            }
        }
    }
    w.finalize().unwrap();
}

fn dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| temp_dir("prompt-clips")).clone()
}

/// Reads a file like the pipeline does and encodes it; returns the encode and its progress
/// total (model calls: Demucs chunks + MusicFM passes + VAE).
fn encode_file(path: &Path) -> anyhow::Result<(EncodedPrompt, u64)> {
    let clip = read_wav_prefix(path, READ_SECONDS)?;
    encode(&clip.audio)
}

fn encode(audio: &Audio) -> anyhow::Result<(EncodedPrompt, u64)> {
    let mut total = 0;
    let mut progress = |p: Progress| {
        total = p.total;
        ControlFlow::Continue(())
    };
    let e = model()
        .1
        .encode_full(&audio.channels, audio.sample_rate, 3, &mut progress)?;
    Ok((e, total))
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// Real frames in each LM row, then the pad token.
fn assert_prompt_frames(e: &EncodedPrompt, frames: usize) {
    let rows = e.tokens.squeeze(0).unwrap().to_vec2::<i64>().unwrap();
    for row in &rows {
        assert!(row[..frames.min(250)]
            .iter()
            .all(|&t| (0..16384).contains(&t)));
        assert!(row[frames.min(250)..]
            .iter()
            .all(|&t| t == PROMPT_PAD_TOKEN));
    }
}

#[test]
fn the_encoders_are_sized_by_the_tiny_checkpoints() {
    let cfg = model().1.config();
    assert_eq!(cfg.musicfm.encoder_dim, tiny_model::RVQ_DIM);
    assert_eq!(cfg.musicfm.encoder_depth, tiny_model::MUSICFM_LAYERS);
    assert_eq!(cfg.musicfm.conv_dim, tiny_model::MUSICFM_CONV);
    assert_eq!(cfg.musicfm.num_attention_heads, 1);
    assert_eq!(cfg.demucs.channels, 8);
    assert_eq!(cfg.demucs.bottom_channels, 32);
    assert_eq!(cfg.vae.channels, tiny_model::VAE_CHANNELS);
}

#[test]
fn a_ten_second_stereo_file_gives_the_reference_shapes() {
    let path = dir().join("full.wav");
    write(&path, &music(10.0, 48_000, 2, 1.0), 48_000, 16, false);
    let (e, _) = encode_file(&path).unwrap();
    assert_prompt_frames(&e, 250);
    assert_eq!(e.render.latent.dims(), &[1, 64, 250]);
    assert_eq!(e.render.codes_vocal.dims(), &[1, 1, 251]);
    assert_eq!(e.separated.full.dims(), &[2, 480_000]);
    // Another clip gives other tokens.
    let other = dir().join("other.wav");
    let noise: Vec<Vec<f32>> = (0..2)
        .map(|c| {
            (0..480_000)
                .map(|i| ((i as u64 * 7919 + c as u64 * 104_729) % 2003) as f32 / 2003.0 - 0.5)
                .collect()
        })
        .collect();
    write(&other, &noise, 48_000, 16, false);
    let (o, _) = encode_file(&other).unwrap();
    assert_ne!(ints(&o.tokens), ints(&e.tokens));
}

#[test]
fn a_short_clip_is_padded_like_the_reference() {
    // 4 s: int(4·25)+1 = 101 real frames (the tokenizers tile the clip), then padding; the
    // decoder prefix is the clip's own 100 latent frames.
    let path = dir().join("short.wav");
    write(&path, &music(4.0, 48_000, 2, 1.0), 48_000, 16, false);
    let (e, _) = encode_file(&path).unwrap();
    assert_prompt_frames(&e, 101);
    assert_eq!(e.render.latent.dims(), &[1, 64, 100]);
    assert_eq!(e.render.codes_bgm.dims(), &[1, 1, 101]);
}

#[test]
fn under_a_second_silent_or_not_audio_is_a_clear_error() {
    let blip = dir().join("blip.wav");
    write(&blip, &music(0.4, 48_000, 2, 1.0), 48_000, 16, false);
    let err = format!("{:#}", encode_file(&blip).unwrap_err());
    assert!(
        err.contains("0.40 s long") && err.contains("at least 1 s"),
        "{err}"
    );

    let silent = dir().join("silent.wav");
    write(
        &silent,
        &[vec![0.0; 96_000], vec![0.0; 96_000]],
        48_000,
        16,
        false,
    );
    let err = format!("{:#}", encode_file(&silent).unwrap_err());
    assert!(err.contains("silent"), "{err}");

    let mp3 = dir().join("song.mp3");
    std::fs::write(&mp3, b"ID3\x04\x00\x00\x00\x00\x00\x00 not a wav").unwrap();
    let err = encode_file(&mp3).unwrap_err().to_string();
    assert!(err.contains("song.mp3") && err.contains("WAV"), "{err}");

    let empty = dir().join("empty.wav");
    write(&empty, &[vec![], vec![]], 48_000, 16, false);
    let err = encode_file(&empty).unwrap_err().to_string();
    assert!(
        err.contains("empty.wav") && err.contains("no samples"),
        "{err}"
    );
}

#[test]
fn a_truncated_file_uses_what_is_there() {
    // A capture cut off mid-write: the header promises 10 s, 6 s are there (ffmpeg, the
    // reference's reader, decodes what it finds).
    let path = dir().join("cut.wav");
    write(&path, &music(10.0, 44_100, 2, 1.0), 44_100, 16, false);
    let bytes = std::fs::read(&path).unwrap();
    let keep = 44 + 6 * 44_100 * 4 + 1;
    std::fs::write(&path, &bytes[..keep]).unwrap();
    let clip = read_wav_prefix(&path, READ_SECONDS).unwrap();
    assert!(clip.truncated);
    assert_eq!(clip.audio.frames(), 6 * 44_100);
    let (e, _) = encode(&clip.audio).unwrap();
    assert_prompt_frames(&e, 151);
}

#[test]
fn clipped_and_mono_clips_encode() {
    // Hard-clipped at full scale: the tokenizers' peak normalisation takes it as it is.
    let clipped: Vec<Vec<f32>> = music(10.0, 48_000, 2, 3.0)
        .into_iter()
        .map(|c| c.into_iter().map(|v| v.clamp(-1.0, 1.0)).collect())
        .collect();
    let path = dir().join("clipped.wav");
    write(&path, &clipped, 48_000, 16, false);
    let (e, _) = encode_file(&path).unwrap();
    assert_prompt_frames(&e, 250);

    // Mono is duplicated to stereo (the reference's mono path fails in the tokenizers).
    let path = dir().join("mono.wav");
    write(&path, &music(10.0, 48_000, 1, 1.0), 48_000, 16, false);
    let (e, _) = encode_file(&path).unwrap();
    let full = e.separated.full.to_vec2::<f32>().unwrap();
    assert_eq!(full[0], full[1]);
    assert_prompt_frames(&e, 250);
}

#[test]
fn every_sample_format_reads_to_the_same_clip() {
    let reference = music(10.0, 48_000, 2, 1.0);
    let mut results = Vec::new();
    for (bits, float, tolerance) in [
        (8, false, 1.0 / 64.0),
        (16, false, 1e-4),
        (24, false, 1e-6),
        (32, true, 0.0),
    ] {
        let path = dir().join(format!("format-{bits}-{float}.wav"));
        write(&path, &reference, 48_000, bits, float);
        let clip = read_wav_prefix(&path, READ_SECONDS).unwrap();
        let worst = clip.audio.channels[0]
            .iter()
            .zip(&reference[0])
            .map(|(a, b)| (a - b.clamp(-1.0, 1.0)).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tolerance, "{bits}-bit: off by {worst}");
        let (e, _) = encode(&clip.audio).unwrap();
        assert_prompt_frames(&e, 250);
        results.push(ints(&e.tokens));
    }
    // 24-bit and float carry the same music: the same tokens, but for the rare code whose two
    // nearest centroids are within the 24-bit quantisation noise (2^-23) of each other.
    assert_eq!(results[2].len(), results[3].len());
    let same = results[2]
        .iter()
        .zip(&results[3])
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        same * 100 >= results[3].len() * 99,
        "24-bit and float clips agree on {same} of {} tokens",
        results[3].len()
    );
}

#[test]
fn any_sample_rate_becomes_ten_seconds_at_48k() {
    for rate in [22_050, 44_100, 96_000] {
        let path = dir().join(format!("rate-{rate}.wav"));
        write(&path, &music(10.0, rate, 2, 1.0), rate, 16, false);
        let (e, _) = encode_file(&path).unwrap();
        assert_eq!(e.separated.full.dims(), &[2, 480_000], "{rate} Hz");
        assert_eq!(e.render.latent.dims(), &[1, 64, 250], "{rate} Hz");
        assert_prompt_frames(&e, 250);
    }
}

#[test]
fn a_ten_minute_file_costs_what_a_thirty_second_one_does() {
    let rate = 22_050;
    let long = dir().join("ten-minutes.wav");
    {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&long, spec).unwrap();
        let minute = music(60.0, rate, 2, 1.0);
        for _ in 0..10 {
            for i in 0..minute[0].len() {
                for c in &minute {
                    w.write_sample((c[i].clamp(-1.0, 1.0) * 32767.0) as i16)
                        .unwrap();
                }
            }
        }
        w.finalize().unwrap();
    }
    let clip = read_wav_prefix(&long, READ_SECONDS).unwrap();
    assert_eq!(clip.file_seconds, 600.0);
    assert_eq!(clip.audio.frames(), 30 * rate as usize);
    let (e, calls) = encode(&clip.audio).unwrap();
    assert_prompt_frames(&e, 250);
    // As many model calls as a 15 s clip: only what reaches the first 10 s is separated.
    let (_, short_calls) = encode(&Audio {
        channels: music(15.0, rate, 2, 1.0),
        sample_rate: rate,
    })
    .unwrap();
    assert_eq!(calls, short_calls);
}
