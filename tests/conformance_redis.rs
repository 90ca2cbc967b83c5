//! The Redis store passes the conformance kit, on a single node and on a Redis Cluster.
#![cfg(feature = "redis")]

mod support;

use idempotent_runtime::{RedisStore, testkit};
use support::redis_commands::{raw_connection, remove_prefix};
use support::redis_server::{RedisCluster, shared_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_single_node_passes_the_kit() {
    let prefix = support::unique_prefix("kit");
    let store = RedisStore::connect(shared_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis at {} (scripts/services.sh starts it): {e}",
                shared_url()
            )
        })
        .with_prefix(prefix.clone());
    testkit::run_all(&store).await;
    remove_prefix(&mut raw_connection(&shared_url()).await, &prefix)
        .await
        .unwrap_or_else(|e| panic!("removing the keys under {prefix}: {e}"));
}

/// Replies are read the same whichever protocol the connection speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_over_resp3_passes_the_kit() {
    let url = format!("{}?protocol=resp3", shared_url());
    let prefix = support::unique_prefix("kit");
    let store = RedisStore::connect(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("Redis at {url}: {e}"))
        .with_prefix(prefix.clone());
    testkit::run_all(&store).await;
    remove_prefix(&mut raw_connection(&shared_url()).await, &prefix)
        .await
        .unwrap_or_else(|e| panic!("removing the keys under {prefix}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_passes_the_kit() {
    let cluster = RedisCluster::start(3);
    let store = RedisStore::connect_cluster(cluster.urls())
        .await
        .unwrap_or_else(|e| panic!("the test cluster at {:?}: {e}", cluster.urls()))
        .with_prefix(support::unique_prefix("kit"));
    testkit::run_all(&store).await;
    // The kit's keys were spread over the masters: the hash tag keeps a record in one
    // slot, not every record in one slot.
    let holding = cluster
        .nodes()
        .iter()
        .filter(|node| {
            node.cli(&["dbsize"])
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
        .count();
    assert!(
        holding >= 2,
        "records of different keys must spread over the cluster, {holding} of 3 masters hold any"
    );
}
