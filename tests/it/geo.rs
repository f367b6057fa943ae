//! geo tests.
