//! Compile-time behaviour of `#[idempotent]`: what it accepts (`ui/pass`) and how it
//! reports each misuse (`ui/fail`, with the expected compiler output checked in).
//!
//! Regenerate the expected output after a deliberate change with
//! `TRYBUILD=overwrite cargo test --test ui`, then read every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
