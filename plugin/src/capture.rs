//! Style-prompt capture: records the main input or the sidechain while the host plays its loop
//! range (or, with no loop, the first seconds after play starts) into a buffer allocated in
//! `activate()`. Realtime-safe: the buffer travels between the audio thread and the worker
//! through two wait-free ring buffers and is never allocated or freed on the audio thread.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use nice_plug::prelude::Enum;

use crate::timeline::Timeline;

/// Longest capture kept (a loop longer than this records its first part).
pub const MAX_CAPTURE_SECONDS: f32 = 30.0;
/// Length recorded from play start when the host reports no loop.
pub const RECORD_ON_PLAY_SECONDS: f32 = 10.0;
/// A record-on-play capture stopped by the transport is kept if at least this long.
pub const MIN_CAPTURE_SECONDS: f32 = 1.0;

/// Seconds of a style prompt the model uses (the reference keeps the first 10 s).
pub const PROMPT_SECONDS: f64 = 10.0;
/// Shortest clip the engine accepts as a style prompt.
pub const ENGINE_MIN_SECONDS: f64 = 1.0;
/// A capture whose peak stays below this is treated as silence.
pub const SILENCE_DBFS: f32 = -60.0;
/// Samples at or above this magnitude count as clipped.
pub const CLIP_LEVEL: f32 = 0.999;

/// Level read-out of a captured region: what the editor shows next to its length.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct CaptureLevel {
    /// Sample peak over both channels, dBFS (−inf for digital silence).
    pub peak_dbfs: f32,
    /// RMS over both channels, dBFS.
    pub rms_dbfs: f32,
    /// Fraction of samples at full scale (≥ [`CLIP_LEVEL`]).
    pub clipped: f32,
}

impl CaptureLevel {
    /// Measures a stereo clip (run off the audio thread: it reads every sample).
    pub fn measure(left: &[f32], right: &[f32]) -> Self {
        let (mut peak, mut sum, mut clipped, mut n) = (0f32, 0f64, 0usize, 0usize);
        for &v in left.iter().chain(right) {
            let a = v.abs();
            peak = peak.max(a);
            sum += f64::from(v) * f64::from(v);
            clipped += usize::from(a >= CLIP_LEVEL);
            n += 1;
        }
        let db = |x: f64| {
            if x > 0.0 {
                (20.0 * x.log10()) as f32
            } else {
                f32::NEG_INFINITY
            }
        };
        Self {
            peak_dbfs: db(f64::from(peak)),
            rms_dbfs: db((sum / n.max(1) as f64).sqrt()),
            clipped: clipped as f32 / n.max(1) as f32,
        }
    }

    /// "peak −3.1 dBFS, RMS −17.0 dBFS".
    pub fn describe(&self) -> String {
        let db = |v: f32| {
            if v.is_finite() {
                format!("{v:.1} dBFS")
            } else {
                "−∞ dBFS".to_owned()
            }
        };
        format!("peak {}, RMS {}", db(self.peak_dbfs), db(self.rms_dbfs))
    }
}

/// Problems with a captured region, worst first: too short for the engine, silent, clipped,
/// shorter than the 10 s the model uses.
pub fn capture_warnings(seconds: f64, level: &CaptureLevel) -> Vec<String> {
    let mut w = Vec::new();
    if seconds < ENGINE_MIN_SECONDS {
        w.push(format!(
            "Too short: {seconds:.2} s captured, the engine needs at least {ENGINE_MIN_SECONDS:.0} s."
        ));
    }
    if !(level.peak_dbfs >= SILENCE_DBFS) {
        w.push(
            "Silent: nothing reached the capture input (check the routing or the Style \
             Sidechain) — there is no style to take from it."
                .to_owned(),
        );
    } else if level.clipped > 0.001 {
        w.push(format!(
            "Clipping: {:.1} % of the samples are at full scale; lower the source and capture \
             again for a cleaner style.",
            100.0 * level.clipped
        ));
    }
    if (ENGINE_MIN_SECONDS..PROMPT_SECONDS).contains(&seconds) {
        w.push(format!(
            "Shorter than {PROMPT_SECONDS:.0} s: the model repeats it to fill its 10 s \
             prompt; a longer region works better."
        ));
    }
    w
}

/// Which input feeds the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum CaptureSource {
    #[name = "Main input"]
    Main,
    #[name = "Style Sidechain"]
    Sidechain,
}

/// Captured stereo audio. `left`/`right` have the capacity fixed in `activate()`.
#[derive(Debug)]
pub struct CaptureBuffer {
    pub left: Vec<f32>,
    pub right: Vec<f32>,
    /// Valid frames.
    pub len: usize,
    pub sample_rate: f32,
    /// Timeline position of the first frame.
    pub origin: i64,
    /// Whether the host's loop range bounded the capture.
    pub from_loop: bool,
}

impl CaptureBuffer {
    pub fn new(sample_rate: f32) -> Self {
        let cap = (MAX_CAPTURE_SECONDS * sample_rate).ceil() as usize;
        Self {
            left: vec![0.0; cap],
            right: vec![0.0; cap],
            len: 0,
            sample_rate,
            origin: 0,
            from_loop: false,
        }
    }

    pub fn capacity(&self) -> usize {
        self.left.len()
    }
}

/// What the capture is doing, readable by the editor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CapturePhase {
    Idle = 0,
    /// Waiting for the transport to play (into the loop range).
    Armed = 1,
    Recording = 2,
}

/// Lock-free controls and read-outs shared between the editor, the worker and the audio thread.
#[derive(Debug, Default)]
pub struct CaptureControl {
    /// 1 = arm, 2 = disarm; taken by the audio thread.
    request: AtomicU8,
    phase: AtomicU8,
    /// Recorded fraction, as f32 bits.
    progress: AtomicU32,
}

impl CaptureControl {
    pub fn arm(&self) {
        self.request.store(1, Ordering::Release);
    }

    pub fn disarm(&self) {
        self.request.store(2, Ordering::Release);
    }

    pub fn phase(&self) -> CapturePhase {
        match self.phase.load(Ordering::Acquire) {
            1 => CapturePhase::Armed,
            2 => CapturePhase::Recording,
            _ => CapturePhase::Idle,
        }
    }

    pub fn progress(&self) -> f32 {
        f32::from_bits(self.progress.load(Ordering::Relaxed))
    }

    fn set(&self, phase: CapturePhase, progress: f32) {
        self.phase.store(phase as u8, Ordering::Release);
        self.progress.store(progress.to_bits(), Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Idle,
    Armed,
    Recording {
        /// Timeline position of frame 0 of the buffer.
        origin: i64,
        /// Frames to record.
        target: usize,
        written: usize,
        /// The position the next sample must have; anything else is a transport jump.
        next: i64,
        from_loop: bool,
    },
}

/// The audio-thread side of capture.
pub struct Recorder {
    buffer: Option<Box<CaptureBuffer>>,
    state: State,
    /// Finished captures go to the worker...
    done: rtrb::Producer<Box<CaptureBuffer>>,
    /// ...which sends the buffer back once it has written the WAV.
    recycled: rtrb::Consumer<Box<CaptureBuffer>>,
}

/// The worker's side of the two capture rings.
pub struct RecorderLink {
    pub done: rtrb::Consumer<Box<CaptureBuffer>>,
    pub recycled: rtrb::Producer<Box<CaptureBuffer>>,
}

impl Recorder {
    /// A recorder with its capture buffer for `sample_rate` allocated.
    pub fn new(sample_rate: f32) -> (Self, RecorderLink) {
        let (mut rec, link) = Self::without_buffer();
        rec.buffer = Some(Box::new(CaptureBuffer::new(sample_rate)));
        (rec, link)
    }

    /// A recorder that takes its capture buffer from the `recycled` ring. `activate()` uses
    /// this and leaves the allocation to the worker: a 30 s buffer took 12–130 ms to allocate,
    /// and hosts activate plugins under their process lock (Ardour's DSP load hit 99 % on
    /// every insert of the plugin).
    pub fn without_buffer() -> (Self, RecorderLink) {
        let (done_tx, done_rx) = rtrb::RingBuffer::new(2);
        let (back_tx, back_rx) = rtrb::RingBuffer::new(2);
        (
            Self {
                buffer: None,
                state: State::Idle,
                done: done_tx,
                recycled: back_rx,
            },
            RecorderLink {
                done: done_rx,
                recycled: back_tx,
            },
        )
    }

    /// Records from `input` (two channels of one block) according to `timeline`.
    pub fn process(&mut self, control: &CaptureControl, timeline: &Timeline, input: [&[f32]; 2]) {
        if self.buffer.is_none() {
            if let Ok(b) = self.recycled.pop() {
                self.buffer = Some(b);
            }
        }
        match control.request.swap(0, Ordering::AcqRel) {
            1 => self.state = State::Armed,
            2 => self.state = State::Idle,
            _ => {}
        }
        let Some(buf) = self.buffer.as_deref_mut() else {
            // The previous capture is still being saved; stay armed.
            self.publish(control);
            return;
        };
        let sr = buf.sample_rate;
        let cap = buf.capacity();
        if matches!(self.state, State::Idle) {
            self.publish(control);
            return;
        }
        if !timeline.playing || timeline.pos.is_none() {
            if let State::Recording {
                written, from_loop, ..
            } = self.state
            {
                // Stopped: a record-on-play capture keeps what it has; a loop capture restarts.
                if !from_loop && written as f32 >= MIN_CAPTURE_SECONDS * sr {
                    self.finish(written);
                } else {
                    self.state = State::Armed;
                }
            }
            self.publish(control);
            return;
        }
        for (i, (&left, &right)) in input[0].iter().zip(input[1]).enumerate() {
            let Some(p) = timeline.position_at(i) else {
                break;
            };
            let loop_range = timeline.loop_range;
            if let State::Recording { next, .. } = self.state {
                if p != next {
                    // Transport jump: start over from here.
                    self.state = State::Armed;
                }
            }
            if self.state == State::Armed {
                self.state = match loop_range {
                    Some((s, e)) if p >= s && p < e => State::Recording {
                        origin: s,
                        target: ((e - s) as usize).min(cap),
                        written: 0,
                        next: p,
                        from_loop: true,
                    },
                    Some(_) => continue,
                    None => State::Recording {
                        origin: p,
                        target: ((RECORD_ON_PLAY_SECONDS * sr) as usize).min(cap),
                        written: 0,
                        next: p,
                        from_loop: false,
                    },
                };
            }
            let State::Recording {
                origin,
                target,
                written,
                next,
                ..
            } = &mut self.state
            else {
                continue;
            };
            let at = p - *origin;
            if at >= 0 && (at as usize) < *target {
                buf.left[at as usize] = left;
                buf.right[at as usize] = right;
                *written += 1;
            }
            *next = match loop_range {
                Some((s, e)) if p + 1 >= e => s,
                _ => p + 1,
            };
            if *written >= *target {
                let n = *target;
                self.finish(n);
                break;
            }
        }
        self.publish(control);
    }

    fn finish(&mut self, len: usize) {
        let State::Recording {
            origin, from_loop, ..
        } = self.state
        else {
            return;
        };
        self.state = State::Idle;
        if let Some(mut buf) = self.buffer.take() {
            buf.len = len;
            buf.origin = origin;
            buf.from_loop = from_loop;
            // The ring holds two slots and at most one buffer exists, so this cannot fail; if it
            // ever did, keep the buffer rather than free it here.
            if let Err(rtrb::PushError::Full(buf)) = self.done.push(buf) {
                self.buffer = Some(buf);
            }
        }
    }

    fn publish(&self, control: &CaptureControl) {
        match self.state {
            State::Idle => control.set(CapturePhase::Idle, 0.0),
            State::Armed => control.set(CapturePhase::Armed, 0.0),
            State::Recording {
                target, written, ..
            } => control.set(
                CapturePhase::Recording,
                written as f32 / target.max(1) as f32,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_warnings_of_a_capture() {
        let tone: Vec<f32> = (0..48_000).map(|i| 0.5 * (i as f32 * 0.05).sin()).collect();
        let l = CaptureLevel::measure(&tone, &tone);
        assert!((l.peak_dbfs + 6.02).abs() < 0.05, "{l:?}");
        assert!((l.rms_dbfs + 9.03).abs() < 0.05, "{l:?}");
        assert_eq!(l.clipped, 0.0);
        assert_eq!(l.describe(), "peak -6.0 dBFS, RMS -9.0 dBFS");
        assert!(capture_warnings(10.0, &l).is_empty());
        // 4 s: repeated to 10 s.
        let w = capture_warnings(4.0, &l);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("Shorter than 10 s"), "{w:?}");

        let silent = CaptureLevel::measure(&[0.0; 1000], &[0.0; 1000]);
        assert_eq!(silent.peak_dbfs, f32::NEG_INFINITY);
        assert!(silent.describe().contains("−∞"));
        let w = capture_warnings(0.5, &silent);
        assert!(
            w[0].starts_with("Too short") && w[1].starts_with("Silent"),
            "{w:?}"
        );

        let hot: Vec<f32> = tone.iter().map(|v| (v * 4.0).clamp(-1.0, 1.0)).collect();
        let l = CaptureLevel::measure(&hot, &hot);
        assert!(l.clipped > 0.5, "{l:?}");
        let w = capture_warnings(12.0, &l);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("Clipping"), "{w:?}");
    }

    fn ramp(start: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let l: Vec<f32> = (start..start + n).map(|x| x as f32).collect();
        let r = l.iter().map(|x| -x).collect();
        (l, r)
    }

    #[test]
    fn records_exactly_one_loop_cycle_when_starting_mid_loop() {
        let sr = 100.0;
        let (mut rec, mut link) = Recorder::new(sr);
        let control = CaptureControl::default();
        control.arm();
        // Loop [200, 500) samples; the transport starts at 350, blocks of 64, input = timeline pos.
        let mut pos = 350i64;
        for _ in 0..20 {
            let t = Timeline {
                playing: true,
                pos: Some(pos),
                loop_range: Some((200, 500)),
            };
            let block: Vec<i64> = (0..64).map(|i| t.position_at(i).unwrap()).collect();
            let l: Vec<f32> = block.iter().map(|&p| p as f32).collect();
            let r: Vec<f32> = block.iter().map(|&p| -(p as f32)).collect();
            rec.process(&control, &t, [&l, &r]);
            pos = t.position_at(64).unwrap();
        }
        let buf = link.done.pop().expect("capture finished");
        assert_eq!(buf.len, 300);
        assert_eq!(buf.origin, 200);
        assert!(buf.from_loop);
        for k in 0..300 {
            assert_eq!(buf.left[k], (200 + k) as f32);
            assert_eq!(buf.right[k], -((200 + k) as f32));
        }
        assert_eq!(control.phase(), CapturePhase::Idle);
        link.recycled.push(buf).unwrap();
    }

    #[test]
    fn records_on_play_without_a_loop_and_keeps_a_stopped_take() {
        let sr = 100.0;
        let (mut rec, mut link) = Recorder::new(sr);
        let control = CaptureControl::default();
        control.arm();
        let (l, r) = ramp(0, 50);
        let stopped = Timeline::default();
        rec.process(&control, &stopped, [&l, &r]);
        assert_eq!(control.phase(), CapturePhase::Armed);
        let mut pos = 1000;
        for _ in 0..3 {
            let (l, r) = ramp(pos as usize, 50);
            let t = Timeline {
                playing: true,
                pos: Some(pos),
                loop_range: None,
            };
            rec.process(&control, &t, [&l, &r]);
            pos += 50;
        }
        assert_eq!(control.phase(), CapturePhase::Recording);
        rec.process(&control, &stopped, [&l, &r]);
        let buf = link.done.pop().expect("stopped capture kept");
        assert_eq!((buf.len, buf.origin, buf.from_loop), (150, 1000, false));
        assert_eq!(buf.left[149], 1149.0);
    }
}
