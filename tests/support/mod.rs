//! What several integration tests share: servers they start themselves, and a set of app
//! replicas over one store.

// Each test file uses a part of this module.
#![allow(dead_code)]

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
