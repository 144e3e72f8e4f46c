//! The gateway's own tasks, counted: every task a core spawns goes through
//! [`spawn`], which keeps a count of those alive on this thread (one
//! executor per thread, so one count per shard). glommio counts tasks run,
//! not tasks alive; this count is what shows a leak (a task per closed
//! connection left waiting), as `chatgw_tasks` in `/metrics`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use glommio::Task;

thread_local! {
    static ALIVE: Cell<u64> = const { Cell::new(0) };
}

/// Counts one task alive for as long as it is held; zero-sized, so a
/// connection's task is no larger for it.
struct Alive;

impl Alive {
    fn new() -> Self {
        ALIVE.with(|alive| alive.set(alive.get() + 1));
        Alive
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        ALIVE.with(|alive| alive.set(alive.get().saturating_sub(1)));
    }
}

pin_project_lite::pin_project! {
    /// A future with its task's count. A struct, not an `async` block: a
    /// block that takes a future and awaits it holds it twice (the captured
    /// value and the awaited one, rust-lang/rust#62958), which doubled
    /// every connection's task.
    struct Counted<F> {
        #[pin]
        future: F,
        alive: Alive,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// `glommio::spawn_local`, counted until the task ends or is dropped.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(Counted { future, alive: Alive::new() })
}

/// Runs `future` as a task of its own and waits for its output: unlike a
/// future awaited in place, the work goes on to its end when the caller is
/// dropped (an HTTP request whose client went away). `None` if the task
/// was dropped before its end (the executor stopped).
pub async fn to_completion<T: 'static>(future: impl Future<Output = T> + 'static) -> Option<T> {
    spawn(future).detach().await
}

thread_local! {
    static SOON: RefCell<Soon> = const { RefCell::new(Soon { wakers: Vec::new(), waker: None, executor: None }) };
}

/// The wakes [`wake_soon`] put off, and the task that makes them.
struct Soon {
    wakers: Vec<Waker>,
    /// The waking task's own waker, while it waits for more.
    waker: Option<Waker>,
    /// The executor whose task that is (glommio's ids are never reused):
    /// a later executor on this thread starts one of its own, whether or
    /// not the earlier one dropped its tasks.
    executor: Option<usize>,
}

/// Wakes a task after the tasks that are ready now have run, not before
/// them: a connection's session woken for a frame then finds the frames the
/// same turn queued after it (a sender's own copy of its message, then the
/// reply, which its command's task writes once the owner's task has ended),
/// and writes them in one system call instead of one each.
///
/// The wake is made by a task of this core's (started on first use), which
/// runs after those ready before it. Call it on a glommio executor (all of
/// a shard's code runs on one).
pub fn wake_soon(waker: Waker) {
    let start = SOON.with(|soon| {
        let mut soon = soon.borrow_mut();
        soon.wakers.push(waker);
        let executor = glommio::executor().id();
        if soon.executor != Some(executor) {
            // The first wake on this executor: a waking task of an earlier
            // one on this thread is gone with it, and is not woken.
            soon.executor = Some(executor);
            soon.waker = None;
            return true;
        }
        if let Some(waker) = soon.waker.take() {
            waker.wake();
        }
        false
    });
    if start {
        // Scheduled, not run at once (glommio runs a task spawned with
        // `spawn_local` before returning), so that even this first wake
        // waits. Not counted in `alive`: one per core, for the executor's
        // life.
        let queue = glommio::executor().current_task_queue();
        match glommio::spawn_local_into(Waking::default(), queue) {
            Ok(task) => task.detach(),
            Err(_) => glommio::spawn_local(Waking::default()).detach(),
        };
    }
}

/// The task that makes the wakes [`wake_soon`] put off.
#[derive(Default)]
struct Waking {
    /// The list taken last time, empty, swapped back in (so that a turn's
    /// wakes are listed without allocating).
    spare: Vec<Waker>,
}

impl Future for Waking {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        SOON.with(|soon| {
            let mut soon = soon.borrow_mut();
            soon.waker = Some(cx.waker().clone());
            std::mem::swap(&mut soon.wakers, &mut this.spare);
        });
        for waker in this.spare.drain(..) {
            waker.wake();
        }
        Poll::Pending
    }
}

/// Tasks spawned through [`spawn`] on this thread and not yet ended.
pub fn alive() -> u64 {
    ALIVE.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_counts_until_it_ends_or_is_dropped() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let before = alive();
            let (done, wait) = futures_channel::oneshot::channel::<()>();
            let waiting = spawn(async move {
                let _ = wait.await;
            });
            let pending = spawn(std::future::pending::<()>());
            assert_eq!(alive(), before + 2);
            done.send(()).unwrap();
            waiting.await;
            assert_eq!(alive(), before + 1);
            drop(pending);
            // A dropped task's future is dropped when the executor next runs.
            glommio::yield_if_needed().await;
            futures_lite::future::yield_now().await;
            assert_eq!(alive(), before);
        });
    }

    #[test]
    fn an_idle_executor_wakes_for_its_next_timer_and_not_before() {
        // The patched reactor sleeps with the next timer as the timeout of
        // its io_uring_enter: the time running out must wake it, and
        // nothing earlier may pass for the timer's end.
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            for wait_ms in [1u64, 30, 120] {
                let started = std::time::Instant::now();
                glommio::timer::sleep(std::time::Duration::from_millis(wait_ms)).await;
                let slept = started.elapsed();
                assert!(slept >= std::time::Duration::from_millis(wait_ms), "woke early: {slept:?}");
                assert!(slept < std::time::Duration::from_secs(5), "the timer did not wake the executor: {slept:?}");
            }
        });
    }

    #[test]
    fn a_put_off_wake_comes_after_a_task_made_ready_after_it() {
        for _ in 0..2 {
            // Twice: a later executor on this thread starts its own waking
            // task.
            glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
                // Twice again: the first starts the waking task, the
                // second finds it waiting.
                for _ in 0..2 {
                    let order = std::rc::Rc::new(RefCell::new(Vec::new()));
                    let (wake_put_off, put_off_woken) = futures_channel::oneshot::channel::<()>();
                    let (wake_later, later_woken) = futures_channel::oneshot::channel::<()>();
                    // (A spawned task runs until it waits before `spawn`
                    // returns.)
                    let put_off = {
                        let order = order.clone();
                        spawn(async move {
                            let _ = put_off_woken.await;
                            order.borrow_mut().push("put off");
                        })
                    };
                    let later = {
                        let order = order.clone();
                        spawn(async move {
                            let _ = later_woken.await;
                            order.borrow_mut().push("later");
                        })
                    };
                    // As a session's wake for its first frame, then the
                    // command's task woken by its owner's task: the
                    // command's task runs first, so the session finds its
                    // reply too.
                    wake_soon(std::task::Waker::from(std::sync::Arc::new(Relay(std::sync::Mutex::new(Some(
                        wake_put_off,
                    ))))));
                    wake_later.send(()).unwrap();
                    put_off.await;
                    later.await;
                    assert_eq!(*order.borrow(), ["later", "put off"]);
                }
            });
        }
    }

    /// A waker that completes a oneshot when woken.
    struct Relay(std::sync::Mutex<Option<futures_channel::oneshot::Sender<()>>>);

    impl std::task::Wake for Relay {
        fn wake(self: std::sync::Arc<Self>) {
            if let Some(sender) = self.0.lock().unwrap().take() {
                let _ = sender.send(());
            }
        }
    }

    #[test]
    fn a_counted_task_is_no_larger_than_its_future() {
        // A future the size of a connection's state, awaited inside.
        let buffer = [7u8; 512];
        let future = async move {
            futures_lite::future::yield_now().await;
            buffer.len()
        };
        let bare = std::mem::size_of_val(&future);
        let counted = Counted { future, alive: Alive::new() };
        assert_eq!(std::mem::size_of_val(&counted), bare, "the count costs a task no bytes");
    }

    #[test]
    fn work_run_to_completion_ends_when_its_caller_is_dropped() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let (done, ended) = futures_channel::oneshot::channel::<()>();
            let caller = spawn(async move {
                to_completion(async move {
                    glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                    let _ = done.send(());
                })
                .await
            });
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            drop(caller);
            assert_eq!(ended.await, Ok(()), "the work ended though no one waited for it");
            assert_eq!(to_completion(async { 7 }).await, Some(7));
        });
    }
}
