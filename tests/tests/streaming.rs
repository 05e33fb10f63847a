//! Pipelined generation on a tiny model of 100 s (2500 token frames = 3 render windows):
//! `songgen serve --stdio` sends each stem's audio as `chunk` events while the LM still runs,
//! the chunks are exactly the written WAVs, the pipelined result equals the batch path's, and a
//! cancel mid-stream stops everything without leaving a partial file under a final name.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::OnceLock;

use candle_core::{DType, Device};
use songgen_engine::paths::ModelPaths;
use songgen_engine::protocol::{decode_samples, Event, GenType, SamplingOptions, Stage, Stem};
use songgen_engine::render::PromptSet;
use songgen_engine::service::models;
use songgen_engine::service::pipeline::{AudioChunk, LmInput, Seeds};
use songgen_tests::{songgen, temp_dir, tiny_model};

const LYRICS: &str = "[verse] hello there. how are you ; [chorus] la la la";
/// Song length of the model: 2500 frames, windows starting at 0, 750 and 1500.
const SECONDS: usize = 100;

fn model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tiny_model::write_with(&temp_dir("stream-model"), 5, SECONDS)
            .unwrap()
            .model_dir
    })
}

struct Server {
    child: Child,
    events: BufReader<ChildStdout>,
}

impl Server {
    fn start(home: &Path) -> Self {
        let mut child = songgen(home)
            .args(["serve", "--stdio", "--accept-license", "--device", "cpu"])
            .arg("--model")
            .arg(model())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let events = BufReader::new(child.stdout.take().unwrap());
        Self { child, events }
    }

    fn send(&mut self, req: serde_json::Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{req}").unwrap();
        stdin.flush().unwrap();
    }

    fn next(&mut self) -> Event {
        let mut line = String::new();
        let n = self.events.read_line(&mut line).unwrap();
        assert!(n > 0, "the engine closed its output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// A stem's audio as interleaved stereo.
fn read_interleaved(path: &Path) -> Vec<f32> {
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().channels, 2);
    r.samples::<f32>().map(Result::unwrap).collect()
}

#[test]
fn chunks_arrive_while_the_lm_runs_and_equal_the_wavs() {
    let home = temp_dir("stream-serve");
    let out = home.join("out");
    let mut server = Server::start(&home);
    assert!(matches!(server.next(), Event::Ready { protocol: 2, .. }));
    server.send(serde_json::json!({"op": "generate", "id": "s", "job": {
        "lyrics": LYRICS, "seed": 3, "out_dir": out, "gen_type": "separate"}}));
    let mut events = Vec::new();
    let done = loop {
        match server.next() {
            e @ Event::Done { .. } => break e,
            e @ (Event::Error { .. } | Event::Cancelled { .. }) => panic!("{e:?}"),
            e => events.push(e),
        }
    };
    server.stop();
    let last_lm = events
        .iter()
        .rposition(|e| {
            matches!(
                e,
                Event::Progress {
                    stage: Stage::Lm,
                    ..
                }
            )
        })
        .expect("LM progress");
    let mut audio: BTreeMap<Stem, Vec<f32>> = BTreeMap::new();
    let mut first: BTreeMap<Stem, usize> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Event::Chunk {
            id,
            stem,
            start,
            frames,
            data,
        } = e
        {
            assert_eq!(id, "s");
            let buf = audio.entry(*stem).or_default();
            assert_eq!(
                *start as usize,
                buf.len() / 2,
                "{stem:?} chunks in order, no gaps"
            );
            let samples = decode_samples(data, 2).unwrap();
            assert_eq!(samples.len(), *frames as usize * 2);
            buf.extend(samples);
            first.entry(*stem).or_insert(i);
        }
    }
    assert_eq!(first.len(), 3, "chunks of every stem: {first:?}");
    // Pipelining is real: audio went out while the LM was still generating.
    let earliest = first.values().min().unwrap();
    assert!(
        *earliest < last_lm,
        "the first chunk (event {earliest}) came after the LM's last progress (event {last_lm})"
    );
    // Lockstep: every stem's first window is out before any stem's second window.
    let window = 750 * 1920;
    let second = events
        .iter()
        .position(|e| matches!(e, Event::Chunk { start, frames, .. } if start + frames > window));
    for (stem, i) in &first {
        assert!(
            second.is_none_or(|j| *i < j),
            "{stem:?} started (event {i}) after a second window (event {second:?})"
        );
    }
    let Event::Done { stems, frames, .. } = done else {
        unreachable!()
    };
    assert_eq!(frames, 2500 * 1920);
    for (name, path) in &stems {
        let stem = Stem::from_name(name).unwrap();
        let wav = read_interleaved(path);
        assert_eq!(wav.len(), frames as usize * 2);
        let streamed = &audio[&stem];
        assert!(
            wav.iter()
                .map(|s| s.to_bits())
                .eq(streamed.iter().map(|s| s.to_bits())),
            "{name}: the chunks differ from {}",
            path.display()
        );
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("s.json")).unwrap()).unwrap();
    let first_audio = record["timings"]["first_audio_s"].as_f64().unwrap();
    assert!(first_audio > 0.0 && first_audio < record["timings"]["total_s"].as_f64().unwrap());
}

#[test]
fn pipelined_audio_is_bit_identical_to_the_batch_path() {
    let paths = ModelPaths::resolve(model(), None).unwrap();
    let mut m = models::load(&paths, &Device::Cpu, DType::F32).unwrap();
    let input = LmInput {
        lyrics: "[verse] hello there. how are you ; [chorus] la la la".into(),
        descriptions: Some("female, pop".into()),
        prompt_tokens: None,
        gen_type: GenType::Separate,
    };
    let sampling = SamplingOptions::default();
    let seeds = Seeds { lm: 9, render: 4 };
    let mut streamed: BTreeMap<Stem, Vec<Vec<f32>>> = BTreeMap::new();
    let mut chunks = 0;
    let generated = m
        .generate(
            &input,
            &sampling,
            &PromptSet::none(),
            seeds,
            &mut |_| std::ops::ControlFlow::Continue(()),
            &mut |c: &AudioChunk| {
                let buf = streamed.entry(c.stem).or_insert_with(|| vec![vec![]; 2]);
                assert_eq!(c.start as usize, buf[0].len());
                for (b, ch) in buf.iter_mut().zip(&c.channels) {
                    b.extend_from_slice(ch);
                }
                chunks += 1;
                Ok(())
            },
        )
        .unwrap();
    assert!(chunks > 3, "one chunk per stem is no stream ({chunks})");
    let tokens = m
        .tokens(&input, &sampling, seeds.lm, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        tokens.to_vec3::<i64>().unwrap(),
        generated.tokens.to_vec3::<i64>().unwrap()
    );
    let batch = m
        .render(
            &tokens,
            &PromptSet::none(),
            GenType::Separate,
            seeds.render,
            &mut |_| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(batch.len(), 3);
    for (stem, audio) in batch {
        let s = &streamed[&stem];
        for (a, b) in audio.channels.iter().zip(s) {
            assert_eq!(a.len(), b.len(), "{stem:?}");
            assert!(
                a.iter()
                    .map(|x| x.to_bits())
                    .eq(b.iter().map(|x| x.to_bits())),
                "{stem:?}: streamed samples differ from the batch render"
            );
        }
    }
}

#[test]
fn cancel_mid_stream_stops_and_leaves_no_final_file() {
    let home = temp_dir("stream-cancel");
    let out = home.join("out");
    let mut server = Server::start(&home);
    assert!(matches!(server.next(), Event::Ready { .. }));
    server.send(serde_json::json!({"op": "generate", "id": "c", "job": {
        "lyrics": LYRICS, "seed": 1, "out_dir": out, "gen_type": "mixed"}}));
    let mut got = 0u64;
    let mut cancelled_at = None;
    let mut lm_after_cancel = false;
    loop {
        match server.next() {
            Event::Chunk {
                start,
                frames,
                data,
                ..
            } => {
                assert_eq!(start, got);
                assert_eq!(decode_samples(&data, 2).unwrap().len() as u64, frames * 2);
                got += frames;
                if cancelled_at.is_none() {
                    server.send(serde_json::json!({"op": "cancel", "id": "c"}));
                    cancelled_at = Some(got);
                }
            }
            Event::Progress {
                stage: Stage::Lm,
                done,
                total,
                ..
            } if cancelled_at.is_some() => {
                lm_after_cancel |= done == total;
            }
            Event::Cancelled { id } => {
                assert_eq!(id, "c");
                break;
            }
            e @ (Event::Done { .. } | Event::Error { .. }) => panic!("{e:?}"),
            _ => {}
        }
    }
    assert!(cancelled_at.is_some() && !lm_after_cancel);
    server.stop();
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "files left after a cancel: {left:?}");
}
