//! A queue consumer under at-least-once delivery, against a real NATS JetStream server:
//! every event is delivered several times (published twice over, a delivery whose ack
//! was lost to a crash, deliveries put back while a duplicate was being processed), and
//! `Idempotency::once` makes each event's work run exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, stream};
use futures::StreamExt;
use idempotent_runtime::once::{OnceError, Outcome};
use idempotent_runtime::{Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

mod support;
use support::nats_server::NatsServer;

#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    id: String,
    cents: u64,
}

const EVENTS: usize = 10;
const COPIES: usize = 3;

#[derive(Default)]
struct Billing {
    /// How often each event was charged.
    charges: Mutex<HashMap<String, usize>>,
    /// Deliveries acknowledged, replays among them, deliveries put back.
    acked: AtomicUsize,
    replayed: AtomicUsize,
    put_back: AtomicUsize,
    /// The next charge "crashes" after its work is done, before the ack.
    crash_once: AtomicBool,
}

/// One consumer replica: pulls, charges at most once per event, acknowledges. Returns
/// how many deliveries it took.
async fn consume(consumer: PullConsumer, idempotency: Idempotency, billing: Arc<Billing>) -> usize {
    let mut taken = 0;
    while billing.acked.load(Ordering::SeqCst) < EVENTS * COPIES {
        // One delivery at a time, so that a replica does not take the whole stream in
        // one pull and leave the other idle; each pull waits a second at most, so that
        // none is left waiting on the server for long (a long-lived pull stream was seen
        // to stall on a busy machine until its pull request expired).
        let mut pulled = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("a pull request");
        let Some(message) = pulled.next().await else {
            continue;
        };
        let message = message.expect("a delivery");
        taken += 1;
        let event: OrderPlaced = serde_json::from_slice(&message.payload).expect("an event");
        let result = idempotency
            .once("billing")
            .run(&event.id, &event, || async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let mut charges = billing
                    .charges
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *charges.entry(event.id.clone()).or_default() += 1;
                Ok::<_, std::io::Error>(format!("receipt for {} cents", event.cents))
            })
            .await;
        match result {
            Ok(Outcome::Ran(_)) if billing.crash_once.swap(false, Ordering::SeqCst) => {
                // Crashed before the ack: JetStream redelivers after the ack wait.
            }
            Ok(outcome) => {
                if matches!(outcome, Outcome::Replayed(_)) {
                    billing.replayed.fetch_add(1, Ordering::SeqCst);
                }
                message.ack().await.expect("ack");
                billing.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(OnceError::InFlight { .. }) => {
                billing.put_back.fetch_add(1, Ordering::SeqCst);
                let later = AckKind::Nak(Some(Duration::from_millis(100)));
                message.ack_with(later).await.expect("nak");
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_events_are_processed_once() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connected");
    let js = jetstream::new(client);
    let stream = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.placed".into()],
            ..Default::default()
        })
        .await
        .expect("a stream");
    for _ in 0..COPIES {
        for i in 0..EVENTS {
            let event = OrderPlaced {
                id: format!("evt-{i}"),
                cents: 100 * i as u64,
            };
            let payload = serde_json::to_vec(&event).expect("json");
            let ack = js
                .publish("orders.placed", payload.into())
                .await
                .expect("sent");
            ack.await.expect("stored");
        }
    }
    let mut consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("billing".into()),
            // Long enough that a delivery waiting in a replica's buffer on a busy
            // machine is not redelivered besides the planned crash's.
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .expect("a consumer");

    // Two replicas share the durable consumer (each delivery goes to one of them) and
    // one store.
    let idempotency = Idempotency::new(MemoryStore::new());
    let billing = Arc::new(Billing {
        crash_once: AtomicBool::new(true),
        ..Billing::default()
    });
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(consume(
                consumer.clone(),
                idempotency.clone(),
                billing.clone(),
            ))
        })
        .collect();
    let all = futures::future::join_all(replicas);
    let taken = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("every delivery acknowledged within 30 s");
    let taken: Vec<usize> = taken.into_iter().map(|t| t.expect("replica")).collect();
    assert!(
        taken.iter().all(|&n| n > 0),
        "both replicas took deliveries: {taken:?}"
    );

    let charges = billing
        .charges
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(charges.len(), EVENTS, "every event charged");
    assert!(
        charges.values().all(|&n| n == 1),
        "each event charged exactly once: {charges:?}"
    );
    assert_eq!(
        billing.replayed.load(Ordering::SeqCst),
        // Of the 30 acknowledged deliveries, 9 ran the work (the tenth run crashed before
        // its ack); the other 21, the copies and the redelivery after the crash, replayed.
        EVENTS * COPIES - (EVENTS - 1),
        "every other delivery got the stored receipt"
    );
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(info.num_ack_pending, 0, "nothing left unacknowledged");
    assert_eq!(info.num_pending, 0, "nothing left undelivered");
}
