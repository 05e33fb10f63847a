//! The host transport reduced to sample positions: the one mapping that capture and playback
//! share, so a captured region and a playing take line up with the host's timeline, its loop
//! and offline bounces alike.

use nice_plug::prelude::Transport;

/// Where one process block sits on the host timeline.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timeline {
    pub playing: bool,
    /// Timeline position of the block's first sample.
    pub pos: Option<i64>,
    /// Active loop range `[start, end)` in samples.
    pub loop_range: Option<(i64, i64)>,
}

impl Timeline {
    pub fn from_transport(t: &Transport) -> Self {
        Self {
            playing: t.playing,
            pos: t.pos_samples(),
            loop_range: t.loop_range_samples().filter(|(s, e)| e > s),
        }
    }

    /// Timeline position of sample `i` of the block. A block that starts inside the loop wraps
    /// back to the loop start when it crosses the loop end (hosts need not split blocks there).
    pub fn position_at(&self, i: usize) -> Option<i64> {
        let start = self.pos?;
        let p = start + i as i64;
        match self.loop_range {
            Some((s, e)) if start < e && p >= e => Some(s + (p - e) % (e - s)),
            _ => Some(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_inside_the_loop_only() {
        let t = Timeline {
            playing: true,
            pos: Some(98),
            loop_range: Some((10, 100)),
        };
        let got: Vec<i64> = (0..4).map(|i| t.position_at(i).unwrap()).collect();
        assert_eq!(got, [98, 99, 10, 11]);
        let after = Timeline {
            pos: Some(200),
            ..t
        };
        assert_eq!(after.position_at(3), Some(203));
        assert_eq!(Timeline::default().position_at(0), None);
    }
}
