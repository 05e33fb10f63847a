//! Bookkeeping of the decode loop over the delay pattern: which columns to feed, how chosen
//! tokens are written back, when to stop, and the final un-delay and cut.
//!
//! Write-back follows the reference: slots outside the pattern and streams that already
//! emitted EOS get the special id; then a stream ends when it writes EOS; the written column
//! (specials included) joins the penalty pool. The loop stops when every stream has ended or at
//! the last column; never-written slots become special. The output is cut at the earliest time
//! any stream holds EOS.

use super::pattern::{DelayPattern, UNKNOWN};

/// The state of one generation.
#[derive(Debug, Clone)]
pub struct DecodeState {
    pattern: DelayPattern,
    frames: usize,
    grid: Vec<Vec<i64>>,
    valid: Vec<Vec<bool>>,
    ended: Vec<bool>,
    pool: Vec<[u32; 3]>,
    /// Column written by the next step.
    offset: usize,
    /// First column not yet fed to the model.
    fed_up_to: usize,
    fed: Vec<[u32; 3]>,
    special: u32,
    eos: u32,
    /// Song frames handed out by [`DecodeState::take_final`].
    delivered: usize,
    /// An EOS was met while handing out frames: the song ends there.
    song_ended: bool,
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// `[3][frames]`: the un-delayed grid (special after a stream's EOS and where never written).
    pub raw: Vec<Vec<i64>>,
    /// `[3][T_out]`: `raw` cut at the earliest EOS of any stream.
    pub tokens: Vec<Vec<i64>>,
    /// The last column fed at each model call.
    pub fed_columns: Vec<[u32; 3]>,
    /// Whether every stream ended before the last column.
    pub stopped_early: bool,
}

impl DecodeState {
    pub fn new(pattern: DelayPattern, frames: usize, special: u32, eos: u32) -> Self {
        assert_eq!(pattern.streams(), 3, "LeLM decodes exactly 3 streams");
        let offset = pattern.first_step_with_timestep(0);
        Self {
            grid: pattern.gen_sequence(frames, special as i64),
            valid: pattern.mask(frames),
            ended: vec![false; 3],
            pool: Vec::new(),
            offset,
            fed_up_to: 0,
            fed: Vec::new(),
            pattern,
            frames,
            special,
            eos,
            delivered: 0,
            song_ended: false,
        }
    }

    /// The song frames `[mixed, vocal, bgm]` that became final since the last call: every
    /// stream has written them (a frame of time `t` is complete once the most delayed stream's
    /// column `t + 1 + delay` is written) and none holds EOS, so they are a prefix of
    /// [`Generation::tokens`] whatever comes next. Stops for good at the first EOS.
    pub fn take_final(&mut self) -> Vec<[i64; 3]> {
        if self.song_ended {
            return Vec::new();
        }
        let delays = self.pattern.delays();
        let max_delay = delays.iter().copied().max().unwrap_or(0);
        let complete = self.offset.saturating_sub(1 + max_delay).min(self.frames);
        let mut out = Vec::new();
        while self.delivered < complete {
            let t = self.delivered;
            let frame: [i64; 3] = std::array::from_fn(|q| self.grid[q][t + 1 + delays[q]]);
            if frame.contains(&(self.eos as i64)) {
                self.song_ended = true;
                break;
            }
            out.push(frame);
            self.delivered += 1;
        }
        out
    }

    /// Frames handed out by [`Self::take_final`] so far.
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// Model calls a full-length generation makes (one per written column).
    pub fn total_steps(&self) -> usize {
        self.pattern.columns(self.frames) - self.pattern.first_step_with_timestep(0)
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.fed.len()
    }

    pub fn finished(&self) -> bool {
        self.ended.iter().all(|&e| e) || self.offset >= self.grid[0].len()
    }

    /// Columns written so far (oldest first), the penalty pool.
    pub fn pool(&self) -> &[[u32; 3]] {
        &self.pool
    }

    /// The columns to feed next (all columns before the one being predicted that the model has
    /// not seen), or `None` when generation is over.
    pub fn next_input(&mut self) -> Option<Vec<[u32; 3]>> {
        if self.finished() {
            return None;
        }
        let cols: Vec<[u32; 3]> = (self.fed_up_to..self.offset)
            .map(|s| std::array::from_fn(|q| self.grid[q][s] as u32))
            .collect();
        self.fed_up_to = self.offset;
        self.fed.push(*cols.last()?);
        Some(cols)
    }

    /// Writes the tokens chosen for the current column.
    pub fn write(&mut self, tokens: &[u32]) {
        let s = self.offset;
        let mut column = [self.special; 3];
        for q in 0..3 {
            let tok = if !self.valid[q][s] || self.ended[q] {
                self.special
            } else {
                tokens[q]
            };
            self.ended[q] |= tok == self.eos;
            if self.grid[q][s] == UNKNOWN {
                self.grid[q][s] = tok as i64;
            }
            column[q] = self.grid[q][s] as u32;
        }
        self.pool.push(column);
        self.offset += 1;
    }

    pub fn finish(mut self) -> Generation {
        let stopped_early = self.offset < self.grid[0].len();
        for row in &mut self.grid {
            for v in row.iter_mut().filter(|v| **v == UNKNOWN) {
                *v = self.special as i64;
            }
        }
        let raw = self.pattern.revert(&self.grid, self.frames);
        let eos = self.eos as i64;
        let cut = raw
            .iter()
            .filter_map(|row| row.iter().position(|&v| v == eos))
            .min()
            .unwrap_or(self.frames);
        let tokens = raw.iter().map(|row| row[..cut].to_vec()).collect();
        Generation {
            raw,
            tokens,
            fed_columns: self.fed,
            stopped_early,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: u32 = 9;
    const EOS: u32 = 8;

    fn run(frames: usize, mut pick: impl FnMut(usize) -> [u32; 3]) -> Generation {
        let mut st = DecodeState::new(DelayPattern::new(vec![0, 2, 2]), frames, SP, EOS);
        let mut step = 0;
        while let Some(cols) = st.next_input() {
            assert_eq!(cols.len(), 1);
            st.write(&pick(step));
            step += 1;
        }
        st.finish()
    }

    #[test]
    fn invalid_and_ended_slots_become_special_and_all_eos_stops() {
        // Stream 0 ends at time 2; streams 1/2 end at time 1 (column 4).
        let g = run(6, |s| match s {
            2 => [EOS, 1, 2],
            3 => [0, EOS, EOS],
            _ => [0, 1, 2],
        });
        assert!(g.stopped_early);
        assert_eq!(g.fed_columns.len(), 4);
        assert_eq!(g.raw[0], [0, 0, 8, 9, 9, 9]);
        assert_eq!(g.raw[1], [1, 8, 9, 9, 9, 9]);
        assert_eq!(g.raw[2], [2, 8, 9, 9, 9, 9]);
        // Column 0 is all special, and invalid slots were fed back as special.
        assert_eq!(g.fed_columns[0], [SP; 3]);
        assert_eq!(g.fed_columns[1], [0, SP, SP]);
        assert_eq!(g.tokens, [vec![0], vec![1], vec![2]]);
    }

    /// Runs like [`run`], collecting [`DecodeState::take_final`] after every step.
    fn run_streaming(
        frames: usize,
        mut pick: impl FnMut(usize) -> [u32; 3],
    ) -> (Generation, Vec<Vec<[i64; 3]>>) {
        let mut st = DecodeState::new(DelayPattern::new(vec![0, 2, 2]), frames, SP, EOS);
        let mut step = 0;
        let mut handed = Vec::new();
        while st.next_input().is_some() {
            st.write(&pick(step));
            handed.push(st.take_final());
            step += 1;
        }
        (st.finish(), handed)
    }

    #[test]
    fn final_frames_are_a_prefix_of_the_tokens_as_soon_as_every_stream_wrote_them() {
        let pickers: [(usize, fn(usize) -> [u32; 3]); 3] = [
            (6, |s| match s {
                2 => [EOS, 1, 2],
                3 => [0, EOS, EOS],
                _ => [0, 1, 2],
            }),
            (5, |s| if s == 4 { [0, EOS, 1] } else { [0, 1, 2] }),
            (4, |s| [s as u32, 10 + s as u32, 20 + s as u32]),
        ];
        for (frames, pick) in pickers {
            let (g, handed) = run_streaming(frames, pick);
            let flat: Vec<[i64; 3]> = handed.iter().flatten().copied().collect();
            let t = g.tokens[0].len();
            assert!(flat.len() <= t);
            for (i, f) in flat.iter().enumerate() {
                assert_eq!(*f, [g.tokens[0][i], g.tokens[1][i], g.tokens[2][i]]);
            }
            // Frame t is handed out right after the step writing column t + 1 + 2.
            for (step, h) in handed.iter().enumerate() {
                let before: usize = handed[..step].iter().map(Vec::len).sum();
                for (j, _) in h.iter().enumerate() {
                    assert_eq!(before + j + 3, step + 1, "frames {frames}");
                }
            }
        }
        // Without any EOS every frame but the ones the last step completes is handed out.
        let (g, handed) = run_streaming(4, |s| [s as u32, 10 + s as u32, 20 + s as u32]);
        assert_eq!(
            handed.iter().map(Vec::len).sum::<usize>(),
            g.tokens[0].len()
        );
    }

    #[test]
    fn partial_eos_runs_to_the_end_and_cuts_at_the_earliest() {
        let g = run(5, |s| if s == 4 { [0, EOS, 1] } else { [0, 1, 2] });
        assert!(!g.stopped_early);
        assert_eq!(g.fed_columns.len(), 7);
        assert_eq!(g.raw[1], [1, 1, 8, 9, 9]);
        assert_eq!(g.tokens[0].len(), 2);
        let g = run(3, |_| [0, 1, 2]);
        assert_eq!(g.tokens, g.raw);
    }
}
