//! The delay codebook pattern: stream `q` is shifted right by `delays[q]` steps, so the vocal
//! and bgm tokens of time `t` are predicted with `delays[q]` frames of look-ahead on the mixed
//! stream. The layout has `1 + T + max(delays)` columns; column 0 is empty (all special) and
//! column `s >= 1` holds `code[q][s - 1 - delays[q]]` where that time exists.

/// Marks a slot to be generated in [`DelayPattern::gen_sequence`].
pub const UNKNOWN: i64 = -1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayPattern {
    delays: Vec<usize>,
}

impl DelayPattern {
    pub fn new(delays: Vec<usize>) -> Self {
        Self { delays }
    }

    pub fn delays(&self) -> &[usize] {
        &self.delays
    }

    pub fn streams(&self) -> usize {
        self.delays.len()
    }

    /// Columns of the layout for `t` timesteps.
    pub fn columns(&self, t: usize) -> usize {
        t + self.delays.iter().copied().max().unwrap_or(0) + 1
    }

    /// The time index stream `q` holds at column `s`, if any.
    pub fn time_at(&self, q: usize, s: usize, t: usize) -> Option<usize> {
        s.checked_sub(1 + self.delays[q]).filter(|&time| time < t)
    }

    /// Which slots `[q][s]` hold a code.
    pub fn mask(&self, t: usize) -> Vec<Vec<bool>> {
        (0..self.streams())
            .map(|q| {
                (0..self.columns(t))
                    .map(|s| self.time_at(q, s, t).is_some())
                    .collect()
            })
            .collect()
    }

    /// Lays `codes[q][t]` out in pattern columns, `special` elsewhere.
    pub fn build(&self, codes: &[Vec<i64>], special: i64) -> Vec<Vec<i64>> {
        let t = codes.first().map_or(0, Vec::len);
        (0..self.streams())
            .map(|q| {
                (0..self.columns(t))
                    .map(|s| self.time_at(q, s, t).map_or(special, |time| codes[q][time]))
                    .collect()
            })
            .collect()
    }

    /// The grid generation starts from: [`UNKNOWN`] at the slots to generate, `special` elsewhere.
    pub fn gen_sequence(&self, t: usize, special: i64) -> Vec<Vec<i64>> {
        self.mask(t)
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|valid| if valid { UNKNOWN } else { special })
                    .collect()
            })
            .collect()
    }

    /// Undoes the delays: `code[q][time] = seq[q][time + delays[q] + 1]` for `t` timesteps.
    pub fn revert(&self, seq: &[Vec<i64>], t: usize) -> Vec<Vec<i64>> {
        (0..self.streams())
            .map(|q| {
                (0..t)
                    .map(|time| seq[q][time + self.delays[q] + 1])
                    .collect()
            })
            .collect()
    }

    /// The first column that holds timestep `t` of any stream.
    pub fn first_step_with_timestep(&self, t: usize) -> usize {
        t + self.delays.iter().copied().min().unwrap_or(0) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toy_layout_round_trips() {
        let p = DelayPattern::new(vec![0, 3, 3]);
        let codes: Vec<Vec<i64>> = (0..3)
            .map(|q| (0..6).map(|t| 10 * q + t).collect())
            .collect();
        let seq = p.build(&codes, -9);
        assert_eq!(seq[0], [-9, 0, 1, 2, 3, 4, 5, -9, -9, -9]);
        assert_eq!(seq[1], [-9, -9, -9, -9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(p.revert(&seq, 6), codes);
        assert_eq!(p.first_step_with_timestep(0), 1);
    }
}
