//! Zone files → [`crate::model::Snapshot`]: the loader behind `meridian check`, `serve` and
//! every reload.
//!
//! `raw` walks the spanned TOML document (every key and value keeps its position), `values`
//! parses the scalar formats (durations, statuses, codes, RDATA), `compile` resolves names
//! into ids and collects every problem as a [`Diagnostic`] (`file:line:col: message`).

pub mod compile;
pub mod diag;
mod latency;
mod plain;
mod policies;
mod pools;
pub mod raw;
mod records;
mod statics;
pub mod values;
mod zonefile;

pub use compile::{LoadOptions, Source, load_dir, load_sources, load_str};
pub use diag::{Diagnostic, Diagnostics};
