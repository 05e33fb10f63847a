//! Style transfer end to end on the tiny model (which ships every prompt encoder in the
//! released layout): `songgen generate --prompt-audio` for every `--type`, `songgen serve`
//! with `prompt: {kind: audio}`, and bad clips through the whole path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use songgen_engine::protocol::Event;
use songgen_tests::{songgen, temp_dir, tiny_model};

const LYRICS: &str =
    "[intro-short] ; [verse] hello there. how are you ; [chorus] la la la ; [outro-short]";

fn model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tiny_model::write(&temp_dir("cli-prompt-model"), 13)
            .unwrap()
            .model_dir
    })
}

/// A 16-bit stereo WAV of `seconds` of two tones an interval `ratio` apart plus a beat.
fn clip(path: &Path, seconds: f64, rate: u32, base: f32, ratio: f32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(seconds * rate as f64) as usize {
        let t = i as f32 / rate as f32;
        let a = (2.0 * std::f32::consts::PI * base * t).sin();
        let b = (2.0 * std::f32::consts::PI * base * ratio * t).sin();
        let beat = if (t * 2.0).fract() < 0.02 { 0.4 } else { 0.0 };
        for c in 0..2 {
            let v = 0.3 * a + 0.2 * b * (1.0 - c as f32 * 0.5) + beat;
            w.write_sample((v * 32767.0) as i16).unwrap();
        }
    }
    w.finalize().unwrap();
}

fn generate(home: &Path, out: &Path, extra: &[&str]) -> Output {
    songgen(home)
        .args(["generate", "--accept-license", "--quiet", "--device", "cpu"])
        .arg("--model")
        .arg(model())
        .arg("--out")
        .arg(out)
        .args(["--lyrics", LYRICS])
        .args(extra)
        .output()
        .unwrap()
}

fn check(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn record(out: &Path, id: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join(format!("{id}.json"))).unwrap()).unwrap()
}

/// The bytes of the stems of `id`, checking each is a 48 kHz stereo WAV of the record's length.
fn stems(out: &Path, id: &str, suffixes: &[&str]) -> Vec<Vec<u8>> {
    let frames = record(out, id)["frames"].as_u64().unwrap();
    assert!(frames > 0);
    suffixes
        .iter()
        .map(|s| {
            let path = out.join(format!("{id}{s}.wav"));
            let r = hound::WavReader::open(&path).unwrap();
            assert_eq!((r.spec().sample_rate, r.spec().channels), (48_000, 2));
            assert_eq!(u64::from(r.duration()), frames, "{}", path.display());
            std::fs::read(&path).unwrap()
        })
        .collect()
}

#[test]
fn every_type_with_a_prompt_clip_writes_its_stems_reproducibly() {
    let home = temp_dir("cli-prompt-types");
    let prompt = home.join("chorus.wav");
    clip(&prompt, 10.0, 44_100, 220.0, 1.5);
    let p = prompt.to_str().unwrap();
    for (ty, suffixes) in [
        ("mixed", &[""][..]),
        ("vocal", &["_vocal"][..]),
        ("bgm", &["_bgm"][..]),
        ("separate", &["", "_vocal", "_bgm"][..]),
    ] {
        let out = home.join(ty);
        let args = [
            "--prompt-audio",
            p,
            "--type",
            ty,
            "--seed",
            "5",
            "--id",
            "s",
        ];
        check(&generate(&home, &out, &args));
        let first = stems(&out, "s", suffixes);
        let r = record(&out, "s");
        assert_eq!(r["prompt"]["kind"], "audio", "{r}");
        assert_eq!(r["prompt"]["path"], p, "{r}");
        assert!(r["timings"]["prompt_s"].as_f64().unwrap() > 0.0, "{r}");
        if ty == "separate" {
            let again = home.join(format!("{ty}-again"));
            check(&generate(&home, &again, &args));
            assert!(
                first == stems(&again, "s", suffixes),
                "{ty}: same seed, other stems"
            );
            assert_eq!(record(&again, "s")["tokens_digest"], r["tokens_digest"]);
        }
    }
    // Another clip, same seed: other LM tokens.
    let other = home.join("verse.wav");
    clip(&other, 10.0, 44_100, 330.0, 1.26);
    let out = home.join("other");
    check(&generate(
        &home,
        &out,
        &[
            "--prompt-audio",
            other.to_str().unwrap(),
            "--seed",
            "5",
            "--id",
            "s",
        ],
    ));
    let (a, b) = (record(&home.join("mixed"), "s"), record(&out, "s"));
    assert!(a["tokens_digest"].is_string(), "{a}");
    assert_ne!(a["tokens_digest"], b["tokens_digest"]);
    // The same seed and clip give the same tokens whatever the type renders.
    assert_eq!(
        record(&home.join("separate"), "s")["tokens_digest"],
        a["tokens_digest"]
    );
}

#[test]
fn prompt_audio_with_style_tags_warns_about_the_conflict() {
    let home = temp_dir("cli-prompt-tags");
    let prompt = home.join("p.wav");
    clip(&prompt, 3.0, 48_000, 200.0, 1.5);
    let out = home.join("out");
    check(&generate(
        &home,
        &out,
        &[
            "--prompt-audio",
            prompt.to_str().unwrap(),
            "--tags",
            "female, pop",
            "--id",
            "w",
        ],
    ));
    let warnings = record(&out, "w")["warnings"].to_string();
    assert!(warnings.contains("style tags"), "{warnings}");
    assert!(warnings.contains("shorter than 10 s"), "{warnings}");
}

#[test]
fn serve_takes_an_audio_prompt() {
    let home = temp_dir("cli-prompt-serve");
    let prompt = home.join("p.wav");
    clip(&prompt, 10.0, 48_000, 250.0, 1.5);
    let out = home.join("out");
    let mut child = songgen(&home)
        .args(["serve", "--stdio", "--accept-license", "--device", "cpu"])
        .arg("--model")
        .arg(model())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let stdin = child.stdin.as_mut().unwrap();
        let job = serde_json::json!({
            "lyrics": LYRICS, "seed": 2, "out_dir": out, "gen_type": "separate",
            "prompt": {"kind": "audio", "path": prompt},
        });
        writeln!(
            stdin,
            "{}",
            serde_json::json!({"op": "generate", "id": "a", "job": job})
        )
        .unwrap();
        let bad = serde_json::json!({
            "lyrics": LYRICS, "seed": 2, "out_dir": out,
            "prompt": {"kind": "audio", "path": home.join("missing.wav")},
        });
        writeln!(
            stdin,
            "{}",
            serde_json::json!({"op": "generate", "id": "b", "job": bad})
        )
        .unwrap();
    }
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    check(&o);
    let events: Vec<Event> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ends: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Done { id, .. } => Some(format!("done {id}")),
            Event::Error { id, message } => {
                Some(format!("error {} {message}", id.as_deref().unwrap_or("-")))
            }
            _ => None,
        })
        .collect();
    // The bad job is refused when it is queued, before the good one finishes.
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert!(ends.contains(&"done a".to_owned()), "{ends:?}");
    assert!(
        ends.iter()
            .any(|e| e.starts_with("error b") && e.contains("missing.wav")),
        "{ends:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Progress {
            stage: songgen_engine::protocol::Stage::Prompt,
            ..
        }
    )));
    stems(&out, "a", &["", "_vocal", "_bgm"]);
}

#[test]
fn bad_clips_fail_clearly_naming_the_file_and_keep_earlier_takes() {
    let home = temp_dir("cli-prompt-bad");
    let out = home.join("out");
    // A take made before the bad ones.
    check(&generate(&home, &out, &["--seed", "1", "--id", "kept"]));
    let kept = stems(&out, "kept", &[""]);

    let mp3 = home.join("song.mp3");
    std::fs::write(
        &mp3,
        b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb not a wav file",
    )
    .unwrap();
    let silent = home.join("silent.wav");
    {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&silent, spec).unwrap();
        for _ in 0..2 * 96_000 {
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
    }
    let blip = home.join("blip.wav");
    clip(&blip, 0.3, 48_000, 440.0, 1.5);
    let missing = home.join("missing.wav");
    for (file, expect) in [
        (&mp3, "WAV"),
        (&silent, "silent"),
        (&blip, "at least 1 s"),
        (&missing, "not found"),
    ] {
        let o = generate(
            &home,
            &out,
            &["--prompt-audio", file.to_str().unwrap(), "--id", "bad"],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}: {err}", file.display());
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name) && err.contains(expect), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.join("bad.wav").exists() && !out.join("bad.json").exists());
    }
    assert!(
        kept == stems(&out, "kept", &[""]),
        "an earlier take changed"
    );
}
