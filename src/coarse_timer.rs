//! A coarse timer for the per-request deadlines: HTTP/1 connections'
//! header-read timeout and the upstream's request timeout.
//!
//! hyper arms the header-read timeout for every request head it reads (it is
//! also what closes an idle keep-alive connection) and drops it when the head
//! is in; the gateway arms `upstream.request_timeout` around every forward.
//! With tokio's timer each is a registration in the runtime's timer wheel and
//! a removal: ~600 ns per deadline armed and dropped, against ~76 ns here
//! (`cargo bench --bench proxy -- per_request`). (A build without hyper's
//! header timer at all did 4.5% fewer instructions per GET; part of that is
//! hyper's own extra poll per head, which no timer removes.)
//!
//! Here each worker thread keeps its pending deadlines in a registry of its
//! own (a slab behind a mutex that only that thread and its tick take, so
//! all but never contended): arming is an insert, disarming a removal. While a
//! registry has a deadline waiting, one task ticks every [`TICK`], reads the
//! clock once and wakes the sleeps whose deadline has passed; with nothing
//! waiting it stops. A deadline is never early (only the tick ends a sleep,
//! and only once the clock has passed its deadline) and at most about one
//! tick late: fine for timeouts of seconds. A poll reads no clock.
//! A sleep keeps its registry, so it is disarmed correctly from any thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// How often a registry with pending deadlines looks for expired ones: about
/// the most a deadline can be late by.
pub const TICK: Duration = Duration::from_millis(100);

/// A [`hyper::rt::Timer`] on coarse deadlines (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep::until(deadline))
    }
}

/// A sleep until a deadline, registered while it is pending.
#[derive(Debug)]
pub struct CoarseSleep {
    deadline: Instant,
    /// Where it is registered: the registry and its key there.
    registered: Option<(Arc<Registry>, usize)>,
}

impl CoarseSleep {
    /// A sleep that is over at `deadline`.
    pub fn until(deadline: Instant) -> CoarseSleep {
        CoarseSleep {
            deadline,
            registered: None,
        }
    }

    fn deregister(&mut self) {
        if let Some((registry, key)) = self.registered.take() {
            registry.lock().entries.try_remove(key);
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // No clock read here: the tick decides when a deadline has passed
        // (it takes the waker out), so a poll is a lock and a slab lookup.
        if let Some((registry, key)) = &self.registered {
            let mut state = registry.lock();
            if let Some(Some(w)) = state.entries.get_mut(*key).map(|e| e.waker.as_mut()) {
                if !w.will_wake(cx.waker()) {
                    w.clone_from(cx.waker());
                }
                return Poll::Pending;
            }
            // Fired (or gone, which cannot happen): over.
            state.entries.try_remove(*key);
            drop(state);
            self.registered = None;
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        match LOCAL
            .try_with(|r| Registry::arm(r, deadline, cx.waker()))
            .ok()
            .flatten()
        {
            Some(registered) => {
                self.registered = Some(registered);
                Poll::Pending
            }
            // Not on a tokio runtime (or the thread is ending): nothing could
            // wake this sleep. End it now: for a timeout, ending early fails
            // safe (the connection or request is cut), hanging would not.
            None => Poll::Ready(()),
        }
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        self.deregister();
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

/// The deadline has passed (what [`timeout`] returns then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A future with a coarse deadline: see [`timeout`].
    #[derive(Debug)]
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: CoarseSleep,
    }
}

/// `fut`, or [`Elapsed`] once `limit` has passed (as `tokio::time::timeout`,
/// on the coarse registry).
pub fn timeout<F: Future>(limit: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        sleep: CoarseSleep::until(Instant::now() + limit),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

/// One thread's pending deadlines.
#[derive(Debug, Default)]
struct Registry {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: Slab<Entry>,
    /// The ticking task meant to run now, by number. It clears this when it
    /// ends, also when it is dropped unfinished (its runtime shut down: a
    /// thread can outlive a runtime), so a later sleep starts another.
    ticking: Option<u64>,
    /// The number of the next ticking task.
    ticks_started: u64,
}

/// A pending deadline; `waker` is taken out when it has passed.
#[derive(Debug)]
struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
}

thread_local! {
    static LOCAL: Arc<Registry> = Arc::default();
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave the slab half-changed in a
        // way that matters (entries are whole): carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a sleep; `None` when no tick can be started (no tokio
    /// runtime on this thread).
    fn arm(
        this: &Arc<Registry>,
        deadline: Instant,
        waker: &Waker,
    ) -> Option<(Arc<Registry>, usize)> {
        let mut state = this.lock();
        let start = match state.ticking {
            Some(_) => None,
            None => {
                let handle = tokio::runtime::Handle::try_current().ok()?;
                let n = state.ticks_started;
                state.ticks_started += 1;
                state.ticking = Some(n);
                Some((handle, n))
            }
        };
        let key = state.entries.insert(Entry {
            deadline,
            waker: Some(waker.clone()),
        });
        drop(state);
        // Spawned outside the lock: a task refused by a closing runtime is
        // dropped at once, and its guard takes the lock to say so.
        if let Some((handle, n)) = start {
            handle.spawn(tick(Ticking(this.clone(), n)));
        }
        Some((this.clone(), key))
    }
}

/// Held by a ticking task: clears the registry's `ticking` when the task
/// ends or is dropped, if it is still the one meant to run.
struct Ticking(Arc<Registry>, u64);

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if state.ticking == Some(self.1) {
            state.ticking = None;
        }
    }
}

/// A registry's ticking task: wakes expired sleeps every [`TICK`] while any
/// are waiting (a woken sleep finds its waker taken: it is over).
async fn tick(me: Ticking) {
    let mut due = Vec::new();
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let more = {
            let mut state = me.0.lock();
            let mut waiting = false;
            for (_, e) in state.entries.iter_mut() {
                if e.deadline <= now {
                    due.extend(e.waker.take());
                } else {
                    waiting = true;
                }
            }
            // Fired entries stay until their sleep sees them (or is dropped).
            if !waiting {
                state.ticking = None;
            }
            waiting
        };
        // Woken outside the lock: a woken task may run and arm again.
        for w in due.drain(..) {
            w.wake();
        }
        if !more {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_here() -> usize {
        LOCAL.with(|r| r.lock().entries.len())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_sleep_ends_at_its_deadline_never_before() {
        let start = Instant::now();
        CoarseSleep::until(start + Duration::from_millis(150)).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert_eq!(pending_here(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_sleep_leaves_nothing_behind() {
        let far = CoarseSleep::until(Instant::now() + Duration::from_secs(3600));
        let ended = tokio::time::timeout(Duration::from_millis(50), far).await;
        assert!(ended.is_err(), "an hour-long sleep ended early");
        assert_eq!(pending_here(), 0);
        // A sleep already past its deadline ends at the next tick.
        CoarseSleep::until(Instant::now()).await;
        assert_eq!(pending_here(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn many_sleeps_each_end_once_due() {
        let start = Instant::now();
        let sleeps = (1..=20u64).map(|i| async move {
            CoarseSleep::until(start + Duration::from_millis(10 * i)).await;
            start.elapsed() >= Duration::from_millis(10 * i)
        });
        let on_time = futures_util::future::join_all(sleeps).await;
        assert!(on_time.into_iter().all(|ok| ok));
        assert_eq!(pending_here(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeouts_fire_on_a_multi_thread_runtime() {
        // Tasks (and their sleeps) may move between threads: each still
        // ends, and ends no earlier than its deadline.
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                tokio::spawn(async move {
                    let start = Instant::now();
                    let limit = Duration::from_millis(20 + 5 * i);
                    let r = timeout(limit, std::future::pending::<()>()).await;
                    (r, start.elapsed() >= limit)
                })
            })
            .collect();
        for t in tasks {
            let (r, not_early) = t.await.unwrap();
            assert_eq!(r, Err(Elapsed));
            assert!(not_early);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_timeout_passes_on_what_finishes_in_time() {
        assert_eq!(timeout(Duration::from_secs(60), async { 7 }).await, Ok(7));
        assert_eq!(pending_here(), 0, "a ready future never registers");
    }

    #[test]
    fn a_thread_that_outlives_its_runtime_still_gets_ticks() {
        // The first runtime ends while its tick waits for a far deadline;
        // the next one on this thread must start its own tick.
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        rt().block_on(async {
            let far = CoarseSleep::until(Instant::now() + Duration::from_secs(3600));
            let _ = tokio::time::timeout(Duration::from_millis(10), far).await;
            // One left armed on purpose: the runtime is dropped with its tick
            // still waiting for it.
            let mut s = Box::pin(CoarseSleep::until(
                Instant::now() + Duration::from_secs(3600),
            ));
            futures_util::future::poll_fn(|cx| {
                let _ = s.as_mut().poll(cx);
                Poll::Ready(())
            })
            .await;
            std::mem::forget(s);
        });
        let start = Instant::now();
        let ended = rt().block_on(async {
            let sleep = CoarseSleep::until(start + Duration::from_millis(50));
            tokio::time::timeout(Duration::from_secs(5), sleep).await
        });
        assert!(
            ended.is_ok(),
            "the sleep never ended: no tick on the new runtime"
        );
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn off_a_runtime_a_pending_sleep_ends_rather_than_hangs() {
        let mut s = Box::pin(CoarseSleep::until(
            Instant::now() + Duration::from_secs(3600),
        ));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(s.as_mut().poll(&mut cx).is_ready());
    }
}
