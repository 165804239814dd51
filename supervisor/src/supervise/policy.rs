//! The restart policy: when a plugin that exited is started again, and when plugd gives up.
//!
//! The first restart is immediate; after that the delay doubles from `initial_backoff` up to
//! `max_backoff`, with jitter so plugins that crashed together do not restart in lockstep. A
//! plugin that stayed up for `stable_after` starts over with an immediate restart. More than
//! `max_restarts` restarts within `window` is a crash loop: the plugin goes to `failed` and
//! stays there until an admin acts. This module is pure logic over explicit instants, so its
//! tests need no clock.

use crate::manifest::RestartPolicy;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What to do about a plugin that exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// Crash loop: stop trying, with this explanation.
    GiveUp(String),
}

/// One plugin's restart history.
#[derive(Debug, Default, Clone)]
pub struct RestartState {
    recent: VecDeque<Instant>,
    backoff: Option<Duration>,
}

impl RestartState {
    /// Decides about an exit at `now` of an instance that had been up for `up_for` (`None` if
    /// it never became ready). `jitter` in `[0, 1)` spreads the delay over its upper half.
    pub fn on_exit(
        &mut self,
        policy: &RestartPolicy,
        now: Instant,
        up_for: Option<Duration>,
        jitter: f64,
    ) -> Decision {
        if up_for.is_some_and(|up| up >= policy.stable_after) {
            self.backoff = None;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= policy.max_restarts as usize {
            return Decision::GiveUp(format!(
                "crash loop: {} restarts within {}",
                self.recent.len(),
                humantime::format_duration(policy.window)
            ));
        }
        self.recent.push_back(now);
        let delay = match self.backoff {
            None => {
                self.backoff = Some(policy.initial_backoff.min(policy.max_backoff));
                Duration::ZERO
            }
            Some(b) => {
                self.backoff = Some((b * 2).min(policy.max_backoff));
                b.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
            }
        };
        Decision::RestartAfter(delay)
    }

    /// Restarts counted in the current window.
    pub fn restarts(&self) -> usize {
        self.recent.len()
    }

    /// Forgets the history (an admin restarted or re-enabled the plugin).
    pub fn reset(&mut self) {
        *self = RestartState::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 4,
            window: Duration::from_secs(60),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
            stable_after: Duration::from_secs(30),
            standby: false,
        }
    }

    #[test]
    fn first_restart_is_immediate_then_backoff_doubles_to_the_cap() {
        let p = policy();
        let mut s = RestartState::default();
        let t = Instant::now();
        let delays: Vec<Decision> = (0..4)
            .map(|i| s.on_exit(&p, t + Duration::from_secs(i), None, 1.0))
            .collect();
        assert_eq!(
            delays,
            vec![
                Decision::RestartAfter(Duration::ZERO),
                Decision::RestartAfter(Duration::from_secs(1)),
                Decision::RestartAfter(Duration::from_secs(2)),
                Decision::RestartAfter(Duration::from_secs(4)),
            ]
        );
    }

    #[test]
    fn jitter_spreads_the_delay_over_its_upper_half() {
        let p = policy();
        let mut s = RestartState::default();
        let t = Instant::now();
        s.on_exit(&p, t, None, 0.0);
        assert_eq!(
            s.on_exit(&p, t, None, 0.0),
            Decision::RestartAfter(Duration::from_millis(500))
        );
    }

    #[test]
    fn too_many_restarts_in_the_window_give_up() {
        let p = policy();
        let mut s = RestartState::default();
        let t = Instant::now();
        for i in 0..4 {
            assert!(matches!(
                s.on_exit(&p, t + Duration::from_secs(i), None, 0.5),
                Decision::RestartAfter(_)
            ));
        }
        match s.on_exit(&p, t + Duration::from_secs(5), None, 0.5) {
            Decision::GiveUp(why) => assert!(why.contains("4 restarts within 1m"), "{why}"),
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[test]
    fn restarts_outside_the_window_no_longer_count() {
        let p = policy();
        let mut s = RestartState::default();
        let t = Instant::now();
        for i in 0..4 {
            s.on_exit(&p, t + Duration::from_secs(i), None, 0.5);
        }
        let later = t + Duration::from_secs(100);
        assert!(matches!(
            s.on_exit(&p, later, None, 0.5),
            Decision::RestartAfter(_)
        ));
        assert_eq!(s.restarts(), 1);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let p = policy();
        let mut s = RestartState::default();
        let t = Instant::now();
        s.on_exit(&p, t, None, 1.0);
        s.on_exit(&p, t, None, 1.0);
        assert_eq!(
            s.on_exit(&p, t, Some(Duration::from_secs(31)), 1.0),
            Decision::RestartAfter(Duration::ZERO),
            "up long enough: immediate again"
        );
    }
}
