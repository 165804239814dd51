//! A canary: a second version of a plugin beside the stable one, serving a share of its HTTP
//! requests. The proxy asks [`Canary::choose`] which side serves a request (sticky per client
//! through the `X-Plugd-Client` header or the `plugd_canary` cookie plugd sets) and records
//! each answer's status and latency in a sliding window per side; [`watch`] compares the two
//! windows and, past the [`CanaryPolicy`]'s thresholds, has the reconcile loop end the canary
//! in the store, which every worker then follows. Hooks and services never reach a canary.

use super::instance::Instance;
use super::reconcile::{Event, Handle};
use axum::http::HeaderMap;
use plugd_api::{CanaryFigures, CanaryThresholds};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The cookie that keeps a client on the side it was given.
pub const COOKIE: &str = "plugd_canary";
/// A request header whose value picks the side deterministically (the same on every worker).
pub const CLIENT_HEADER: &str = "x-plugd-client";
/// Slices of the sliding window: it moves by a twentieth of its length.
const SLICES: usize = 20;
/// Latency histogram buckets: four per power of two of microseconds, up to about 2^27 µs.
const BUCKETS: usize = 108;

/// When plugd ends a canary on its own, and over what window.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPolicy {
    /// The sliding window both sides are judged over.
    pub window: Duration,
    /// Requests the canary must have answered in the window before it is judged.
    pub min_requests: u64,
    /// The canary's 5xx ratio must stay at or below this factor times the stable one's …
    pub error_factor: f64,
    /// … or at or below this ratio.
    pub min_error_ratio: f64,
    /// Its p99 must stay at or below this factor times the stable one's …
    pub latency_factor: f64,
    /// … or within this much of it (so a sub-millisecond route is not judged on noise).
    pub latency_floor: Duration,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            window: Duration::from_secs(60),
            min_requests: 20,
            error_factor: 2.0,
            min_error_ratio: 0.01,
            latency_factor: 2.0,
            latency_floor: Duration::from_millis(10),
        }
    }
}

impl CanaryPolicy {
    /// The thresholds as the admin API shows them.
    pub fn thresholds(&self) -> CanaryThresholds {
        CanaryThresholds {
            min_requests: self.min_requests,
            error_factor: self.error_factor,
            min_error_ratio: self.min_error_ratio,
            latency_factor: self.latency_factor,
        }
    }

    fn slice(&self) -> Duration {
        (self.window / SLICES as u32).max(Duration::from_millis(10))
    }
}

/// Which version serves a request during a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The stable version.
    Stable,
    /// The canary.
    Candidate,
}

/// How a request was routed during a canary, kept with its response until it is recorded.
#[derive(Debug, Clone)]
pub struct Served {
    /// The canary that was running.
    pub canary: Arc<Canary>,
    /// The side that served it.
    pub side: Side,
    /// Whether the client must be told its side in a cookie (it brought none).
    pub set_cookie: bool,
}

/// A running canary on this worker: its instance, its share, and both sides' windows.
#[derive(Debug)]
pub struct Canary {
    /// The canary's ready instance.
    pub instance: Arc<Instance>,
    /// sha256 of its bundle.
    pub sha256: String,
    /// Its share of the requests, in percent.
    pub percent: u8,
    policy: CanaryPolicy,
    started: Instant,
    stable: Mutex<Window>,
    candidate: Mutex<Window>,
}

impl Canary {
    /// A canary serving `percent` of the requests from `instance`.
    pub fn new(
        instance: Arc<Instance>,
        sha256: String,
        percent: u8,
        policy: CanaryPolicy,
    ) -> Canary {
        Canary {
            instance,
            sha256,
            percent,
            policy,
            started: Instant::now(),
            stable: Mutex::default(),
            candidate: Mutex::default(),
        }
    }

    /// The policy it is judged by.
    pub fn policy(&self) -> &CanaryPolicy {
        &self.policy
    }

    fn tag(&self) -> &str {
        &self.sha256[..self.sha256.len().min(12)]
    }

    /// Which side serves a request with these headers, and whether to set the cookie: the
    /// `X-Plugd-Client` header picks by its hash (the same on every worker); a `plugd_canary`
    /// cookie naming this canary keeps its side; otherwise the side is drawn with the
    /// canary's odds and the cookie set.
    pub fn choose(&self, headers: &HeaderMap) -> (Side, bool) {
        let by_odds = |roll: u64| {
            if roll % 100 < u64::from(self.percent) {
                Side::Candidate
            } else {
                Side::Stable
            }
        };
        if let Some(client) = headers.get(CLIENT_HEADER) {
            return (
                by_odds(fnv1a(self.sha256.as_bytes(), client.as_bytes())),
                false,
            );
        }
        let cookie = headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .find_map(|value| value.strip_prefix(self.tag())?.strip_prefix('.'));
        match cookie {
            Some("c") => (Side::Candidate, false),
            Some("s") => (Side::Stable, false),
            _ => (by_odds(rand::random::<u64>()), true),
        }
    }

    /// The `Set-Cookie` value that keeps a client on `side` of this canary, for `plugin`.
    pub fn cookie(&self, plugin: &str, side: Side) -> String {
        let side = match side {
            Side::Candidate => 'c',
            Side::Stable => 's',
        };
        format!(
            "{COOKIE}={}.{side}; Path=/plugins/{plugin}; HttpOnly; SameSite=Lax",
            self.tag()
        )
    }

    /// Records one answer of `side`.
    pub fn record(&self, side: Side, status: u16, elapsed: Duration) {
        let window = match side {
            Side::Stable => &self.stable,
            Side::Candidate => &self.candidate,
        };
        let tick = self.tick();
        window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(tick, status >= 500, elapsed);
    }

    fn tick(&self) -> u64 {
        (self.started.elapsed().as_nanos() / self.policy.slice().as_nanos().max(1)) as u64
    }

    /// Both sides' figures over the window: (stable, canary).
    pub fn figures(&self) -> (CanaryFigures, CanaryFigures) {
        let tick = self.tick();
        let read = |w: &Mutex<Window>| w.lock().unwrap_or_else(|e| e.into_inner()).figures(tick);
        (read(&self.stable), read(&self.candidate))
    }

    /// Why the canary must end, with the figures, if it must.
    pub fn verdict(&self) -> Option<String> {
        let (stable, canary) = self.figures();
        let p = &self.policy;
        if canary.requests < p.min_requests {
            return None;
        }
        let pct = |r: f64| format!("{:.1} %", r * 100.0);
        if canary.error_ratio > p.error_factor * stable.error_ratio
            && canary.error_ratio > p.min_error_ratio
        {
            return Some(format!(
                "5xx ratio {} ({} of {}) against {} stable ({} of {}) over {:?}",
                pct(canary.error_ratio),
                canary.errors,
                canary.requests,
                pct(stable.error_ratio),
                stable.errors,
                stable.requests,
                p.window
            ));
        }
        if let (Some(c), Some(s)) = (canary.p99_ms, stable.p99_ms) {
            let floor = p.latency_floor.as_secs_f64() * 1000.0;
            if stable.requests >= p.min_requests && c > p.latency_factor * s && c - s > floor {
                return Some(format!(
                    "p99 {c:.1} ms ({} requests) against {s:.1} ms stable ({} requests) over {:?}",
                    canary.requests, stable.requests, p.window
                ));
            }
        }
        None
    }
}

/// Checks the canary every slice of its window and, once its verdict says so, tells the loop
/// (`CanaryFailed`), which ends it in the store for every worker; ends by itself when the
/// canary is gone.
pub async fn watch(plugin: String, canary: Weak<Canary>, loop_: Handle) {
    loop {
        let (verdict, sha256, every) = {
            let Some(canary) = canary.upgrade() else {
                return;
            };
            (
                canary.verdict(),
                canary.sha256.clone(),
                canary.policy.slice(),
            )
        };
        if let Some(reason) = verdict {
            loop_.send(Event::CanaryFailed {
                name: plugin,
                sha256,
                reason,
            });
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// FNV-1a over `salt` then `value`: a hash that is the same in every worker and every build.
fn fnv1a(salt: &[u8], value: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in salt.iter().chain(value) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One side's answers in the last [`SLICES`] slices of the window.
#[derive(Debug, Default)]
struct Window {
    slices: Vec<Slice>,
}

#[derive(Debug, Clone)]
struct Slice {
    tick: u64,
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
}

impl Window {
    fn record(&mut self, tick: u64, error: bool, elapsed: Duration) {
        if self.slices.is_empty() {
            self.slices = (0..SLICES)
                .map(|_| Slice {
                    tick: u64::MAX,
                    requests: 0,
                    errors: 0,
                    latency: [0; BUCKETS],
                })
                .collect();
        }
        let slice = &mut self.slices[(tick % SLICES as u64) as usize];
        if slice.tick != tick {
            *slice = Slice {
                tick,
                requests: 0,
                errors: 0,
                latency: [0; BUCKETS],
            };
        }
        slice.requests += 1;
        slice.errors += u64::from(error);
        let bucket = bucket_of(elapsed);
        slice.latency[bucket] = slice.latency[bucket].saturating_add(1);
    }

    fn figures(&self, tick: u64) -> CanaryFigures {
        let live = self
            .slices
            .iter()
            .filter(|s| s.tick != u64::MAX && s.tick + SLICES as u64 > tick);
        let (mut requests, mut errors, mut latency) = (0, 0, [0u64; BUCKETS]);
        for s in live {
            requests += s.requests;
            errors += s.errors;
            for (sum, n) in latency.iter_mut().zip(s.latency) {
                *sum += u64::from(n);
            }
        }
        let p99_ms = (requests > 0).then(|| {
            let rank = requests - requests / 100;
            let mut seen = 0;
            let bucket = latency
                .iter()
                .position(|n| {
                    seen += n;
                    seen >= rank
                })
                .unwrap_or(BUCKETS - 1);
            bucket_top(bucket).as_secs_f64() * 1000.0
        });
        CanaryFigures {
            requests,
            errors,
            error_ratio: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p99_ms,
        }
    }
}

/// The latency bucket of `elapsed`: exact below 4 µs, then four per power of two.
fn bucket_of(elapsed: Duration) -> usize {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if us < 4 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (exp - 2)) & 3) as usize;
    ((exp - 1) * 4 + sub).min(BUCKETS - 1)
}

/// The upper end of a latency bucket.
fn bucket_top(bucket: usize) -> Duration {
    if bucket < 4 {
        return Duration::from_micros(bucket as u64 + 1);
    }
    let (exp, sub) = (bucket / 4 + 1, (bucket % 4) as u64);
    Duration::from_micros((5 + sub) << (exp - 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_bound_their_values() {
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 999, 1000, 12_345, 1_000_000] {
            let d = Duration::from_micros(us);
            let b = bucket_of(d);
            assert!(
                bucket_top(b) > d,
                "{us} µs in bucket {b} topped at {:?}",
                bucket_top(b)
            );
            if b > 0 {
                assert!(
                    bucket_top(b - 1) <= d,
                    "{us} µs belongs above bucket {}",
                    b - 1
                );
            }
        }
    }

    #[test]
    fn the_window_forgets_old_slices_and_finds_the_p99() {
        let mut w = Window::default();
        for i in 0..100 {
            w.record(
                0,
                i % 10 == 0,
                Duration::from_millis(if i == 99 { 500 } else { 1 }),
            );
        }
        let f = w.figures(0);
        assert_eq!((f.requests, f.errors), (100, 10));
        assert!((f.error_ratio - 0.1).abs() < 1e-9);
        let p99 = f.p99_ms.expect("p99");
        assert!((1.0..2.0).contains(&p99), "p99 {p99}");
        w.record(5, false, Duration::from_millis(1));
        assert_eq!(
            w.figures(SLICES as u64 + 1).requests,
            1,
            "tick 0 left the window"
        );
        assert_eq!(w.figures(SLICES as u64 * 3).requests, 0);
    }

    #[test]
    fn the_client_header_picks_the_same_side_every_time() {
        let mut picked = [0u32; 2];
        for client in 0..1000 {
            let mut headers = HeaderMap::new();
            headers.insert(CLIENT_HEADER, client.to_string().parse().expect("header"));
            let roll = fnv1a(b"abc", client.to_string().as_bytes());
            let again = fnv1a(b"abc", client.to_string().as_bytes());
            assert_eq!(roll, again);
            picked[usize::from(roll % 100 < 10)] += 1;
        }
        assert!(
            (50..150).contains(&picked[1]),
            "10 % of 1000 clients: {picked:?}"
        );
    }
}
