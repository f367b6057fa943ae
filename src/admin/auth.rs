//! Who may change things (SPEC §7): with `--admin-token-file`, whoever sends
//! `Authorization: Bearer <token>`; without it, loopback peers only. Reads are open.
//!
//! [`authorize`] is the whole decision as a pure function of (policy, peer, header);
//! [`Authorized`] is the extractor the changing handlers take first, so a refused request is
//! answered before its body is even parsed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::settings::Settings;

/// RFC 6750 §2.1: the authentication scheme, matched case-insensitively (RFC 7235 §2.1).
const BEARER_SCHEME: &str = "bearer";

/// How changes are authorized.
#[derive(Debug)]
pub(super) enum Auth {
    /// `Authorization: Bearer <token>` with this token (whitespace-trimmed file contents).
    Token(Box<[u8]>),
    /// No token file configured: changes only from loopback peers.
    LoopbackOnly,
    /// A token file is configured but unusable: refuse every change rather than open up.
    RefuseAll,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum TokenFileError {
    #[error("{}: cannot read the admin token file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the admin token file is empty", path.display())]
    Empty { path: PathBuf },
}

/// Why a change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Denied {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// A bearer token that is not the configured one.
    WrongToken,
    /// No token file, and the peer is not on loopback.
    NotLoopback,
    /// The token file could not be read at start.
    Unavailable,
}

impl Auth {
    /// Read the token file named in the settings, if any, once at start.
    pub(super) fn from_settings(settings: &Settings) -> Result<Auth, TokenFileError> {
        match &settings.admin_token_file {
            None => Ok(Auth::LoopbackOnly),
            Some(path) => read_token(path).map(Auth::Token),
        }
    }
}

fn read_token(path: &Path) -> Result<Box<[u8]>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.as_bytes().into())
}

/// May a request from `peer` (`None`: unknown) with this `Authorization` header change
/// things?
pub(super) fn authorize(
    auth: &Auth,
    peer: Option<IpAddr>,
    authorization: Option<&[u8]>,
) -> Result<AllowedBy, Denied> {
    match auth {
        Auth::RefuseAll => Err(Denied::Unavailable),
        Auth::LoopbackOnly => match peer {
            Some(ip) if ip.to_canonical().is_loopback() => Ok(AllowedBy::Loopback),
            _ => Err(Denied::NotLoopback),
        },
        Auth::Token(want) => {
            let got = authorization
                .and_then(bearer_token)
                .ok_or(Denied::MissingToken)?;
            if constant_time_eq(got, want) {
                Ok(AllowedBy::Token)
            } else {
                Err(Denied::WrongToken)
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(BEARER_SCHEME.as_bytes()) {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares every byte whatever the first difference, so the time taken depends on the
/// lengths only, never on how much of a guessed token is right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

impl Denied {
    fn status(self) -> StatusCode {
        match self {
            Denied::MissingToken | Denied::WrongToken => StatusCode::UNAUTHORIZED,
            Denied::NotLoopback | Denied::Unavailable => StatusCode::FORBIDDEN,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Denied::MissingToken => "changes need an Authorization: Bearer <token> header",
            Denied::WrongToken => "wrong admin token",
            Denied::NotLoopback => {
                "changes are accepted from loopback only (no admin token file is configured)"
            }
            Denied::Unavailable => {
                "the admin token file could not be read at start; changes are disabled"
            }
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.message() }));
        match self.status() {
            StatusCode::UNAUTHORIZED => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                body,
            )
                .into_response(),
            status => (status, body).into_response(),
        }
    }
}

/// Proof that the request may change things; take it as a handler's first argument. It
/// says who asked, for the log line of the change.
pub(super) struct Authorized {
    /// The peer's address.
    pub(super) peer: Option<SocketAddr>,
    /// How the change was allowed.
    pub(super) by: AllowedBy,
}

/// What let a change through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AllowedBy {
    /// The admin token (`--admin-token-file`).
    Token,
    /// A loopback peer, no token file configured.
    Loopback,
}

impl AllowedBy {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AllowedBy::Token => "admin token",
            AllowedBy::Loopback => "loopback peer",
        }
    }
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Denied> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match authorize(&state.auth, peer.map(|p| p.ip()), header) {
            Ok(by) => Ok(Authorized { peer, by }),
            Err(denied) => {
                tracing::warn!(peer = ?peer, reason = denied.message(), "admin: change refused");
                Err(denied)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("test address"))
    }

    #[test]
    fn without_a_token_only_loopback_peers_may_change() {
        let auth = Auth::LoopbackOnly;
        for (peer, expected) in [
            (ip("127.0.0.1"), Ok(AllowedBy::Loopback)),
            (ip("127.1.2.3"), Ok(AllowedBy::Loopback)),
            (ip("::1"), Ok(AllowedBy::Loopback)),
            (ip("::ffff:127.0.0.1"), Ok(AllowedBy::Loopback)),
            (ip("192.0.2.1"), Err(Denied::NotLoopback)),
            (ip("10.0.0.1"), Err(Denied::NotLoopback)),
            (ip("2001:db8::1"), Err(Denied::NotLoopback)),
            (ip("::ffff:192.0.2.1"), Err(Denied::NotLoopback)),
            (None, Err(Denied::NotLoopback)),
        ] {
            assert_eq!(authorize(&auth, peer, None), expected, "{peer:?}");
            // A bearer header does not open the loopback rule either.
            assert_eq!(
                authorize(&auth, peer, Some(b"Bearer x")),
                expected,
                "{peer:?}"
            );
        }
    }

    #[test]
    fn with_a_token_only_the_right_bearer_may_change_from_anywhere() {
        let auth = Auth::Token(b"s3cret".as_slice().into());
        let remote = ip("192.0.2.1");
        for (header, expected) in [
            (Some(b"Bearer s3cret".as_slice()), Ok(AllowedBy::Token)),
            (Some(b"bearer s3cret"), Ok(AllowedBy::Token)),
            (Some(b"Bearer   s3cret "), Ok(AllowedBy::Token)),
            (Some(b"Bearer s3cre"), Err(Denied::WrongToken)),
            (Some(b"Bearer s3cret2"), Err(Denied::WrongToken)),
            (Some(b"Bearer S3CRET"), Err(Denied::WrongToken)),
            (Some(b"Basic czNjcmV0"), Err(Denied::MissingToken)),
            (Some(b"Bearer "), Err(Denied::MissingToken)),
            (Some(b"s3cret"), Err(Denied::MissingToken)),
            (None, Err(Denied::MissingToken)),
        ] {
            assert_eq!(authorize(&auth, remote, header), expected, "{header:?}");
        }
        // Loopback is no exemption when a token is configured.
        assert_eq!(
            authorize(&auth, ip("127.0.0.1"), None),
            Err(Denied::MissingToken)
        );
    }

    #[test]
    fn an_unreadable_token_file_refuses_everything() {
        assert_eq!(
            authorize(&Auth::RefuseAll, ip("127.0.0.1"), Some(b"Bearer x")),
            Err(Denied::Unavailable)
        );
        let missing =
            std::env::temp_dir().join(format!("meridian-no-token-{}", std::process::id()));
        assert!(matches!(
            read_token(&missing),
            Err(TokenFileError::Read { .. })
        ));
    }

    #[test]
    fn token_files_are_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("meridian-admin-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("token");
        std::fs::write(&path, "  tok-en \n").expect("write token");
        assert_eq!(&*read_token(&path).expect("readable"), b"tok-en");
        std::fs::write(&path, " \n\t").expect("write token");
        assert!(matches!(
            read_token(&path),
            Err(TokenFileError::Empty { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
    }
}
