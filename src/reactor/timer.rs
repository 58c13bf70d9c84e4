//! A hashed timer wheel: one deadline per key (a core), 1 ms resolution. Setting and
//! expiring are O(1); the bench hosts thousands of client cores on one loop.

use std::time::{Duration, Instant};

const SLOTS: u64 = 512;
const TICK: Duration = Duration::from_millis(1);

pub struct TimerWheel {
    origin: Instant,
    /// Every tick before this one has been expired.
    current: u64,
    slots: Vec<Vec<(usize, u64)>>,
    /// The live deadline of each key, in ticks; slot entries that disagree are stale.
    deadlines: Vec<Option<u64>>,
}

impl TimerWheel {
    pub fn new(now: Instant) -> TimerWheel {
        TimerWheel {
            origin: now,
            current: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            deadlines: Vec::new(),
        }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        // Round up: a timer never fires before its deadline.
        let d = t.saturating_duration_since(self.origin);
        let ticks = d.as_nanos().div_ceil(TICK.as_nanos());
        ticks as u64
    }

    fn instant_of(&self, tick: u64) -> Instant {
        self.origin + Duration::from_millis(tick)
    }

    /// Sets (or with `None` clears) the deadline of `key`.
    pub fn set(&mut self, key: usize, deadline: Option<Instant>) {
        if key >= self.deadlines.len() {
            self.deadlines.resize(key + 1, None);
        }
        let tick = deadline.map(|t| self.tick_of(t).max(self.current));
        if self.deadlines[key] == tick {
            return;
        }
        self.deadlines[key] = tick;
        if let Some(tick) = tick {
            self.slots[(tick % SLOTS) as usize].push((key, tick));
        }
    }

    /// Moves time to `now` and appends every key whose deadline passed to `expired`.
    pub fn expire(&mut self, now: Instant, expired: &mut Vec<usize>) {
        let now_tick = now.saturating_duration_since(self.origin).as_nanos() / TICK.as_nanos();
        let now_tick = now_tick as u64;
        if now_tick < self.current {
            return;
        }
        let steps = (now_tick - self.current + 1).min(SLOTS);
        for i in 0..steps {
            let slot = ((self.current + i) % SLOTS) as usize;
            let deadlines = &mut self.deadlines;
            self.slots[slot].retain(|&(key, tick)| {
                if deadlines[key] != Some(tick) {
                    return false;
                }
                if tick <= now_tick {
                    deadlines[key] = None;
                    expired.push(key);
                    return false;
                }
                true
            });
        }
        self.current = now_tick + 1;
    }

    /// When to wake up next. Far deadlines (over one revolution away) wake the loop once
    /// per revolution, which is harmless.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut any = false;
        for i in 0..SLOTS {
            let at = self.current + i;
            for &(key, tick) in &self.slots[(at % SLOTS) as usize] {
                if self.deadlines[key] == Some(tick) {
                    if tick == at {
                        return Some(self.instant_of(at));
                    }
                    any = true;
                }
            }
        }
        any.then(|| self.instant_of(self.current + SLOTS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_never_early_and_honours_resets() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let ms = |n| t0 + Duration::from_millis(n);
        w.set(0, Some(ms(5)));
        w.set(1, Some(ms(2000)));
        w.set(2, Some(ms(7)));
        w.set(2, Some(ms(9)));
        assert_eq!(w.next_deadline(), Some(ms(5)));
        let mut out = Vec::new();
        w.expire(ms(4), &mut out);
        assert!(out.is_empty());
        w.expire(ms(8), &mut out);
        assert_eq!(out, vec![0]);
        w.set(0, None);
        out.clear();
        w.expire(ms(1999), &mut out);
        assert_eq!(out, vec![2]);
        out.clear();
        w.expire(ms(2000), &mut out);
        assert_eq!(out, vec![1]);
        assert_eq!(w.next_deadline(), None);
    }
}
