//! Commands that requests issue in the same turn of the scheduler, sent to one Redis
//! server together.
//!
//! The connection is multiplexed: each command goes through a channel to the
//! connection's task, which writes what the channel holds and then flushes. But the
//! request that sends a command wakes that task, and tokio runs a task woken this way
//! right after the one that woke it, so under load each command still went out in a
//! write of its own: a system call, and on loopback the receiving side's work too, per
//! command. Here the first request of a turn queues its command and yields; the requests
//! that run meanwhile queue theirs behind it; it then sends the lot as one pipeline and
//! hands each request its answer. A request alone in its turn costs one yield more.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, ErrorKind, Pipeline, RedisError, Value};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Value, RedisError>>;

/// The commands waiting for the first of them to send them; shared by a store's clones.
#[derive(Clone, Default)]
pub(super) struct Batch(Arc<Mutex<Vec<(Cmd, Reply)>>>);

impl Batch {
    /// Sends `command` with those queued in the same turn, and returns its answer.
    pub(super) async fn query(
        &self,
        connection: &ConnectionManager,
        command: Cmd,
    ) -> Result<Value, RedisError> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut queued = self.lock();
            queued.push((command, reply));
            queued.len() == 1
        };
        if first {
            let mut sender = Sender {
                batch: self.clone(),
                connection: Some(connection.clone()),
            };
            EndOfTurn::default().await;
            sender.send().await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(RedisError::from((
                ErrorKind::Io,
                "the request that was to send this command to Redis was dropped",
            )))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Cmd, Reply)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The first request's duty to send the queue. Dropped before it did (the request was
/// cancelled while it yielded), it sends the queue from a task of its own, so that the
/// others are not left waiting.
struct Sender {
    batch: Batch,
    connection: Option<ConnectionManager>,
}

impl Sender {
    async fn send(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            let queued = std::mem::take(&mut *self.batch.lock());
            send(&mut connection, queued).await;
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let queued = std::mem::take(&mut *self.batch.lock());
        if let (false, Ok(runtime)) = (queued.is_empty(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move { send(&mut connection, queued).await });
        }
    }
}

/// Sends `queued`, one command as itself and more as a pipeline, and answers each. A
/// command whose request was given up before it went out is not sent at all.
async fn send(connection: &mut ConnectionManager, mut queued: Vec<(Cmd, Reply)>) {
    queued.retain(|(_, reply)| !reply.is_closed());
    if queued.len() > 1 {
        return send_pipeline(connection, queued).await;
    }
    if let Some((command, reply)) = queued.pop() {
        let _ = reply.send(command.query_async(connection).await);
    }
}

async fn send_pipeline(connection: &mut ConnectionManager, queued: Vec<(Cmd, Reply)>) {
    let mut pipeline = Pipeline::with_capacity(queued.len());
    let mut replies = Vec::with_capacity(queued.len());
    for (command, reply) in queued {
        pipeline.add_command(command);
        replies.push(reply);
    }
    // Each command's error goes to its own request, not to the whole batch.
    pipeline.ignore_errors();
    let values = match pipeline.query_async::<Vec<Value>>(connection).await {
        Ok(values) if values.len() == replies.len() => values,
        Ok(values) => {
            let err = RedisError::from((
                ErrorKind::Client,
                "Redis answered a pipeline with another number of replies than commands",
                format!("{} replies to {} commands", values.len(), replies.len()),
            ));
            return answer_all(replies, &err);
        }
        Err(err) => return answer_all(replies, &err),
    };
    for (value, reply) in values.into_iter().zip(replies) {
        let _ = reply.send(value.extract_error());
    }
}

fn answer_all(replies: Vec<Reply>, err: &RedisError) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

/// Ready once the scheduler has run the other tasks that were ready when it was first
/// polled, however often it is polled before: a timeout around the request polls it
/// twice in a row, which would end a plain `yield_now` at once.
#[derive(Default)]
struct EndOfTurn(Option<Arc<Turn>>);

/// The wake-up that ends the turn: recorded, then passed on to the task.
struct Turn {
    over: AtomicBool,
    task: Mutex<Waker>,
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.over.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wake_by_ref();
    }
}

impl Future for EndOfTurn {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(turn) = &self.0 else {
            let turn = Arc::new(Turn {
                over: AtomicBool::new(false),
                task: Mutex::new(cx.waker().clone()),
            });
            // tokio keeps this waker and wakes it once it has run out of ready tasks
            // (outside tokio, at once).
            let waker = Waker::from(Arc::clone(&turn));
            let _ = std::pin::pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
            self.0 = Some(turn);
            return Poll::Pending;
        };
        if !turn.over.load(Ordering::Acquire) {
            // The task may have moved (a request dropped mid-way goes on in a task of
            // its own): the wake-up must reach it where it is now.
            let mut task = turn.task.lock().unwrap_or_else(PoisonError::into_inner);
            if !task.will_wake(cx.waker()) {
                task.clone_from(cx.waker());
            }
        }
        if turn.over.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
