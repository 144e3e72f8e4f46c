//! The gateway's own tasks, counted: every task a core spawns goes through
//! [`spawn`], which keeps a count of those alive on this thread (one
//! executor per thread, so one count per shard). glommio counts tasks run,
//! not tasks alive; this count is what shows a leak (a task per closed
//! connection left waiting), as `chatgw_tasks` in `/metrics`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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
