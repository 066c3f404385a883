//! SMTP AUTH: password checks against the users of the policy snapshot, and the failure
//! throttle.
//!
//! Passwords are argon2id hashes made by the control plane; checking one costs tens of
//! milliseconds of CPU, so it runs on the blocking pool. A login that names no user is checked
//! against a fixed hash all the same, so the reply time does not tell which logins exist.
//!
//! Two throttles, both answering AUTH `454 4.7.0` without looking at the password:
//! - [`Throttle`], immediate and per edge: after `max-failures-per-ip` failures from one
//!   address, or `max-failures-per-user` for one login, within `failure-window` of each other,
//!   until the window passes.
//! - The cluster-wide lockout: each failure of a login that belongs to a tenant (see
//!   [`login_tenant`]) is reported as a [`signal::AUTH_FAILURE`] counter; the control plane adds
//!   up every edge's and locks the login, or the address for that tenant's logins, out with a
//!   temporary user restriction named [`signal::auth_lockout`], which reaches every edge with
//!   the policy ([`locked_out`]) within a signal round.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use moat_shared::signal;
use moat_shared::{EntityKind, PolicySnapshot, SubmissionUser, TenantId};

use crate::config::AuthLimits;

/// Most throttle entries kept per kind; beyond it, entries whose window has passed are dropped.
const MAX_ENTRIES: usize = 100_000;

/// Checks a password against a user's argon2id hash (blocking: call from the blocking pool).
pub fn verify(user: Option<&SubmissionUser>, password: &str) -> bool {
    // For unknown logins: a hash with the control plane's parameters of a password nobody
    // knows, so the check costs the same.
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| {
        use argon2::password_hash::{PasswordHasher, SaltString};
        SaltString::encode_b64(b"moat-dummy-salt!")
            .and_then(|salt| {
                Argon2::default()
                    .hash_password(format!("{:?}", Instant::now()).as_bytes(), &salt)
                    .map(|h| h.to_string())
            })
            .unwrap_or_default()
    });
    let hash = user.map_or(dummy.as_str(), |u| u.password_hash.as_str());
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
        && user.is_some()
}

/// The tenant a login belongs to: its user's, or for a login that names no user, the tenant
/// that accepts its domain (so that a login that exists and one that does not are locked out
/// alike). `None` for a login of no tenant: it is neither reported nor locked cluster-wide.
pub fn login_tenant<'a>(snapshot: &'a PolicySnapshot, login: &str) -> Option<&'a TenantId> {
    if let Some(user) = snapshot.user(login) {
        return Some(&user.tenant);
    }
    let (_, domain) = login.rsplit_once('@')?;
    snapshot.tenant_for_domain(domain).map(|t| &t.id)
}

/// The client address as failures are counted and locked out: IPv4-mapped IPv6 addresses as
/// the IPv4 address they carry.
pub fn client_address(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Whether the control plane has locked `login`, or the client address `ip` for the login's
/// tenant, out of SMTP AUTH at `now_ms` (a restriction named [`signal::auth_lockout`]).
pub fn locked_out(snapshot: &PolicySnapshot, login: &str, ip: IpAddr, now_ms: i64) -> bool {
    if snapshot.restricted_count(EntityKind::User) == 0 {
        return false;
    }
    let Some(tenant) = login_tenant(snapshot, login) else {
        return false;
    };
    let locked = |subject: &str| {
        snapshot
            .restriction(
                EntityKind::User,
                tenant,
                &signal::auth_lockout(subject),
                now_ms,
            )
            .is_some()
    };
    locked(login) || locked(&client_address(ip).to_string())
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failed logins per client address and per login, for the whole edge.
#[derive(Debug)]
pub struct Throttle {
    limits: AuthLimits,
    state: Mutex<(HashMap<IpAddr, Failures>, HashMap<String, Failures>)>,
}

impl Throttle {
    /// A throttle with these limits.
    pub fn new(limits: AuthLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new((HashMap::new(), HashMap::new())),
        })
    }

    fn live(&self, f: Option<&Failures>, now: Instant) -> u32 {
        f.filter(|f| now.duration_since(f.last) < self.limits.failure_window)
            .map_or(0, |f| f.count)
    }

    /// Whether AUTH from `ip` for `login` is refused now.
    pub fn blocked(&self, ip: IpAddr, login: &str, now: Instant) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.live(s.0.get(&ip), now) >= self.limits.max_failures_per_ip
            || self.live(s.1.get(login), now) >= self.limits.max_failures_per_user
    }

    /// Records a failed login.
    pub fn failed(&self, ip: IpAddr, login: &str, now: Instant) {
        let window = self.limits.failure_window;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bump = |f: &mut Failures| {
            if now.duration_since(f.last) >= window {
                f.count = 0;
            }
            f.count += 1;
            f.last = now;
        };
        let fresh = Failures {
            count: 0,
            last: now,
        };
        bump(s.0.entry(ip).or_insert(fresh));
        bump(s.1.entry(login.to_owned()).or_insert(fresh));
        prune(&mut s.0, now, window);
        prune(&mut s.1, now, window);
    }

    /// A successful login clears the login's failures (the address keeps its own).
    pub fn succeeded(&self, login: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1.remove(login);
    }
}

fn prune<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Failures>, now: Instant, window: Duration) {
    if map.len() > MAX_ENTRIES {
        map.retain(|_, f| now.duration_since(f.last) < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    #[test]
    fn passwords_are_checked_against_argon2id() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        let user = SubmissionUser {
            tenant: moat_shared::TenantId::new("t").unwrap(),
            address: "a@t.test".into(),
            password_hash: hash,
            send_as: vec![],
        };
        assert!(verify(Some(&user), "s3cret"));
        assert!(!verify(Some(&user), "S3cret"));
        assert!(!verify(None, "s3cret"));
    }

    #[test]
    fn cluster_lockouts_refuse_the_login_or_the_address_in_its_tenant() {
        use moat_shared::{Domain, RestrictedEntity, Tenant};
        let a = TenantId::new("a").unwrap();
        let lockout = |subject: &str, until_ms| RestrictedEntity {
            tenant: a.clone(),
            kind: EntityKind::User,
            name: signal::auth_lockout(subject),
            reason: "failed logins".into(),
            since_ms: 0,
            until_ms: Some(until_ms),
        };
        let snap = PolicySnapshot::from_change(&moat_shared::PolicyChange {
            version: 1,
            reset: true,
            tenants: vec![Tenant {
                id: a.clone(),
                display_name: "a".into(),
                accepted_domains: vec![Domain::new("a.test").unwrap()],
                allow_legacy_tls_clients: false,
            }],
            users: vec![SubmissionUser {
                tenant: a.clone(),
                address: "u@a.test".into(),
                password_hash: String::new(),
                send_as: vec![],
            }],
            restricted: vec![
                lockout("u@a.test", 1_000),
                lockout("nobody@a.test", 1_000),
                lockout("192.0.2.9", 1_000),
            ],
            ..Default::default()
        })
        .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let bad: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        let cases = [
            ("u@a.test", ip, 999, true, "a locked user"),
            ("u@a.test", ip, 1_000, false, "the lockout has ended"),
            (
                "nobody@a.test",
                ip,
                0,
                true,
                "a locked login that names no user",
            ),
            ("v@a.test", ip, 0, false, "another login of the tenant"),
            (
                "v@a.test",
                bad,
                0,
                true,
                "a locked address, for the tenant's logins",
            ),
            ("x@elsewhere.test", bad, 0, false, "a login of no tenant"),
        ];
        for (login, ip, now, locked, what) in cases {
            assert_eq!(locked_out(&snap, login, ip, now), locked, "{what}");
        }
        assert_eq!(login_tenant(&snap, "nobody@a.test"), Some(&a));
        assert_eq!(login_tenant(&snap, "nobody"), None);
    }

    #[test]
    fn failures_throttle_per_user_and_per_address_then_expire() {
        let t = Throttle::new(AuthLimits {
            max_failures_per_ip: 4,
            max_failures_per_user: 2,
            failure_window: Duration::from_secs(60),
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        t.failed(ip, "a", now);
        assert!(!t.blocked(ip, "a", now));
        t.failed(ip, "a", now);
        assert!(t.blocked(other, "a", now), "the user is locked everywhere");
        assert!(!t.blocked(ip, "b", now));
        t.failed(ip, "b", now);
        t.failed(ip, "c", now);
        assert!(
            t.blocked(ip, "d", now),
            "the address is locked for every user"
        );
        assert!(!t.blocked(other, "d", now));
        let later = now + Duration::from_secs(61);
        assert!(!t.blocked(ip, "a", later));
        t.failed(other, "e", now);
        t.succeeded("e");
        assert!(!t.blocked(other, "e", now));
    }
}
