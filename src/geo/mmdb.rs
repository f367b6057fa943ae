//! Placeholder until the reader lands.
use std::net::IpAddr;
use std::path::Path;

use super::{Locate, Location};

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: {message}")]
    Open { path: String, message: String },
}

/// A GeoIP database (City or Country layout) plus an optional ASN database.
pub struct GeoDb {}

impl GeoDb {
    pub fn open(_city: &Path, _asn: Option<&Path>) -> Result<GeoDb, GeoError> {
        Ok(GeoDb {})
    }
}

impl Locate for GeoDb {
    fn locate(&self, _ip: IpAddr) -> Option<Location> {
        None
    }
}
