//! The one integration test binary: every module below starts real servers on 127.0.0.1.

mod admin;
mod check;
mod dns;
mod geo;
mod health;
mod policy;
mod support;
