//! Take playback on the output buses, locked to the host timeline: sample `k` of a take plays
//! at timeline position `anchor + k`, so loops, jumps and offline bounces stay in sync. Stem
//! audio is decoded and resampled by the worker and handed over through a ring buffer; the
//! replaced stems go back the same way to be freed off the audio thread.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use nice_plug::prelude::Enum;

use crate::timeline::Timeline;

/// What the main output adds to the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum MainOutput {
    /// Vocals + accompaniment (or the mixed stem).
    Mix,
    Vocals,
    Accompaniment,
    /// Input only; stems play on the aux buses.
    Off,
}

/// Planar stereo audio at the host's sample rate.
#[derive(Debug, Clone, Default)]
pub struct Stereo {
    pub left: Vec<f32>,
    pub right: Vec<f32>,
}

impl Stereo {
    pub fn frames(&self) -> usize {
        self.left.len().min(self.right.len())
    }
}

/// A stem that is still being generated: preallocated to the longest the engine can produce,
/// filled by the worker from the front; the audio thread reads the filled part. Samples are
/// stored as `f32` bits in atomics, and `filled` is published with release ordering after the
/// samples, so neither side locks, allocates or waits.
#[derive(Debug)]
pub struct LiveStereo {
    left: Box<[AtomicU32]>,
    right: Box<[AtomicU32]>,
    filled: AtomicUsize,
}

impl LiveStereo {
    /// Room for `capacity` frames (allocated here, on the worker).
    pub fn with_capacity(capacity: usize) -> Self {
        let zeros = || {
            (0..capacity)
                .map(|_| AtomicU32::new(0))
                .collect::<Box<[_]>>()
        };
        Self {
            left: zeros(),
            right: zeros(),
            filled: AtomicUsize::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.left.len()
    }

    /// Frames generated so far.
    pub fn filled(&self) -> usize {
        self.filled.load(Ordering::Acquire)
    }

    /// Appends frames (worker only: one writer); what does not fit is dropped and counted.
    pub fn append(&self, left: &[f32], right: &[f32]) -> usize {
        let start = self.filled.load(Ordering::Relaxed);
        let n = left.len().min(right.len()).min(self.capacity() - start);
        for i in 0..n {
            self.left[start + i].store(left[i].to_bits(), Ordering::Relaxed);
            self.right[start + i].store(right[i].to_bits(), Ordering::Relaxed);
        }
        self.filled.store(start + n, Ordering::Release);
        left.len().min(right.len()) - n
    }

    /// Frame `k`, silence beyond the generated extent.
    pub fn frame(&self, k: usize, filled: usize) -> (f32, f32) {
        if k < filled {
            (
                f32::from_bits(self.left[k].load(Ordering::Relaxed)),
                f32::from_bits(self.right[k].load(Ordering::Relaxed)),
            )
        } else {
            (0.0, 0.0)
        }
    }
}

/// One stem for the audio thread: decoded from its file, or filling in while the take is
/// generated (silence beyond what exists).
#[derive(Debug)]
pub enum Track {
    Full(Stereo),
    Live(Arc<LiveStereo>),
}

impl Track {
    /// Frame `k` (silence outside the audio).
    fn frame(&self, k: i64) -> (f32, f32) {
        if k < 0 {
            return (0.0, 0.0);
        }
        let k = k as usize;
        match self {
            Track::Full(s) if k < s.frames() => (s.left[k], s.right[k]),
            Track::Full(_) => (0.0, 0.0),
            Track::Live(l) => l.frame(k, l.filled()),
        }
    }

    /// Frames that can be played now.
    pub fn frames(&self) -> usize {
        match self {
            Track::Full(s) => s.frames(),
            Track::Live(l) => l.filled(),
        }
    }
}

impl From<Stereo> for Track {
    fn from(s: Stereo) -> Self {
        Track::Full(s)
    }
}

/// A take's stems, ready for the audio thread.
#[derive(Debug, Default)]
pub struct Stems {
    pub take_id: String,
    pub vocals: Option<Track>,
    pub accompaniment: Option<Track>,
    /// The engine's full mix, when it rendered one.
    pub mix: Option<Track>,
}

/// Messages from the worker to the player.
pub enum PlayerMsg {
    Load(Box<Stems>),
    Clear,
}

/// Timeline read-outs published by the audio thread, and the anchor it plays from.
#[derive(Debug)]
pub struct PlayState {
    /// Timeline position (samples) where the take starts.
    anchor: AtomicI64,
    /// Position of the last processed block, or `i64::MIN` when the host reported none.
    playhead: AtomicI64,
    /// Host sample rate (f64 bits) of the last activation.
    sample_rate: AtomicU64,
}

impl Default for PlayState {
    fn default() -> Self {
        Self {
            anchor: AtomicI64::new(0),
            playhead: AtomicI64::new(i64::MIN),
            sample_rate: AtomicU64::new(48_000f64.to_bits()),
        }
    }
}

impl PlayState {
    pub fn sample_rate(&self) -> f64 {
        f64::from_bits(self.sample_rate.load(Ordering::Relaxed))
    }

    pub fn set_sample_rate(&self, sr: f64) {
        self.sample_rate.store(sr.to_bits(), Ordering::Relaxed);
    }

    pub fn set_anchor_seconds(&self, seconds: f64) {
        let samples = (seconds * self.sample_rate()).round() as i64;
        self.anchor.store(samples, Ordering::Release);
    }

    pub fn anchor(&self) -> i64 {
        self.anchor.load(Ordering::Acquire)
    }

    /// Last playhead position in seconds.
    pub fn playhead_seconds(&self) -> Option<f64> {
        let p = self.playhead.load(Ordering::Relaxed);
        (p != i64::MIN).then(|| p as f64 / self.sample_rate())
    }
}

/// The audio-thread side of playback.
pub struct Player {
    current: Option<Box<Stems>>,
    incoming: rtrb::Consumer<PlayerMsg>,
    retired: rtrb::Producer<Box<Stems>>,
}

/// The worker's side of the player's rings.
pub struct PlayerLink {
    pub incoming: rtrb::Producer<PlayerMsg>,
    pub retired: rtrb::Consumer<Box<Stems>>,
}

/// The four output signals of one block.
pub struct Outputs<'a> {
    pub main: [&'a mut [f32]; 2],
    pub vocals: Option<[&'a mut [f32]; 2]>,
    pub accompaniment: Option<[&'a mut [f32]; 2]>,
}

impl Player {
    pub fn new() -> (Self, PlayerLink) {
        let (in_tx, in_rx) = rtrb::RingBuffer::new(8);
        let (ret_tx, ret_rx) = rtrb::RingBuffer::new(8);
        (
            Self {
                current: None,
                incoming: in_rx,
                retired: ret_tx,
            },
            PlayerLink {
                incoming: in_tx,
                retired: ret_rx,
            },
        )
    }

    /// Takes new stems from the worker; the old ones are handed back for freeing.
    fn receive(&mut self) {
        // Only take a message when the old stems have somewhere to go.
        while self.retired.slots() > 0 {
            let Ok(msg) = self.incoming.pop() else {
                break;
            };
            let new = match msg {
                PlayerMsg::Load(stems) => Some(stems),
                PlayerMsg::Clear => None,
            };
            if let Some(old) = std::mem::replace(&mut self.current, new) {
                // Cannot fail: a slot was checked above.
                let _ = self.retired.push(old);
            }
        }
    }

    /// Adds the take to the main output (per `main`) and writes the stem buses.
    pub fn process(
        &mut self,
        state: &PlayState,
        timeline: &Timeline,
        main: MainOutput,
        out: Outputs<'_>,
    ) {
        self.receive();
        state
            .playhead
            .store(timeline.pos.unwrap_or(i64::MIN), Ordering::Relaxed);
        let Outputs {
            main: [main_l, main_r],
            mut vocals,
            mut accompaniment,
        } = out;
        for bus in [&mut vocals, &mut accompaniment].into_iter().flatten() {
            bus[0].fill(0.0);
            bus[1].fill(0.0);
        }
        let Some(stems) = self.current.as_deref() else {
            return;
        };
        if !timeline.playing {
            return;
        }
        let anchor = state.anchor();
        let frames = main_l.len().min(main_r.len());
        let sample = |s: &Option<Track>, k: i64| -> (f32, f32) {
            s.as_ref().map_or((0.0, 0.0), |t| t.frame(k))
        };
        for i in 0..frames {
            let Some(p) = timeline.position_at(i) else {
                return;
            };
            let k = p - anchor;
            let v = sample(&stems.vocals, k);
            let a = sample(&stems.accompaniment, k);
            if let Some(bus) = vocals.as_mut() {
                bus[0][i] = v.0;
                bus[1][i] = v.1;
            }
            if let Some(bus) = accompaniment.as_mut() {
                bus[0][i] = a.0;
                bus[1][i] = a.1;
            }
            let add = match main {
                MainOutput::Mix if stems.mix.is_some() => sample(&stems.mix, k),
                MainOutput::Mix => (v.0 + a.0, v.1 + a.1),
                MainOutput::Vocals => v,
                MainOutput::Accompaniment => a,
                MainOutput::Off => (0.0, 0.0),
            };
            main_l[i] += add.0;
            main_r[i] += add.1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stereo(vals: &[f32]) -> Stereo {
        Stereo {
            left: vals.to_vec(),
            right: vals.iter().map(|v| -v).collect(),
        }
    }

    #[test]
    fn plays_from_the_anchor_and_follows_the_loop() {
        let (mut player, mut link) = Player::new();
        let state = PlayState::default();
        state.set_sample_rate(10.0);
        state.set_anchor_seconds(1.0); // sample 10
        let stems = Stems {
            take_id: "t".into(),
            vocals: Some(stereo(&[1.0, 2.0, 3.0, 4.0]).into()),
            accompaniment: Some(stereo(&[10.0, 20.0, 30.0, 40.0]).into()),
            mix: None,
        };
        assert!(link.incoming.push(PlayerMsg::Load(Box::new(stems))).is_ok());
        // Loop [8, 12): positions 8, 9, 10, 11, 8, 9.
        let t = Timeline {
            playing: true,
            pos: Some(8),
            loop_range: Some((8, 12)),
        };
        let (mut ml, mut mr) = (vec![0.5f32; 6], vec![0.0f32; 6]);
        let (mut vl, mut vr, mut al, mut ar) =
            (vec![9.0; 6], vec![9.0; 6], vec![9.0; 6], vec![9.0; 6]);
        player.process(
            &state,
            &t,
            MainOutput::Mix,
            Outputs {
                main: [&mut ml, &mut mr],
                vocals: Some([&mut vl, &mut vr]),
                accompaniment: Some([&mut al, &mut ar]),
            },
        );
        assert_eq!(vl, [0.0, 0.0, 1.0, 2.0, 0.0, 0.0]);
        assert_eq!(ar, [0.0, 0.0, -10.0, -20.0, 0.0, 0.0]);
        assert_eq!(ml, [0.5, 0.5, 11.5, 22.5, 0.5, 0.5]);
        assert!(link.retired.pop().is_err());
        // Replacing the stems hands the old ones back.
        assert!(link.incoming.push(PlayerMsg::Clear).is_ok());
        player.process(
            &state,
            &t,
            MainOutput::Mix,
            Outputs {
                main: [&mut ml, &mut mr],
                vocals: None,
                accompaniment: None,
            },
        );
        assert_eq!(link.retired.pop().unwrap().take_id, "t");
    }

    #[test]
    fn a_live_track_plays_what_was_generated_and_silence_beyond() {
        let live = Arc::new(LiveStereo::with_capacity(5));
        let track = Track::Live(live.clone());
        assert_eq!(track.frames(), 0);
        assert_eq!(track.frame(0), (0.0, 0.0));
        assert_eq!(live.append(&[1.0, 2.0], &[-1.0, -2.0]), 0);
        assert_eq!(
            (track.frames(), track.frame(1), track.frame(2)),
            (2, (2.0, -2.0), (0.0, 0.0))
        );
        // What does not fit the preallocated room is dropped and counted.
        assert_eq!(live.append(&[3.0, 4.0, 5.0, 6.0], &[0.0; 4]), 1);
        assert_eq!(
            (track.frames(), track.frame(4), track.frame(5)),
            (5, (5.0, 0.0), (0.0, 0.0))
        );
        assert_eq!(track.frame(-1), (0.0, 0.0));
    }
}

/// Zeroed sample storage for buses a host leaves without buffers (the CLAP and VST3 entry layers
/// hand these to nice-plug in their place): per bus `channels × max_frames` samples, and a pointer
/// to each channel's `max_frames`. Allocated at activation, never on the audio thread; the
/// pointers stay valid as long as the returned storage lives (its buffers never reallocate).
pub(crate) fn stand_in_channels(
    channels: &[usize],
    max_frames: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<*mut f32>>) {
    let mut storage: Vec<Vec<f32>> = channels
        .iter()
        .map(|&c| vec![0.0; c * max_frames])
        .collect();
    let pointers = storage
        .iter_mut()
        .zip(channels)
        .map(|(s, &c)| {
            (0..c)
                // SAFETY: c * max_frames samples were allocated.
                .map(|i| unsafe { s.as_mut_ptr().add(i * max_frames) })
                .collect()
        })
        .collect();
    (storage, pointers)
}
