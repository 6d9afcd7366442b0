//! Each peer's inbound budget: token buckets of messages and bytes that its link's
//! reader charges every message to, without sockets or clocks (the reader passes the
//! time). A peer in debt is not read from until the debt is paid back, so its sender
//! blocks on TCP flow control; the reader also reports the episode to the actor, which
//! counts it and penalizes the peer ([`super::Offence::Flood`]).

use std::time::{Duration, Instant};

use crate::message::MAX_FRAME;

/// Seconds of average rate a bucket holds when full: a peer may send this long at
/// twice its rate after a quiet spell before it is throttled.
const BURST_SECONDS: u32 = 2;
/// Throttling is reported to the actor at most this often, so that a peer flooding
/// without pause loses score at a steady pace (and is banned after about ten seconds,
/// starting from 0) rather than in one burst of reports.
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// A token bucket: `rate` tokens a second, at most `burst`, charged after the fact (a
/// charge may take it below zero: the debt is the wait).
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Charges `amount` at `now`; returns how long until the bucket is out of debt.
    fn charge(&mut self, now: Instant, amount: f64) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - amount;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// What one peer may send: messages and bytes a second, with bursts of
/// [`BURST_SECONDS`] (and never less than two of the largest frames, so one large
/// proposal after a quiet spell is not throttled).
#[derive(Debug)]
pub(super) struct InboundBudget {
    messages: Bucket,
    bytes: Bucket,
    last_report: Option<Instant>,
}

/// The outcome of charging one message.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Charge {
    /// How long to stop reading from the peer (zero: within budget).
    pub(super) pause: Duration,
    /// Whether to report this throttling to the actor (at most once per
    /// [`REPORT_INTERVAL`]).
    pub(super) report: bool,
}

impl InboundBudget {
    /// A full budget of `messages_per_sec` and `bytes_per_sec` (each at least 1).
    pub(super) fn new(messages_per_sec: u32, bytes_per_sec: u64, now: Instant) -> Self {
        let m = f64::from(messages_per_sec.max(1));
        let b = bytes_per_sec.max(1) as f64;
        let seconds = f64::from(BURST_SECONDS);
        InboundBudget {
            messages: Bucket::new(m, m * seconds, now),
            bytes: Bucket::new(b, (b * seconds).max(2.0 * MAX_FRAME as f64), now),
            last_report: None,
        }
    }

    /// Charges a message of `bytes` received at `now`.
    pub(super) fn charge(&mut self, now: Instant, bytes: usize) -> Charge {
        let pause = self
            .messages
            .charge(now, 1.0)
            .max(self.bytes.charge(now, bytes as f64));
        let report = !pause.is_zero()
            && self
                .last_report
                .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_INTERVAL);
        if report {
            self.last_report = Some(now);
        }
        Charge { pause, report }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Charges `n` messages of `bytes` each, spaced `gap` apart from `start`, and
    /// honours every pause as the reader does; returns (the time after the last one,
    /// total pause, reports).
    fn run(
        b: &mut InboundBudget,
        start: Instant,
        n: u32,
        bytes: usize,
        gap: Duration,
    ) -> (Instant, Duration, u32) {
        let (mut now, mut paused, mut reports) = (start, Duration::ZERO, 0);
        for _ in 0..n {
            let c = b.charge(now, bytes);
            paused += c.pause;
            reports += u32::from(c.report);
            now += c.pause + gap;
        }
        (now, paused, reports)
    }

    #[test]
    fn a_peer_within_its_rate_is_never_paused() {
        let t0 = Instant::now();
        let mut b = InboundBudget::new(1_000, 10_000_000, t0);
        // 900 messages a second of 10 KB (9 MB/s) for 10 s.
        let (_, paused, reports) = run(&mut b, t0, 9_000, 10_000, Duration::from_micros(1_111));
        assert_eq!((paused, reports), (Duration::ZERO, 0));
    }

    #[test]
    fn a_burst_passes_then_a_flood_is_held_to_the_rate_and_reported_once_a_second() {
        let t0 = Instant::now();
        let mut b = InboundBudget::new(100, u64::MAX / 4, t0);
        // The burst (two seconds' worth) passes at once.
        let (t1, paused, _) = run(&mut b, t0, 200, 10, Duration::ZERO);
        assert_eq!(paused, Duration::ZERO);
        // A peer sending without pause for 1,000 more messages is read at 100 a
        // second: about 10 s of pauses, reported about once a second.
        let (t2, paused, reports) = run(&mut b, t1, 1_000, 10, Duration::ZERO);
        let secs = t2.duration_since(t1).as_secs_f64();
        assert!((9.9..10.1).contains(&secs), "{secs} s for 1,000 messages");
        assert!((9.9..10.1).contains(&paused.as_secs_f64()));
        assert!((9..=11).contains(&reports), "{reports} reports");
    }

    #[test]
    fn bytes_are_budgeted_too_and_one_largest_frame_always_passes() {
        let t0 = Instant::now();
        // 1 MB/s: the burst is still two of the largest frames.
        let mut b = InboundBudget::new(10_000, 1_000_000, t0);
        let (t1, paused, _) = run(&mut b, t0, 2, MAX_FRAME, Duration::ZERO);
        assert_eq!(paused, Duration::ZERO);
        let c = b.charge(t1, 1_000_000);
        assert!(c.report);
        assert!(
            (0.99..1.01).contains(&c.pause.as_secs_f64()),
            "{:?}: a megabyte of debt at 1 MB/s",
            c.pause
        );
    }
}
