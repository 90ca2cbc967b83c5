//! What the integration tests share: servers they start themselves, a fresh Postgres
//! schema per test, a set of app replicas over one store, and stand-in stores that fail
//! or count their calls.

// Each test file uses a part of this module.
#![allow(dead_code)]

pub mod broken;
pub mod counting;
pub mod flaky;
pub mod nats_server;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis_commands;
pub mod redis_server;
pub mod replicas;

use std::hash::{BuildHasher, RandomState};

/// A random 64-bit number, for prefixes, ports and directory names.
pub fn random_u64() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A key prefix no other test and no earlier run uses.
pub fn unique_prefix(name: &str) -> String {
    format!("test-{name}-{:016x}", random_u64())
}

/// About the largest allocation glibc serves from the thread's own cache. The protocol
/// boxes the future of every claim and completion (it holds its store as a trait
/// object); a larger box comes from the allocator's shared bins, a slower path that,
/// under load, now and then also consolidates them.
pub const ALLOCATOR_CACHE: usize = 1024;
