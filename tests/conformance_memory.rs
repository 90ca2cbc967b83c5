//! The memory store passes the conformance kit.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_kit() {
    idempotent_runtime::testkit::run_all(&idempotent_runtime::MemoryStore::new()).await;
}
