//! Commands that requests issue in the same turn of the scheduler, sent to one Redis
//! server together.
//!
//! The connection is multiplexed: each command goes through a channel to the
//! connection's task, which writes what the channel holds and then flushes. But the
//! request that sends a command wakes that task, and tokio runs a task woken this way
//! right after the one that woke it, so under load each command still went out in a
//! write of its own: a system call, and on loopback the receiving side's work too, per
//! command. Here the first command of a turn starts a task that yields until the
//! scheduler has run the other ready tasks; the requests that run meanwhile queue their
//! commands behind it; the task then sends the lot as one pipeline and hands each
//! request its answer. Sent from a task of its own, a batch goes out whatever becomes of
//! the request that started it (finished, dropped, or held without being polled).

use std::sync::{Arc, Mutex, PoisonError};

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, ErrorKind, Pipeline, RedisError, Value};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Value, RedisError>>;

/// The commands of the current turn, waiting to be sent; shared by a store's clones.
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
            let (mut hold, mut connection) = (Turn(Some(self.clone())), connection.clone());
            let turn = async move {
                tokio::task::yield_now().await;
                let queued = hold.take();
                send(&mut connection, queued).await;
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(turn)),
                // Outside tokio (where the connection cannot run either): from here.
                Err(_) => turn.await,
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(RedisError::from((
                ErrorKind::Io,
                "the command was dropped unsent: the runtime shut down",
            )))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Cmd, Reply)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A turn's hold on the commands queued in it. A turn dropped before it took them (its
/// runtime shut down before the task ran) drops them: their requests get an error, and
/// the next command starts a turn of its own instead of queueing behind commands that
/// nobody will send, which would hold up every later command of the store.
struct Turn(Option<Batch>);

impl Turn {
    fn take(&mut self) -> Vec<(Cmd, Reply)> {
        self.0
            .take()
            .map(|batch| std::mem::take(&mut *batch.lock()))
            .unwrap_or_default()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.take());
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
