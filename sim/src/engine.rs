//! The discrete-event engine: client Envoys (circuit breakers, connection pool with a pending
//! queue, route and per-try timeouts, retries with a budget, outlier ejection, least-request
//! load balancing) in front of upstream hosts with finite concurrency and a FIFO queue.
//!
//! Time is in integer microseconds. Events live in a binary heap ordered by (time, sequence),
//! so runs are deterministic for a seed. Requests and attempts live in slabs with generation
//! numbers: timers are never removed, a stale timer is recognised and ignored when it fires.
//! After warm-up the hot loop does not allocate.

use crate::rng::Rng;
use crate::scenario::{Arrivals, Failure, Scenario, ServiceDist};
use meshtune_core::{Knob, Knobs, LatencyHistogram, WindowStats};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

const NONE: u32 = u32::MAX;
/// Envoy's default retry back-off base interval (25 ms) and cap (10x base).
pub const RETRY_BACKOFF_BASE_US: u64 = 25_000;
pub const RETRY_BACKOFF_MAX_US: u64 = 250_000;
/// Envoy's maximum ejection time default (300 s).
pub const MAX_EJECTION_US: u64 = 300_000_000;
/// Envoy's healthy panic threshold: below this % of healthy hosts, ejections are ignored.
pub const PANIC_THRESHOLD_PCT: u32 = 50;

/// Most fixed-delay lanes kept (delays change only when knobs change).
const MAX_LANES: usize = 12;

#[derive(Debug)]
struct Lane {
    delay: u64,
    q: VecDeque<Ev>,
}

/// Knobs converted to the engine's units; "unlimited" is `u64::MAX`, "none" is 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_connections: u64,
    pub max_pending: u64,
    pub max_requests: u64,
    /// 0 = unlimited.
    pub max_requests_per_connection: u64,
    pub max_retries: u64,
    /// 0 = no route timeout.
    pub route_timeout_us: u64,
    pub retry_attempts: u32,
    /// 0 = no per-try timeout.
    pub per_try_timeout_us: u64,
    pub consecutive_5xx: u32,
    pub base_ejection_us: u64,
    pub max_ejection_percent: f64,
}

fn count(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= 4_294_967_295.0 {
        u64::MAX
    } else {
        x.round() as u64
    }
}

impl Limits {
    /// Interprets knobs as Envoy would (values are used as given, not clamped to meshtune's
    /// bounds, so Istio's "unlimited" defaults stay unlimited).
    pub fn from_knobs(k: &Knobs) -> Self {
        let ms = |x: f64| {
            let v = count(x);
            if v == u64::MAX {
                0
            } else {
                v * 1000
            }
        };
        Limits {
            max_connections: count(k.get(Knob::MaxConnections)).max(1),
            max_pending: count(k.get(Knob::Http1MaxPendingRequests)),
            max_requests: count(k.get(Knob::Http2MaxRequests)).max(1),
            max_requests_per_connection: count(k.get(Knob::MaxRequestsPerConnection)),
            max_retries: count(k.get(Knob::MaxRetries)),
            route_timeout_us: ms(k.get(Knob::RouteTimeoutMs)),
            retry_attempts: count(k.get(Knob::RetryAttempts)).min(100) as u32,
            per_try_timeout_us: ms(k.get(Knob::PerTryTimeoutMs)),
            consecutive_5xx: count(k.get(Knob::Consecutive5xxErrors)).clamp(1, 1 << 20) as u32,
            base_ejection_us: ms(k.get(Knob::BaseEjectionTimeMs)).max(1),
            max_ejection_percent: k.get(Knob::MaxEjectionPercent).clamp(0.0, 100.0),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EvKind {
    HostDone,
    Response,
    Connected,
    RouteTimeout,
    TryTimeout,
    Retry,
    Uneject,
}

#[derive(Clone, Copy, Debug)]
struct Ev {
    t: u64,
    seq: u64,
    kind: EvKind,
    a: u32,
    gen: u32,
    /// Host (HostDone) or client (Connected) of the event.
    b: u32,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        self.t == o.t && self.seq == o.seq
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    // Min-heap on (t, seq).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AState {
    Free,
    Pending,
    Connecting,
    Sent,
}

/// Final status of a request (or result of an attempt).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Code {
    Ok,
    /// 503 from the host.
    Upstream503,
    /// 503 UO: circuit-breaker overflow.
    Overflow,
    /// 504 UT: route or per-try timeout.
    Timeout,
    /// 503 UF: connection failure.
    ConnFailure,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    gen: u32,
    live: bool,
    client: u32,
    arrival: u64,
    retries_done: u32,
    attempt: u32,
    last_host: u32,
    holds_retry: bool,
}

#[derive(Clone, Copy, Debug)]
struct Attempt {
    gen: u32,
    state: AState,
    req: u32,
    host: u32,
    conn_uses: u64,
    result: Code,
}

#[derive(Debug, Default)]
struct Client {
    /// Attempts attached to a connection (Envoy's `requests` resource, max_requests).
    attached: u64,
    pending: VecDeque<(u32, u32)>,
    pending_count: u64,
    conns: u64,
    idle: Vec<u64>,
    active_retries: u64,
    inflight: u64,
    inflight_max: u64,
    host_active: Vec<u32>,
    consecutive: Vec<u32>,
    ejected: Vec<bool>,
    eject_times: Vec<u32>,
    eject_gen: Vec<u32>,
    ejected_count: u32,
}

#[derive(Debug)]
struct Host {
    busy: u32,
    queue: VecDeque<(u32, u32)>,
    busy_area_us: f64,
    last_change: u64,
    failures: Vec<Failure>,
}

/// Counters of the window in progress.
#[derive(Debug, Default, Clone)]
struct WindowCounters {
    arrivals: u64,
    good: u64,
    requests: u64,
    ok: u64,
    e503: u64,
    uo: u64,
    ut: u64,
    uf: u64,
    retries: u64,
    inflight_area_us: f64,
}

/// What one simulated window produced.
#[derive(Debug, Clone)]
pub struct WindowResult {
    /// The same counters the filter reports (summed over client Envoys).
    pub stats: WindowStats,
    /// Client requests that arrived in the window.
    pub arrivals: u64,
    /// Requests completed in the window with 2xx within the SLO.
    pub slo_good: u64,
}

/// Totals since the engine started (for tests and benchmarks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub arrivals: u64,
    pub completed: u64,
    pub ok: u64,
    pub slo_good: u64,
    pub upstream_503: u64,
    pub overflow: u64,
    pub timeouts: u64,
    pub conn_failures: u64,
    pub retries: u64,
    pub ejections: u64,
    /// Ejections per host index.
    pub ejections_per_host: Vec<u64>,
    /// Largest number of outstanding retries seen on one client (the max_retries budget).
    pub max_active_retries: u64,
    /// Attempts started on each host (jobs queued or served).
    pub attempts_per_host: Vec<u64>,
    /// Events processed.
    pub events: u64,
}

/// The simulator for one scenario.
#[derive(Debug)]
pub struct Engine {
    now: u64,
    seq: u64,
    heap: BinaryHeap<Ev>,
    lanes: Vec<Lane>,
    rng: Rng,
    limits: Limits,
    clients: Vec<Client>,
    hosts: Vec<Host>,
    reqs: Vec<Request>,
    free_reqs: Vec<u32>,
    atts: Vec<Attempt>,
    free_atts: Vec<u32>,
    // scenario parameters
    window_us: u64,
    episode_s: f64,
    slo_us: u64,
    connect_us: u64,
    rtt_us: u64,
    concurrency: u32,
    queue_limit: u64,
    abandon_queued: bool,
    service: ServiceDist,
    lognormal_mu: f64,
    base_error_rate: f64,
    load: crate::scenario::LoadProfile,
    arrivals_kind: Arrivals,
    // arrivals
    next_arrival: u64,
    arrival_bound: f64,
    // accounting
    inflight_total: u64,
    inflight_last: u64,
    w: WindowCounters,
    /// Hosts an attempt was sent to in the window in progress (the `endpoints` feature: the
    /// filter counts the upstream hosts its requests reached, so an ejected or unused host is
    /// not seen).
    hosts_seen: Vec<bool>,
    hist: LatencyHistogram,
    totals: Totals,
    window_index: u64,
}

impl Engine {
    /// A fresh engine at time 0 with the given knobs in force.
    pub fn new(sc: &Scenario, seed: u64, knobs: &Knobs) -> Self {
        let h = sc.hosts.count.0 as usize;
        let n = sc.clients.0 as usize;
        let clients = (0..n)
            .map(|_| Client {
                host_active: vec![0; h],
                consecutive: vec![0; h],
                ejected: vec![false; h],
                eject_times: vec![0; h],
                eject_gen: vec![0; h],
                ..Default::default()
            })
            .collect();
        let hosts = (0..h)
            .map(|i| Host {
                busy: 0,
                queue: VecDeque::new(),
                busy_area_us: 0.0,
                last_change: 0,
                failures: sc
                    .hosts
                    .failures
                    .iter()
                    .filter(|f| f.host() as usize == i)
                    .copied()
                    .collect(),
            })
            .collect();
        let lognormal_mu = match sc.hosts.service {
            ServiceDist::Lognormal { mean_ms, sigma } => {
                (mean_ms.0 * 1000.0).ln() - sigma.0 * sigma.0 / 2.0
            }
            _ => 0.0,
        };
        Engine {
            now: 0,
            seq: 0,
            heap: BinaryHeap::with_capacity(1024),
            lanes: Vec::new(),
            rng: Rng::new(seed),
            limits: Limits::from_knobs(knobs),
            clients,
            hosts,
            reqs: Vec::with_capacity(1024),
            free_reqs: Vec::with_capacity(1024),
            atts: Vec::with_capacity(1024),
            free_atts: Vec::with_capacity(1024),
            window_us: (sc.window_s.0 * 1e6).round().max(1.0) as u64,
            episode_s: sc.episode_s(),
            slo_us: (sc.slo_ms.0 * 1000.0).round() as u64,
            connect_us: (sc.connect_ms.0 * 1000.0).round() as u64,
            rtt_us: (sc.rtt_ms.0 * 1000.0).round() as u64,
            concurrency: sc.hosts.concurrency.0,
            queue_limit: sc.hosts.queue_limit.map(u64::from).unwrap_or(u64::MAX),
            abandon_queued: sc.hosts.abandon_queued,
            service: sc.hosts.service.clone(),
            lognormal_mu,
            base_error_rate: sc.hosts.error_rate.0,
            load: sc.load,
            arrivals_kind: sc.arrivals,
            next_arrival: u64::MAX,
            arrival_bound: 0.0,
            inflight_total: 0,
            inflight_last: 0,
            w: WindowCounters::default(),
            hosts_seen: vec![false; h],
            hist: LatencyHistogram::new(),
            totals: Totals {
                ejections_per_host: vec![0; h],
                attempts_per_host: vec![0; h],
                ..Default::default()
            },
            window_index: 0,
        }
    }

    /// Changes the knobs in force from now on (existing requests keep their timers; excess
    /// idle connections are closed).
    pub fn set_knobs(&mut self, knobs: &Knobs) {
        self.limits = Limits::from_knobs(knobs);
        for c in &mut self.clients {
            while c.conns > self.limits.max_connections && !c.idle.is_empty() {
                c.idle.pop();
                c.conns -= 1;
            }
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn now_us(&self) -> u64 {
        self.now
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Time-averaged busy servers per host since the start, divided by concurrency.
    pub fn host_utilisation(&self) -> Vec<f64> {
        let t = self.now.max(1) as f64;
        self.hosts
            .iter()
            .map(|h| {
                let area = h.busy_area_us + h.busy as f64 * (self.now - h.last_change) as f64;
                area / t / self.concurrency as f64
            })
            .collect()
    }

    // ---------------------------------------------------------------- windows

    /// Runs one window and returns its counters.
    pub fn run_window(&mut self) -> WindowResult {
        let start = self.now;
        let end = start + self.window_us;
        for c in &mut self.clients {
            c.inflight_max = c.inflight;
        }
        self.w = WindowCounters::default();
        self.hosts_seen.fill(false);
        self.hist.clear();
        self.inflight_last = start;
        self.start_window_arrivals(start, end);
        loop {
            let (th, _, src) = self.peek_event();
            let ta = self.next_arrival;
            if ta <= th {
                if ta >= end {
                    break;
                }
                self.now = ta;
                self.arrival(end);
            } else {
                if th >= end {
                    break;
                }
                let ev = if src == usize::MAX {
                    self.heap.pop()
                } else {
                    self.lanes[src].q.pop_front()
                }
                .expect("peeked event");
                self.now = ev.t;
                self.dispatch(ev);
            }
            self.totals.events += 1;
        }
        self.now = end;
        self.inflight_mark();
        self.window_index += 1;
        self.window_result()
    }

    fn window_result(&self) -> WindowResult {
        let w = &self.w;
        let dur = self.window_us as f64 / 1e6;
        let stats = WindowStats {
            duration_s: dur,
            requests: w.requests,
            status_2xx: w.ok,
            status_4xx: 0,
            status_5xx: w.e503 + w.uo + w.ut + w.uf,
            status_other: 0,
            flag_uo: w.uo,
            flag_ut: w.ut,
            flag_conn_failure: w.uf,
            retries: w.retries,
            shed: 0,
            inflight_max: self.clients.iter().map(|c| c.inflight_max).sum(),
            inflight_avg: w.inflight_area_us / self.window_us as f64,
            request_bytes: 0,
            response_bytes: 0,
            http2_requests: 0,
            endpoints: u32::try_from(self.hosts_seen.iter().filter(|s| **s).count())
                .unwrap_or(u32::MAX),
            unmeasured_requests: 0,
            latency: self.hist.clone(),
        };
        WindowResult {
            stats,
            arrivals: w.arrivals,
            slo_good: w.good,
        }
    }

    // ---------------------------------------------------------------- arrivals

    /// Bounds the arrival rate over [start, end) (for thinning) and draws the first arrival.
    fn start_window_arrivals(&mut self, start: u64, end: u64) {
        let (s, e) = (start as f64 / 1e6, end as f64 / 1e6);
        let mut bound: f64 = 0.0;
        const SAMPLES: usize = 256;
        for i in 0..=SAMPLES {
            let t = s + (e - s) * i as f64 / SAMPLES as f64;
            bound = bound.max(self.load.rate(t, self.episode_s));
        }
        // Step and burst edges fall between samples: check just after each sample too.
        for i in 0..SAMPLES {
            let t = s + (e - s) * (i as f64 + 0.5) / SAMPLES as f64;
            bound = bound.max(self.load.rate(t, self.episode_s));
        }
        self.arrival_bound = bound;
        if self.next_arrival < start || self.next_arrival == u64::MAX || bound <= 0.0 {
            self.next_arrival = start;
            self.draw_next_arrival(end);
        } else if self.arrivals_kind == Arrivals::Poisson {
            // Memoryless: redraw from the window start under the new bound.
            self.next_arrival = start;
            self.draw_next_arrival(end);
        }
    }

    fn draw_next_arrival(&mut self, end: u64) {
        let from = self.next_arrival;
        match self.arrivals_kind {
            Arrivals::Poisson => {
                if self.arrival_bound <= 0.0 {
                    self.next_arrival = u64::MAX;
                    return;
                }
                let dt = self.rng.exp(1e6 / self.arrival_bound);
                self.next_arrival = from.saturating_add(dt.round().max(1.0) as u64);
            }
            Arrivals::Uniform => {
                let rate = self.load.rate(from as f64 / 1e6, self.episode_s);
                if rate <= 0.0 {
                    self.next_arrival = end;
                    return;
                }
                self.next_arrival = from + (1e6 / rate).round().max(1.0) as u64;
            }
        }
    }

    fn arrival(&mut self, end: u64) {
        let t = self.now;
        self.draw_next_arrival(end);
        let rate = self.load.rate(t as f64 / 1e6, self.episode_s);
        match self.arrivals_kind {
            Arrivals::Poisson => {
                if rate < self.arrival_bound && self.rng.uniform() * self.arrival_bound >= rate {
                    return; // thinned
                }
            }
            Arrivals::Uniform => {
                if rate <= 0.0 {
                    return; // placeholder at a window start while the load is off
                }
            }
        }
        self.w.arrivals += 1;
        self.totals.arrivals += 1;
        let n = self.clients.len() as u32;
        let client = if n == 1 { 0 } else { self.rng.below(n) };
        let r = self.alloc_req(client);
        self.inflight_mark();
        self.inflight_total += 1;
        let c = &mut self.clients[client as usize];
        c.inflight += 1;
        c.inflight_max = c.inflight_max.max(c.inflight);
        if self.limits.route_timeout_us > 0 {
            let gen = self.reqs[r as usize].gen;
            self.schedule_fixed(
                self.limits.route_timeout_us,
                EvKind::RouteTimeout,
                r,
                gen,
                0,
            );
        }
        if !self.start_attempt(r) {
            self.finish(r, Code::Overflow);
        }
    }

    // ---------------------------------------------------------------- slabs & events

    #[inline]
    fn schedule(&mut self, t: u64, kind: EvKind, a: u32, gen: u32) {
        self.schedule_b(t, kind, a, gen, 0);
    }

    /// Schedules an event a fixed delay from now. Events with the same delay are scheduled in
    /// time order, so each delay gets a FIFO lane instead of the heap (timeouts, connects and
    /// round trips are the bulk of events; this keeps the heap small).
    #[inline]
    fn schedule_fixed(&mut self, delay: u64, kind: EvKind, a: u32, gen: u32, b: u32) {
        self.seq += 1;
        let ev = Ev {
            t: self.now + delay,
            seq: self.seq,
            kind,
            a,
            gen,
            b,
        };
        if let Some(lane) = self.lanes.iter_mut().find(|l| l.delay == delay) {
            lane.q.push_back(ev);
            return;
        }
        if self.lanes.len() >= MAX_LANES {
            self.lanes.retain(|l| !l.q.is_empty());
        }
        if self.lanes.len() >= MAX_LANES {
            self.heap.push(ev);
            return;
        }
        let mut q = VecDeque::with_capacity(1024);
        q.push_back(ev);
        self.lanes.push(Lane { delay, q });
    }

    /// The earliest pending event: (time, seq, source) where source is the lane index or
    /// `usize::MAX` for the heap.
    #[inline]
    fn peek_event(&self) -> (u64, u64, usize) {
        let mut best = match self.heap.peek() {
            Some(e) => (e.t, e.seq, usize::MAX),
            None => (u64::MAX, u64::MAX, usize::MAX),
        };
        for (i, l) in self.lanes.iter().enumerate() {
            if let Some(e) = l.q.front() {
                if (e.t, e.seq) < (best.0, best.1) {
                    best = (e.t, e.seq, i);
                }
            }
        }
        best
    }

    #[inline]
    fn schedule_b(&mut self, t: u64, kind: EvKind, a: u32, gen: u32, b: u32) {
        self.seq += 1;
        self.heap.push(Ev {
            t,
            seq: self.seq,
            kind,
            a,
            gen,
            b,
        });
    }

    fn alloc_req(&mut self, client: u32) -> u32 {
        let req = Request {
            gen: 0,
            live: true,
            client,
            arrival: self.now,
            retries_done: 0,
            attempt: NONE,
            last_host: NONE,
            holds_retry: false,
        };
        if let Some(i) = self.free_reqs.pop() {
            let gen = self.reqs[i as usize].gen;
            self.reqs[i as usize] = Request { gen, ..req };
            i
        } else {
            self.reqs.push(req);
            (self.reqs.len() - 1) as u32
        }
    }

    fn free_req(&mut self, r: u32) {
        let q = &mut self.reqs[r as usize];
        q.live = false;
        q.gen = q.gen.wrapping_add(1);
        self.free_reqs.push(r);
    }

    fn alloc_att(&mut self, req: u32, host: u32) -> u32 {
        let a = Attempt {
            gen: 0,
            state: AState::Free,
            req,
            host,
            conn_uses: 0,
            result: Code::Ok,
        };
        if let Some(i) = self.free_atts.pop() {
            let gen = self.atts[i as usize].gen;
            self.atts[i as usize] = Attempt { gen, ..a };
            i
        } else {
            self.atts.push(a);
            (self.atts.len() - 1) as u32
        }
    }

    /// Frees an attempt and its client-side accounting.
    fn release_att(&mut self, a: u32) {
        let at = self.atts[a as usize];
        let c = &mut self.clients[self.reqs[at.req as usize].client as usize];
        if at.state == AState::Sent {
            c.attached -= 1;
        }
        c.host_active[at.host as usize] -= 1;
        let slot = &mut self.atts[a as usize];
        slot.state = AState::Free;
        slot.gen = slot.gen.wrapping_add(1);
        self.free_atts.push(a);
        self.reqs[at.req as usize].attempt = NONE;
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev.kind {
            EvKind::HostDone => self.host_done(ev.b, ev.a, ev.gen),
            EvKind::Response => {
                let at = self.atts[ev.a as usize];
                if at.gen == ev.gen && at.state == AState::Sent {
                    self.on_response(ev.a);
                }
            }
            EvKind::Connected => self.connected(ev.b as usize, ev.a, ev.gen),
            EvKind::RouteTimeout => self.route_timeout(ev.a, ev.gen),
            EvKind::TryTimeout => self.try_timeout(ev.a, ev.gen),
            EvKind::Retry => {
                let q = self.reqs[ev.a as usize];
                if q.live && q.gen == ev.gen && !self.start_attempt(ev.a) {
                    self.finish(ev.a, Code::Overflow);
                }
            }
            EvKind::Uneject => {
                let client = (ev.a >> 16) as usize;
                let host = (ev.a & 0xFFFF) as usize;
                let c = &mut self.clients[client];
                if c.eject_gen[host] == ev.gen && c.ejected[host] {
                    c.ejected[host] = false;
                    c.ejected_count -= 1;
                    c.consecutive[host] = 0;
                }
            }
        }
    }

    // ---------------------------------------------------------------- client side

    /// Least-request (power of two choices) over non-ejected hosts, avoiding `exclude`
    /// (Istio's default retry host predicate `previous_hosts`) when possible.
    fn pick_host(&mut self, client: u32, exclude: u32) -> u32 {
        let n = self.hosts.len() as u32;
        if n == 1 {
            return 0;
        }
        let c = &self.clients[client as usize];
        let healthy = n - c.ejected_count;
        let honour_ejection = healthy * 100 >= PANIC_THRESHOLD_PCT * n && healthy > 0;
        let pick = |rng: &mut Rng| -> u32 {
            let mut h = rng.below(n);
            for _ in 0..16 {
                let ok = (!honour_ejection || !c.ejected[h as usize]) && h != exclude;
                if ok {
                    return h;
                }
                h = rng.below(n);
            }
            h
        };
        let a = pick(&mut self.rng);
        let b = pick(&mut self.rng);
        if c.host_active[b as usize] < c.host_active[a as usize] {
            b
        } else {
            a
        }
    }

    /// Starts an attempt for request `r`; false = circuit-breaker overflow (no connection
    /// and the pending queue full, or an idle connection but max_requests reached).
    fn start_attempt(&mut self, r: u32) -> bool {
        let q = self.reqs[r as usize];
        let ci = q.client as usize;
        let l = self.limits;
        let c = &self.clients[ci];
        let has_idle = !c.idle.is_empty();
        let can_connect = c.conns < l.max_connections;
        let can_pend = c.pending_count < l.max_pending;
        if has_idle && c.attached >= l.max_requests {
            return false;
        }
        if !has_idle && !can_connect && !can_pend {
            return false;
        }
        let host = self.pick_host(q.client, q.last_host);
        let a = self.alloc_att(r, host);
        self.clients[ci].host_active[host as usize] += 1;
        let rq = &mut self.reqs[r as usize];
        rq.attempt = a;
        rq.last_host = host;
        if has_idle {
            let uses = self.clients[ci].idle.pop().unwrap();
            self.atts[a as usize].conn_uses = uses;
            self.send(a);
        } else if can_connect {
            self.clients[ci].conns += 1;
            self.open_connection(a);
        } else {
            let gen = self.atts[a as usize].gen;
            self.atts[a as usize].state = AState::Pending;
            let c = &mut self.clients[ci];
            c.pending.push_back((a, gen));
            c.pending_count += 1;
        }
        true
    }

    /// A new connection (already counted) for attempt `a`.
    fn open_connection(&mut self, a: u32) {
        self.atts[a as usize].conn_uses = 0;
        let client = self.reqs[self.atts[a as usize].req as usize].client;
        if self.connect_us == 0 {
            self.atts[a as usize].state = AState::Connecting;
            self.connected(client as usize, a, self.atts[a as usize].gen);
        } else {
            self.atts[a as usize].state = AState::Connecting;
            let gen = self.atts[a as usize].gen;
            self.schedule_fixed(self.connect_us, EvKind::Connected, a, gen, client);
        }
    }

    fn connected(&mut self, ci: usize, a: u32, gen: u32) {
        let at = self.atts[a as usize];
        if at.gen == gen && at.state == AState::Connecting {
            if self.clients[ci].attached >= self.limits.max_requests {
                // Envoy checks max_requests when the stream attaches: overflow.
                let r = at.req;
                self.release_att(a);
                self.connection_free(ci, 0);
                self.finish(r, Code::Overflow);
            } else {
                self.send(a);
            }
        } else {
            // The attempt gave up while connecting: the new connection becomes free.
            self.connection_free(ci, 0);
        }
    }

    /// Pops the next live pending attempt of a client.
    fn pop_pending(&mut self, ci: usize) -> Option<u32> {
        while let Some((a, gen)) = self.clients[ci].pending.pop_front() {
            let at = self.atts[a as usize];
            if at.gen == gen && at.state == AState::Pending {
                self.clients[ci].pending_count -= 1;
                return Some(a);
            }
        }
        None
    }

    /// A connection with `uses` completed requests became free on client `ci`.
    fn connection_free(&mut self, ci: usize, uses: u64) {
        let l = self.limits;
        let recycle = l.max_requests_per_connection > 0 && uses >= l.max_requests_per_connection;
        if recycle || self.clients[ci].conns > l.max_connections {
            self.connection_closed(ci);
            return;
        }
        while let Some(p) = self.pop_pending(ci) {
            if self.clients[ci].attached >= l.max_requests {
                // Envoy checks max_requests when a pending stream attaches: overflow.
                let r = self.atts[p as usize].req;
                self.release_att(p);
                self.finish(r, Code::Overflow);
                continue;
            }
            self.atts[p as usize].conn_uses = uses;
            self.send(p);
            return;
        }
        self.clients[ci].idle.push(uses);
    }

    /// A connection of client `ci` closed: pending attempts may open a new one.
    fn connection_closed(&mut self, ci: usize) {
        self.clients[ci].conns -= 1;
        while self.clients[ci].conns < self.limits.max_connections {
            match self.pop_pending(ci) {
                Some(p) => {
                    self.clients[ci].conns += 1;
                    self.open_connection(p);
                }
                None => break,
            }
        }
    }

    /// The attempt goes on the wire.
    fn send(&mut self, a: u32) {
        let at = &mut self.atts[a as usize];
        at.state = AState::Sent;
        let gen = at.gen;
        let host = at.host;
        let ci = self.reqs[at.req as usize].client as usize;
        self.clients[ci].attached += 1;
        if self.limits.per_try_timeout_us > 0 {
            self.schedule_fixed(
                self.limits.per_try_timeout_us,
                EvKind::TryTimeout,
                a,
                gen,
                0,
            );
        }
        self.totals.attempts_per_host[host as usize] += 1;
        self.hosts_seen[host as usize] = true;
        let (_, _, down) = self.host_condition(host, self.now);
        if down {
            self.atts[a as usize].result = Code::ConnFailure;
            self.schedule_fixed(self.connect_us.max(1), EvKind::Response, a, gen, 0);
            return;
        }
        let h = &mut self.hosts[host as usize];
        if h.busy < self.concurrency {
            self.start_job(host, a, gen);
        } else if (h.queue.len() as u64) < self.queue_limit {
            h.queue.push_back((a, gen));
        } else {
            self.atts[a as usize].result = Code::Upstream503;
            self.schedule_fixed(self.rtt_us.max(1), EvKind::Response, a, gen, 0);
        }
    }

    /// (slow factor, error rate, down) of a host at time t.
    #[inline]
    fn host_condition(&self, host: u32, t: u64) -> (f64, f64, bool) {
        let mut slow = 1.0;
        let mut err = self.base_error_rate;
        let mut down = false;
        let h = &self.hosts[host as usize];
        if h.failures.is_empty() {
            return (slow, err, down);
        }
        let ts = t as f64 / 1e6;
        for f in &h.failures {
            let (from, until) = f.interval_s();
            if ts >= from && ts < until {
                match *f {
                    Failure::Slow { factor, .. } => slow *= factor.0,
                    Failure::Errors { error_rate, .. } => err = error_rate.0,
                    Failure::Down { .. } => down = true,
                }
            }
        }
        (slow, err, down)
    }

    // ---------------------------------------------------------------- host side

    fn sample_service_us(&mut self) -> f64 {
        match self.service {
            ServiceDist::Constant { ms } => ms.0 * 1000.0,
            ServiceDist::Exponential { mean_ms } => self.rng.exp(mean_ms.0 * 1000.0),
            ServiceDist::Lognormal { sigma, .. } => {
                (self.lognormal_mu + sigma.0 * self.rng.normal()).exp()
            }
            ServiceDist::Bimodal {
                fast_ms,
                slow_ms,
                slow_fraction,
            } => {
                let m = if self.rng.chance(slow_fraction.0) {
                    slow_ms.0
                } else {
                    fast_ms.0
                };
                self.rng.exp(m * 1000.0)
            }
        }
    }

    fn host_busy_mark(&mut self, host: u32) {
        let h = &mut self.hosts[host as usize];
        h.busy_area_us += h.busy as f64 * (self.now - h.last_change) as f64;
        h.last_change = self.now;
    }

    fn start_job(&mut self, host: u32, a: u32, gen: u32) {
        self.host_busy_mark(host);
        self.hosts[host as usize].busy += 1;
        let (slow, _, _) = self.host_condition(host, self.now);
        let s = self.sample_service_us() * slow;
        let done = self.now + (s.round() as u64).max(1);
        self.schedule_b(done, EvKind::HostDone, a, gen, host);
    }

    fn host_done(&mut self, host: u32, a: u32, gen: u32) {
        self.host_busy_mark(host);
        self.hosts[host as usize].busy -= 1;
        // Next job from the host queue (skipping abandoned ones if the host notices resets).
        while let Some((na, ngen)) = self.hosts[host as usize].queue.pop_front() {
            let live = {
                let at = self.atts[na as usize];
                at.gen == ngen && at.state == AState::Sent
            };
            if live || !self.abandon_queued {
                self.start_job(host, na, ngen);
                break;
            }
        }
        let at = self.atts[a as usize];
        if at.gen != gen || at.state != AState::Sent {
            return; // orphan: the client already gave up on this attempt
        }
        let (_, err, _) = self.host_condition(host, self.now);
        self.atts[a as usize].result = if self.rng.chance(err) {
            Code::Upstream503
        } else {
            Code::Ok
        };
        if self.rtt_us == 0 {
            self.on_response(a);
        } else {
            self.schedule_fixed(self.rtt_us, EvKind::Response, a, gen, 0);
        }
    }

    // ---------------------------------------------------------------- outcomes

    /// Outlier detection bookkeeping for one attempt result on (client, host).
    fn outlier_result(&mut self, ci: usize, host: u32, failed: bool) {
        let h = host as usize;
        let l = self.limits;
        let nhosts = self.hosts.len() as f64;
        let c = &mut self.clients[ci];
        if !failed {
            c.consecutive[h] = 0;
            return;
        }
        c.consecutive[h] += 1;
        if c.consecutive[h] < l.consecutive_5xx || c.ejected[h] {
            return;
        }
        c.consecutive[h] = 0;
        // Envoy: eject only if (ejected + 1) / hosts <= max_ejection_percent. Its "eject at
        // least one host anyway" is the `always_eject_one_host` option, off by default and not
        // set by Istio or meshtune: with 3 hosts and Istio's 10 % nothing is ejected.
        let pct_after = 100.0 * (c.ejected_count + 1) as f64 / nhosts;
        if pct_after > l.max_ejection_percent {
            return;
        }
        c.ejected[h] = true;
        c.ejected_count += 1;
        c.eject_times[h] += 1;
        c.eject_gen[h] = c.eject_gen[h].wrapping_add(1);
        let dur = (l.base_ejection_us.saturating_mul(c.eject_times[h] as u64))
            .min(MAX_EJECTION_US.max(l.base_ejection_us));
        let gen = c.eject_gen[h];
        self.totals.ejections += 1;
        self.totals.ejections_per_host[h] += 1;
        self.schedule(
            self.now + dur,
            EvKind::Uneject,
            ((ci as u32) << 16) | host,
            gen,
        );
    }

    /// Releases the retry budget a request holds.
    fn drop_retry_hold(&mut self, r: u32) {
        let q = &mut self.reqs[r as usize];
        if q.holds_retry {
            q.holds_retry = false;
            self.clients[q.client as usize].active_retries -= 1;
        }
    }

    /// An attempt failed with `code`: retry if allowed, else the request fails.
    fn retry_or_fail(&mut self, r: u32, code: Code) {
        let q = self.reqs[r as usize];
        let ci = q.client as usize;
        let l = self.limits;
        if q.retries_done < l.retry_attempts && self.clients[ci].active_retries < l.max_retries {
            let c = &mut self.clients[ci];
            c.active_retries += 1;
            self.w.retries += 1;
            self.totals.retries += 1;
            self.totals.max_active_retries = self.totals.max_active_retries.max(c.active_retries);
            let rq = &mut self.reqs[r as usize];
            rq.retries_done += 1;
            rq.holds_retry = true;
            // Envoy: fully jittered exponential back-off, 25 ms base, capped at 250 ms.
            let n = rq.retries_done.min(20);
            let upper = (RETRY_BACKOFF_BASE_US * ((1u64 << n) - 1)).min(RETRY_BACKOFF_MAX_US);
            let backoff = (self.rng.uniform() * upper as f64) as u64;
            let gen = rq.gen;
            self.schedule(self.now + backoff.max(1), EvKind::Retry, r, gen);
        } else {
            self.finish(r, code);
        }
    }

    fn on_response(&mut self, a: u32) {
        let at = self.atts[a as usize];
        let r = at.req;
        let ci = self.reqs[r as usize].client as usize;
        self.release_att(a);
        if at.result == Code::ConnFailure {
            self.connection_closed(ci);
        } else {
            self.connection_free(ci, at.conn_uses + 1);
        }
        let failed = at.result != Code::Ok;
        self.outlier_result(ci, at.host, failed);
        self.drop_retry_hold(r);
        if failed {
            self.retry_or_fail(r, at.result);
        } else {
            self.finish(r, Code::Ok);
        }
    }

    fn try_timeout(&mut self, a: u32, gen: u32) {
        let at = self.atts[a as usize];
        if at.gen != gen || at.state != AState::Sent {
            return;
        }
        let r = at.req;
        let ci = self.reqs[r as usize].client as usize;
        // Envoy resets the upstream stream; an HTTP/1 connection is closed.
        self.release_att(a);
        self.connection_closed(ci);
        self.outlier_result(ci, at.host, true);
        self.drop_retry_hold(r);
        self.retry_or_fail(r, Code::Timeout);
    }

    fn route_timeout(&mut self, r: u32, gen: u32) {
        let q = self.reqs[r as usize];
        if !q.live || q.gen != gen {
            return;
        }
        let ci = q.client as usize;
        if q.attempt != NONE {
            let a = q.attempt;
            let at = self.atts[a as usize];
            match at.state {
                AState::Pending => {
                    self.clients[ci].pending_count -= 1;
                    self.release_att(a);
                }
                AState::Connecting => {
                    // The connection keeps opening and becomes free when connected.
                    self.release_att(a);
                }
                AState::Sent => {
                    self.release_att(a);
                    self.connection_closed(ci);
                    self.outlier_result(ci, at.host, true);
                }
                AState::Free => {}
            }
        }
        self.finish(r, Code::Timeout);
    }

    /// The client request completes with `code` now.
    fn finish(&mut self, r: u32, code: Code) {
        self.drop_retry_hold(r);
        let q = self.reqs[r as usize];
        let lat = self.now - q.arrival;
        self.inflight_mark();
        self.inflight_total -= 1;
        self.clients[q.client as usize].inflight -= 1;
        let w = &mut self.w;
        let t = &mut self.totals;
        w.requests += 1;
        t.completed += 1;
        match code {
            Code::Ok => {
                w.ok += 1;
                t.ok += 1;
                if lat <= self.slo_us {
                    w.good += 1;
                    t.slo_good += 1;
                }
            }
            Code::Upstream503 => {
                w.e503 += 1;
                t.upstream_503 += 1;
            }
            Code::Overflow => {
                w.uo += 1;
                t.overflow += 1;
            }
            Code::Timeout => {
                w.ut += 1;
                t.timeouts += 1;
            }
            Code::ConnFailure => {
                w.uf += 1;
                t.conn_failures += 1;
            }
        }
        self.hist.record(lat);
        self.free_req(r);
    }

    fn inflight_mark(&mut self) {
        self.w.inflight_area_us +=
            self.inflight_total as f64 * (self.now - self.inflight_last) as f64;
        self.inflight_last = self.now;
    }
}
