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
        }
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
