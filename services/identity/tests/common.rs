//! Fixtures shared by identity's API tests (they live in the testkit, for
//! every service's tests).
#![allow(dead_code, unused_imports)]

pub use paddock_testkit::fixtures::*;
