//! Admission: which waiting request reaches Ollama next. Ollama serves OLLAMA_NUM_PARALLEL
//! requests at a time and queues the rest first come, first served (server/sched.go,
//! OLLAMA_MAX_QUEUE), so a batch client with 50 requests in flight makes a person at a chat UI
//! wait for all of them. With `[[guard.class]]` written, the guard holds requests itself and
//! lets at most `parallel` reach Ollama; when a slot frees, the next request is chosen by the
//! class's priority, then its fair share (start-time fair queuing: each admission advances the
//! class's virtual time by 1/share, and the class furthest behind goes first), then arrival.
//!
//! Bounded: a class's queue has a maximum (429 past it) and a request waits at most
//! `max_wait` (503); a client that goes away while waiting leaves the queue at once (its future
//! is dropped, which removes its place). A slot is held by the response body until the stream
//! ends or the client leaves: an admitted stream is never slowed by the queue.
//!
//! No classes: admission is off and the guard forwards as before (Ollama's own queue).

use crate::conf::config::{ClassSettings, GuardSettings, DEFAULT_CLASS};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How a request was placed in a class, for the debug log and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who<'a> {
    pub client: std::net::IpAddr,
    /// The name of the valid key the request presented, if any.
    pub key: Option<&'a str>,
    /// The value of `[guard] class_header`, if the request carries it.
    pub header: Option<&'a str>,
}

/// The class a request belongs to: the one its `class_header` names, else the first whose
/// `keys` hold its key, else the first whose `from` holds its address, else "default".
pub fn classify<'s>(settings: &'s GuardSettings, who: &Who<'_>) -> &'s str {
    let classes = &settings.classes;
    if let Some(h) = who.header.map(str::trim) {
        if let Some(c) = classes.iter().find(|c| c.name.eq_ignore_ascii_case(h)) {
            return &c.name;
        }
    }
    if let Some(k) = who.key {
        if let Some(c) = classes.iter().find(|c| c.keys.iter().any(|n| n == k)) {
            return &c.name;
        }
    }
    let ip = match who.client {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(who.client, std::net::IpAddr::V4),
        v4 => v4,
    };
    if let Some(c) = classes.iter().find(|c| c.from.iter().any(|n| n.contains(&ip))) {
        return &c.name;
    }
    DEFAULT_CLASS
}

/// Ollama's parallel slots: `[guard] parallel`, else OLLAMA_NUM_PARALLEL (ollama.env reaches
/// jetson-llmd's units too), else Ollama's default of 1 (envconfig/config.go NumParallel).
pub fn slots(settings: &GuardSettings, env: Option<&str>) -> usize {
    if settings.parallel > 0 {
        return settings.parallel as usize;
    }
    env.and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| (1..=64).contains(n)).unwrap_or(1)
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The class's queue is full (429).
    QueueFull { class: String, max: u32 },
    /// No slot within the class's max_wait (503).
    Waited { class: String, waited: Duration },
    /// Waiting requests already hold their share of the body budget (429).
    BodiesFull { class: String, max_mib: usize },
}

/// Counters and gauges of one class, for /metrics, `status` and the board endpoint.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ClassStats {
    pub class: String,
    pub priority: i32,
    pub queued: usize,
    pub running: usize,
    pub admitted: u64,
    pub refused_full: u64,
    pub refused_wait: u64,
    /// Left the queue because the client went away.
    pub left: u64,
    /// Seconds waited by admitted requests, summed (with `admitted`, the mean wait).
    pub wait_seconds: f64,
    /// The longest wait of an admitted request, in seconds.
    pub max_wait_seconds: f64,
}

struct Waiter {
    id: u64,
    since: Instant,
    bytes: usize,
    tx: oneshot::Sender<Slot>,
}

struct Class {
    cfg: ClassSettings,
    queue: VecDeque<Waiter>,
    /// Start-time fair queuing's virtual time: advanced 1/share per admission.
    vtime: f64,
}

#[derive(Default)]
struct Inner {
    /// Off when no classes are written.
    on: bool,
    slots: usize,
    classes: Vec<Class>,
    next_id: u64,
    /// By class name; kept across reloads.
    stats: BTreeMap<String, ClassStats>,
    /// The slots in use, by id, with the class each is counted under: the slots busy and each
    /// class's running count are read from here. A reload that removes a class moves its slots
    /// to "default", and a slot is given back where it is counted.
    charged: BTreeMap<u64, String>,
    /// Per priority, the virtual start time of the last admission (start-time fair queuing's
    /// system virtual time): a class that was idle starts from here, not from where it left.
    vclock: BTreeMap<i32, f64>,
    /// Bytes of request bodies held by waiting requests, and the most they may hold: the rest of
    /// the guard's body budget stays free for requests that go on at once (a chat must not be
    /// refused for a budget that queued batch bodies took).
    queued_bytes: usize,
    queued_bytes_max: usize,
}

/// The admission queue, shared by all connections.
#[derive(Default)]
pub struct Admission {
    inner: Mutex<Inner>,
}

/// A place in Ollama: given back (and the next request admitted) when dropped.
pub struct Slot {
    adm: Option<Arc<Admission>>,
    id: u64,
    class: String,
    /// How long the request waited for it.
    pub waited: Duration,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("class", &self.class).field("waited", &self.waited).finish()
    }
}

impl Slot {
    pub fn class(&self) -> &str {
        &self.class
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(adm) = self.adm.take() {
            adm.release(self.id);
        }
    }
}

impl Inner {
    fn busy(&self) -> usize {
        self.charged.len()
    }

    /// Requests of the class named in Ollama now.
    fn running(&self, class: &str) -> usize {
        self.charged.values().filter(|c| *c == class).count()
    }

    fn limit(&self, c: &Class) -> usize {
        match c.cfg.limit {
            0 => self.slots,
            n => n as usize,
        }
    }

    /// The class whose head goes next: highest priority, then furthest behind its share, then
    /// the earliest arrival; only classes with a slot free under their limit.
    fn pick(&self) -> Option<usize> {
        if self.busy() >= self.slots {
            return None;
        }
        use std::cmp::Reverse;
        self.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| self.running(&c.cfg.name) < self.limit(c))
            .filter_map(|(i, c)| c.queue.front().map(|head| (i, (c.cfg.priority, Reverse(ordered(c.vtime)), Reverse(head.id)))))
            .max_by_key(|(_, key)| *key)
            .map(|(i, _)| i)
    }

    /// A class that starts waiting again does not bank the time it was idle: its virtual time
    /// is brought up to its priority's virtual clock (the start of the last admission there).
    fn catch_up(&mut self, i: usize) {
        let p = self.classes[i].cfg.priority;
        let clock = self.vclock.get(&p).copied().unwrap_or(0.0);
        if self.classes[i].vtime < clock {
            self.classes[i].vtime = clock;
        }
    }

    fn admit_one(&mut self, i: usize, since: Instant, adm: &Arc<Admission>) -> Slot {
        let now = Instant::now();
        let c = &mut self.classes[i];
        let start = c.vtime;
        c.vtime += 1.0 / f64::from(c.cfg.share.max(1));
        let (name, p) = (c.cfg.name.clone(), c.cfg.priority);
        let clock = self.vclock.entry(p).or_insert(0.0);
        *clock = clock.max(start);
        self.next_id += 1;
        let id = self.next_id;
        self.charged.insert(id, name.clone());
        let waited = now.saturating_duration_since(since);
        let s = self.stats.entry(name.clone()).or_default();
        s.admitted += 1;
        s.wait_seconds += waited.as_secs_f64();
        s.max_wait_seconds = s.max_wait_seconds.max(waited.as_secs_f64());
        Slot { adm: Some(adm.clone()), id, class: name, waited }
    }

    /// Hands free slots to waiting requests, as many as fit.
    fn dispatch(&mut self, adm: &Arc<Admission>) {
        while let Some(i) = self.pick() {
            let Some(w) = self.classes[i].queue.pop_front() else { break };
            self.queued_bytes = self.queued_bytes.saturating_sub(w.bytes);
            let slot = self.admit_one(i, w.since, adm);
            if let Err(mut slot) = w.tx.send(slot) {
                // The client left between its wake-up and now: undo, without Slot's drop (which
                // would take this lock again).
                slot.adm = None;
                self.undo(slot.id);
                if let Some(s) = self.stats.get_mut(&slot.class) {
                    s.admitted -= 1;
                    s.left += 1;
                }
            }
        }
    }

    fn undo(&mut self, slot: u64) {
        self.charged.remove(&slot);
    }
}

/// Virtual time as an orderable integer, rounded to 1e-9 so that three thirds equal one (a
/// tie is then decided by arrival, not by the last bit of a float sum).
fn ordered(f: f64) -> u64 {
    (f.max(0.0) * 1e9).round() as u64
}

impl Admission {
    /// `queued_bytes_max`: the most bytes of bodies waiting requests may hold together (the
    /// guard gives them half of its body budget).
    pub fn new(settings: &GuardSettings, env_parallel: Option<&str>, queued_bytes_max: usize) -> Arc<Admission> {
        let a = Arc::new(Admission::default());
        if let Ok(mut g) = a.inner.lock() {
            g.queued_bytes_max = queued_bytes_max;
        }
        a.configure(settings, env_parallel);
        a
    }

    /// Takes a new `[guard]` (SIGHUP): classes by name keep their queue, their running requests
    /// and their place; the waiters and running requests of a class no longer written move to
    /// "default".
    pub fn configure(self: &Arc<Self>, settings: &GuardSettings, env_parallel: Option<&str>) {
        let Ok(mut g) = self.inner.lock() else { return };
        let mut old: Vec<Class> = std::mem::take(&mut g.classes);
        let mut cfgs = settings.classes.clone();
        if !cfgs.iter().any(|c| c.name == DEFAULT_CLASS) {
            cfgs.push(ClassSettings::fallback());
        }
        let mut classes: Vec<Class> = cfgs
            .into_iter()
            .map(|cfg| match old.iter().position(|o| o.cfg.name == cfg.name) {
                Some(p) => {
                    let o = old.swap_remove(p);
                    Class { cfg, queue: o.queue, vtime: o.vtime }
                }
                None => Class { cfg, queue: VecDeque::new(), vtime: 0.0 },
            })
            .collect();
        if let Some(d) = classes.iter_mut().find(|c| c.cfg.name == DEFAULT_CLASS) {
            for o in old {
                d.queue.extend(o.queue);
            }
            d.queue.make_contiguous().sort_by_key(|w| w.since);
        }
        g.classes = classes;
        let names: Vec<String> = g.classes.iter().map(|c| c.cfg.name.clone()).collect();
        for charge in g.charged.values_mut() {
            if !names.contains(charge) {
                *charge = DEFAULT_CLASS.to_string();
            }
        }
        g.slots = slots(settings, env_parallel);
        g.on = !settings.classes.is_empty();
        g.dispatch(self);
    }

    /// Whether requests are held here at all (classes are written).
    pub fn enabled(&self) -> bool {
        self.inner.lock().map(|g| g.on).unwrap_or(false)
    }

    /// A slot for a request of `class` holding `bytes` of body, now or after waiting; refused
    /// when the class's queue is full, when waiting bodies would take more than their share of
    /// the body budget, or when its max_wait passes. Dropping the future leaves the queue.
    pub async fn admit(self: &Arc<Self>, class: &str, bytes: usize) -> Result<Slot, Refusal> {
        let since = Instant::now();
        let (id, rx, max_wait) = {
            let Ok(mut g) = self.inner.lock() else { return Err(Refusal::QueueFull { class: class.into(), max: 0 }) };
            let Some(i) = g.classes.iter().position(|c| c.cfg.name == class).or_else(|| g.classes.iter().position(|c| c.cfg.name == DEFAULT_CLASS)) else {
                return Err(Refusal::QueueFull { class: class.into(), max: 0 });
            };
            let c = &g.classes[i];
            let name = c.cfg.name.clone();
            let running = g.running(&name);
            // The fast path keeps the invariant that no waiter could have run: every release
            // dispatches, so a free slot with waiters means those waiters are at their limit.
            if g.busy() < g.slots && running < g.limit(c) && c.queue.is_empty() {
                if running == 0 {
                    g.catch_up(i);
                }
                return Ok(g.admit_one(i, since, self));
            }
            if c.queue.len() >= c.cfg.max_queue as usize {
                let max = c.cfg.max_queue;
                g.stats.entry(name.clone()).or_default().refused_full += 1;
                return Err(Refusal::QueueFull { class: name, max });
            }
            if g.queued_bytes + bytes > g.queued_bytes_max {
                let max_mib = g.queued_bytes_max >> 20;
                g.stats.entry(name.clone()).or_default().refused_full += 1;
                return Err(Refusal::BodiesFull { class: name, max_mib });
            }
            if c.queue.is_empty() && running == 0 {
                g.catch_up(i);
            }
            g.next_id += 1;
            let id = g.next_id;
            let (tx, rx) = oneshot::channel();
            let max_wait = g.classes[i].cfg.max_wait;
            g.queued_bytes += bytes;
            g.classes[i].queue.push_back(Waiter { id, since, bytes, tx });
            (id, rx, max_wait)
        };
        let mut place = Place { adm: self.clone(), id, armed: true };
        let mut rx = rx;
        match tokio::time::timeout(max_wait, &mut rx).await {
            Ok(Ok(slot)) => {
                place.armed = false;
                Ok(slot)
            }
            _ => {
                // Out of the queue, unless the slot was handed over in the same instant.
                if place.leave(false) {
                    let waited = since.elapsed();
                    return Err(Refusal::Waited { class: class.into(), waited });
                }
                match rx.try_recv() {
                    Ok(slot) => Ok(slot),
                    Err(_) => Err(Refusal::Waited { class: class.into(), waited: since.elapsed() }),
                }
            }
        }
    }

    fn release(self: &Arc<Self>, slot: u64) {
        if let Ok(mut g) = self.inner.lock() {
            g.undo(slot);
            g.dispatch(self);
        }
    }

    /// Per class, in the order written ("default" last unless written).
    pub fn snapshot(&self) -> Vec<ClassStats> {
        let Ok(g) = self.inner.lock() else { return Vec::new() };
        if !g.on {
            return Vec::new();
        }
        g.classes
            .iter()
            .map(|c| {
                let mut s = g.stats.get(&c.cfg.name).cloned().unwrap_or_default();
                s.class = c.cfg.name.clone();
                s.priority = c.cfg.priority;
                s.queued = c.queue.len();
                s.running = g.running(&c.cfg.name);
                s
            })
            .collect()
    }

    /// Slots in Ollama that admission fills.
    pub fn slot_count(&self) -> usize {
        self.inner.lock().map(|g| g.slots).unwrap_or(1)
    }
}

/// A request's place in a queue: removed when the request stops waiting for any reason
/// (the client left, the wait ran out).
struct Place {
    adm: Arc<Admission>,
    id: u64,
    armed: bool,
}

impl Place {
    /// Leaves the queue; false when the place was no longer there (a slot was sent).
    fn leave(&mut self, client_left: bool) -> bool {
        self.armed = false;
        let Ok(mut g) = self.adm.inner.lock() else { return false };
        let mut found = None;
        for c in g.classes.iter_mut() {
            if let Some(p) = c.queue.iter().position(|w| w.id == self.id) {
                let bytes = c.queue.remove(p).map_or(0, |w| w.bytes);
                found = Some((c.cfg.name.clone(), bytes));
                break;
            }
        }
        let Some((name, bytes)) = found else { return false };
        g.queued_bytes = g.queued_bytes.saturating_sub(bytes);
        let s = g.stats.entry(name).or_default();
        if client_left {
            s.left += 1;
        } else {
            s.refused_wait += 1;
        }
        true
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.armed {
            self.leave(true);
        }
    }
}

#[cfg(test)]
mod tests;
