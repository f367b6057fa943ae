//! The zone's one signing key (SPEC §11): an ECDSA P-256 CSK (algorithm 13, flags 257) kept
//! as PKCS#8 DER in `state/keys/<zone>.13.<tag>.pk8` (mode 0600). Created only by
//! `meridian dnssec keygen`; loaded at start and on every reload. Also the DNSKEY and DS
//! records and the trust-anchor lines `meridian dnssec ds` prints.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

use crate::model::wire;

/// RFC 8624 §3.1 / RFC 6605: ECDSAP256SHA256, the algorithm online signers default to.
pub const ALGORITHM: u8 = 13;
/// RFC 4034 §2.1.1: Zone Key (bit 7) + Secure Entry Point (bit 15): a CSK.
pub const FLAGS: u16 = 257;
/// RFC 4034 §2.1.2: the Protocol field is always 3.
const PROTOCOL: u8 = 3;
/// RFC 4509: DS digest type 2, SHA-256.
pub const DIGEST_SHA256: u8 = 2;
/// Where keys live under the state directory.
pub const KEYS_DIR: &str = "keys";

/// Why a key cannot be made, found or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "zone {zone} has `dnssec = true` but no key in {dir}: create it with `meridian dnssec keygen {zone} --state {state}` (every instance must then use that same key file)"
    )]
    Missing {
        zone: String,
        dir: String,
        state: String,
    },
    #[error("zone {zone}: several keys in {dir} ({files}); keep exactly one")]
    Several {
        zone: String,
        dir: String,
        files: String,
    },
    #[error(
        "zone {zone} already has a key: {path} (a new key under a published DS makes the zone bogus; remove the file first to replace it)"
    )]
    Exists { zone: String, path: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: not a PKCS#8 ECDSA P-256 key: {message}")]
    Bad { path: String, message: String },
    #[error("zone name {0} cannot be a file name")]
    BadZoneName(String),
}

/// A loaded key: what signs, and the records that publish it.
pub struct ZoneKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// The zone origin, lowercase wire format (the RRSIG signer name).
    pub signer: Box<[u8]>,
    /// RDATA of the DNSKEY record.
    pub dnskey: Box<[u8]>,
    /// RFC 4034 Appendix B.
    pub key_tag: u16,
    /// Unique per loaded key in this process: signature caches key on it.
    pub id: u64,
    pub path: PathBuf,
}

impl fmt::Debug for ZoneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZoneKey")
            .field("signer", &wire::to_text(&self.signer))
            .field("key_tag", &self.key_tag)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ZoneKey {
    /// A key from PKCS#8 DER bytes.
    pub fn from_pkcs8(origin: &[u8], der: &[u8], path: PathBuf) -> Result<ZoneKey, KeyError> {
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).map_err(|e| {
                KeyError::Bad {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
        let dnskey = dnskey_rdata(pair.public_key().as_ref());
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(ZoneKey {
            key_tag: key_tag(&dnskey),
            dnskey,
            pair,
            rng,
            signer: origin.into(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            path,
        })
    }

    /// ECDSA P-256 over `data`: r‖s, 64 bytes (RFC 6605 §4). `None` only if the system
    /// random source fails.
    pub fn sign(&self, data: &[u8]) -> Option<ring::signature::Signature> {
        self.pair.sign(&self.rng, data).ok()
    }

    /// The DS RDATA digest: SHA-256 over owner name and DNSKEY RDATA (RFC 4034 §5.1.4).
    pub fn ds_digest(&self) -> Vec<u8> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.signer);
        ctx.update(&self.dnskey);
        ctx.finish().as_ref().to_vec()
    }

    /// What `meridian dnssec ds` prints: DS, DNSKEY and trust-anchor lines.
    pub fn presentation(&self) -> String {
        let zone = wire::to_text(&self.signer);
        let ds = hex_upper(&self.ds_digest());
        let tag = self.key_tag;
        let key = base64(&self.dnskey[4..]);
        format!(
            "{zone} IN DS {tag} {ALGORITHM} {DIGEST_SHA256} {ds}\n\
             {zone} IN DNSKEY {FLAGS} {PROTOCOL} {ALGORITHM} {key}\n\
             ; delv: put this line in a file and run `delv -a FILE +root={zone} ...`\n\
             trust-anchors {{ \"{zone}\" static-key {FLAGS} {PROTOCOL} {ALGORITHM} \"{key}\"; }};\n\
             ; unbound.conf, server: section\n\
             trust-anchor: \"{zone} DS {tag} {ALGORITHM} {DIGEST_SHA256} {ds}\"\n"
        )
    }
}

/// RFC 4034 §2.1: flags, protocol, algorithm, and the public key as x‖y (RFC 6605 §4; ring
/// gives the uncompressed point 0x04‖x‖y).
fn dnskey_rdata(public: &[u8]) -> Box<[u8]> {
    let mut rd = Vec::with_capacity(4 + 64);
    rd.extend_from_slice(&FLAGS.to_be_bytes());
    rd.push(PROTOCOL);
    rd.push(ALGORITHM);
    rd.extend_from_slice(public.strip_prefix(&[4]).unwrap_or(public));
    rd.into_boxed_slice()
}

/// RFC 4034 Appendix B: the key tag of a DNSKEY RDATA (algorithm ≠ 1).
pub fn key_tag(rdata: &[u8]) -> u16 {
    let mut ac: u32 = 0;
    for (i, b) in rdata.iter().enumerate() {
        ac += if i & 1 == 0 {
            u32::from(*b) << 8
        } else {
            u32::from(*b)
        };
    }
    ac += (ac >> 16) & 0xffff;
    (ac & 0xffff) as u16
}

/// `state/keys`.
pub fn keys_dir(state: &Path) -> PathBuf {
    state.join(KEYS_DIR)
}

/// File name prefix of a zone's keys: `<zone>.13.` (no trailing dot on the zone).
fn file_prefix(origin: &[u8]) -> Result<String, KeyError> {
    let text = wire::to_text(origin);
    let zone = text.trim_end_matches('.');
    if zone.is_empty() || zone.contains('/') || zone.starts_with('.') {
        return Err(KeyError::BadZoneName(text));
    }
    Ok(format!("{zone}.{ALGORITHM}."))
}

/// The zone's key files in `state/keys/`.
fn key_files(origin: &[u8], state: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let dir = keys_dir(state);
    let prefix = file_prefix(origin)?;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let tag = name.strip_prefix(&prefix)?.strip_suffix(".pk8")?;
            tag.parse::<u16>().ok().map(|_| e.path())
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Load the key of zone `origin` (lowercase wire) from `state/keys/`.
pub fn load(origin: &[u8], state: &Path) -> Result<ZoneKey, KeyError> {
    let files = key_files(origin, state)?;
    let dir = keys_dir(state).display().to_string();
    let zone = wire::to_text(origin);
    match files.as_slice() {
        [] => Err(KeyError::Missing {
            zone,
            dir,
            state: state.display().to_string(),
        }),
        [path] => {
            let der = std::fs::read(path).map_err(|e| KeyError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            ZoneKey::from_pkcs8(origin, &der, path.clone())
        }
        several => Err(KeyError::Several {
            zone,
            dir,
            files: several
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// `meridian dnssec keygen`: a new P-256 key for the zone, written with mode 0600; refuses
/// when the zone already has one.
pub fn generate(origin: &[u8], state: &Path) -> Result<ZoneKey, KeyError> {
    let zone = wire::to_text(origin);
    if let Some(existing) = key_files(origin, state)?.first() {
        return Err(KeyError::Exists {
            zone,
            path: existing.display().to_string(),
        });
    }
    let io = |path: &Path, e: std::io::Error| KeyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let dir = keys_dir(state);
    create_private_dir(&dir).map_err(|e| io(&dir, e))?;
    let rng = SystemRandom::new();
    let der =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|e| {
            KeyError::Io {
                path: dir.display().to_string(),
                message: format!("cannot generate a key: {e}"),
            }
        })?;
    let probe = ZoneKey::from_pkcs8(origin, der.as_ref(), PathBuf::new())?;
    let path = dir.join(format!("{}{}.pk8", file_prefix(origin)?, probe.key_tag));
    write_private(&path, der.as_ref()).map_err(|e| io(&path, e))?;
    ZoneKey::from_pkcs8(origin, der.as_ref(), path)
}

/// `state/keys/`, mode 0700 when created.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A new file readable by its owner only; never overwrites.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// RFC 4648 base64 with padding (DNSKEY presentation format, RFC 4034 §2.2).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn keygen_writes_0600_refuses_a_second_key_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let state = std::env::temp_dir().join(format!("meridian-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let origin = wire::from_text("signed.test.").expect("name");
        assert!(matches!(
            load(&origin, &state),
            Err(KeyError::Missing { .. })
        ));
        let k = generate(&origin, &state).expect("keygen");
        let mode = std::fs::metadata(&k.path)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            k.path
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == format!("signed.test.13.{}.pk8", k.key_tag))
        );
        assert!(matches!(
            generate(&origin, &state),
            Err(KeyError::Exists { .. })
        ));
        let again = load(&origin, &state).expect("loads");
        assert_eq!((again.key_tag, &again.dnskey), (k.key_tag, &k.dnskey));
        assert_eq!(k.dnskey.len(), 4 + 64);
        let _ = std::fs::remove_dir_all(&state);
    }
}
