//! Console sessions, sign-in and CSRF, as logic that takes the time and the request's parts as
//! arguments (so the tests drive the clock).
//!
//! - A session is a random 256-bit id (hex) in this node's in-memory table, sent as the cookie
//!   [`COOKIE`] (`HttpOnly; Secure; SameSite=Strict; Path=/`). It ends [`ABSOLUTE`] after
//!   sign-in, or [`IDLE`] after its last request, or at sign-out; a restart of the node ends
//!   them all. Sessions are per node: signing in on one control node's console does not sign
//!   in on another's.
//! - A session keeps the SHA-256 of the token it signed in with, never the token: every request
//!   resolves it again against the operator token and the replicated token table, so a revoked
//!   token ends its sessions at their next request.
//! - Each session has its own random CSRF token; every POST must carry it in the form field
//!   `csrf` (compared in constant time) and, when the browser sends `Origin` (or else
//!   `Referer`), come from the console's own origin.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "moat_session";
/// A session ends this long after sign-in, whatever its use.
pub(crate) const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
/// A session ends this long after its last request.
pub(crate) const IDLE: Duration = Duration::from_secs(30 * 60);
/// More sessions than this on one node: the oldest is dropped (a bound on memory).
const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// SHA-256 (hex) of the token signed in with.
    pub(crate) token_sha: String,
    /// The CSRF token every POST of this session carries.
    pub(crate) csrf: String,
    /// When it signed in.
    pub(crate) created: Instant,
    /// Its last request.
    pub(crate) last: Instant,
}

/// This node's sessions, by id.
#[derive(Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, lowercase hex.
pub(crate) fn random_id() -> String {
    let mut b = [0u8; 32];
    // The system's RNG does not fail on the platforms Moat runs on; were it to, the id would
    // still be unique per call of a fresh SystemRandom.
    let _ = SystemRandom::new().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    /// Opens a session for the token with this SHA-256; returns its id and CSRF token.
    pub(crate) fn open(&self, token_sha: String, now: Instant) -> (String, String) {
        let id = random_id();
        let csrf = random_id();
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|_, s| live(s, now));
        if t.len() >= MAX_SESSIONS {
            if let Some(oldest) = t
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                t.remove(&oldest);
            }
        }
        t.insert(
            id.clone(),
            Session {
                token_sha,
                csrf: csrf.clone(),
                created: now,
                last: now,
            },
        );
        (id, csrf)
    }

    /// The live session `id`, its last use moved to `now`; an expired one is removed.
    pub(crate) fn touch(&self, id: &str, now: Instant) -> Option<Session> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let s = t.get_mut(id)?;
        if !live(s, now) {
            t.remove(id);
            return None;
        }
        s.last = now;
        Some(s.clone())
    }

    /// Ends session `id` (sign-out, or its token no longer valid).
    pub(crate) fn close(&self, id: &str) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Whether `s` is still valid at `now`.
pub(crate) fn live(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.created) < ABSOLUTE
        && now.saturating_duration_since(s.last) < IDLE
}

/// The session id in a `Cookie` header, if any.
pub(crate) fn cookie_session(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that stores session `id`.
pub(crate) fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        ABSOLUTE.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
}

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a POST is refused before it is looked at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Forbidden {
    /// No `csrf` field, or not this session's.
    #[error(
        "the form did not carry this session's CSRF token; reload the page and submit the form again"
    )]
    Csrf,
    /// Sent from a page of another site.
    #[error("the request came from another origin ({0}); changes are accepted only from the console's own pages")]
    Origin(String),
    /// The signed-in role changes nothing.
    #[error("your role ({0}) can read but not change anything")]
    ReadOnly(&'static str),
}

/// The console's own origin, `https://HOST` from the request's `Host` header.
pub(crate) fn own_origin(host: &str) -> String {
    format!("https://{}", host.trim())
}

/// Checks where a POST came from: `Origin` when present must be `own` exactly; otherwise
/// `Referer` when present must be a URL of `own`. Neither present is accepted (the CSRF token
/// still has to match).
pub(crate) fn check_origin(
    own: &str,
    origin: Option<&str>,
    referer: Option<&str>,
) -> Result<(), Forbidden> {
    if let Some(o) = origin {
        return if o.trim().eq_ignore_ascii_case(own) {
            Ok(())
        } else {
            Err(Forbidden::Origin(o.trim().to_owned()))
        };
    }
    if let Some(r) = referer {
        let r = r.trim();
        let same = r.len() >= own.len()
            && r[..own.len()].eq_ignore_ascii_case(own)
            && matches!(r.as_bytes().get(own.len()), None | Some(b'/' | b'?' | b'#'));
        return if same {
            Ok(())
        } else {
            Err(Forbidden::Origin(r.to_owned()))
        };
    }
    Ok(())
}

/// Checks a POST's CSRF field against the session's token, in constant time.
pub(crate) fn check_csrf(session: &Session, field: Option<&str>) -> Result<(), Forbidden> {
    match field {
        Some(f) if constant_time_eq(f.as_bytes(), session.csrf.as_bytes()) => Ok(()),
        _ => Err(Forbidden::Csrf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_absolutely() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let (id, csrf) = s.open("sha".into(), t0);
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        // Used every 20 minutes, it lives until the absolute limit.
        let mut t = t0;
        while t + Duration::from_secs(20 * 60) < t0 + ABSOLUTE {
            t += Duration::from_secs(20 * 60);
            assert!(s.touch(&id, t).is_some(), "alive at {:?}", t - t0);
        }
        assert!(s.touch(&id, t0 + ABSOLUTE).is_none(), "past 8 h");
        assert!(s.touch(&id, t0).is_none(), "removed once expired");

        let (id, _) = s.open("sha".into(), t0);
        assert!(s.touch(&id, t0 + IDLE - Duration::from_secs(1)).is_some());
        assert!(
            s.touch(&id, t0 + IDLE * 2 - Duration::from_millis(500))
                .is_none(),
            "idle 30 min"
        );

        let (id, _) = s.open("sha".into(), t0);
        s.close(&id);
        assert!(s.touch(&id, t0).is_none(), "signed out");
        assert!(s.touch("unknown", t0).is_none());
    }

    #[test]
    fn csrf_compares_the_whole_token() {
        let s = Sessions::default();
        let now = Instant::now();
        let (id, csrf) = s.open("sha".into(), now);
        let session = s.touch(&id, now).expect("session");
        assert_eq!(check_csrf(&session, Some(&csrf)), Ok(()));
        assert_eq!(check_csrf(&session, None), Err(Forbidden::Csrf));
        assert_eq!(check_csrf(&session, Some("")), Err(Forbidden::Csrf));
        assert_eq!(
            check_csrf(&session, Some(&csrf[..63])),
            Err(Forbidden::Csrf)
        );
        let mut other = csrf.clone().into_bytes();
        other[10] = if other[10] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            check_csrf(&session, Some(&String::from_utf8(other).expect("hex"))),
            Err(Forbidden::Csrf)
        );
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b"ab"));
    }

    #[test]
    fn origin_must_be_the_console_itself() {
        let own = own_origin("127.0.0.1:7480");
        assert_eq!(own, "https://127.0.0.1:7480");
        assert_eq!(
            check_origin(&own, Some("https://127.0.0.1:7480"), None),
            Ok(())
        );
        assert!(check_origin(&own, Some("https://evil.example"), None).is_err());
        assert!(check_origin(&own, Some("http://127.0.0.1:7480"), None).is_err());
        assert!(check_origin(&own, Some("null"), None).is_err());
        // Origin wins over Referer.
        assert!(check_origin(
            &own,
            Some("https://evil.example"),
            Some("https://127.0.0.1:7480/")
        )
        .is_err());
        assert_eq!(
            check_origin(&own, None, Some("https://127.0.0.1:7480/restricted?q=x")),
            Ok(())
        );
        assert!(check_origin(&own, None, Some("https://127.0.0.1:74801/")).is_err());
        assert!(check_origin(&own, None, Some("https://evil.example/")).is_err());
        assert_eq!(check_origin(&own, None, None), Ok(()));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_is_strict() {
        assert_eq!(cookie_session("a=1; moat_session=abc; b=2"), Some("abc"));
        assert_eq!(cookie_session("moat_session="), None);
        assert_eq!(cookie_session("other=1"), None);
        let c = set_cookie("abc");
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
