//! The TLS session store of `moat bench smtp --resume`: one for every connection of a run,
//! keyed by server name, so that several servers under one name (edges behind a load
//! balancer) are offered each other's tickets.
//!
//! rustls' own `ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets per server name. A
//! server that sends one ticket per handshake (Postfix with OpenSSL) then leaves half of 16
//! concurrent connections with none to offer, and the benchmark would measure the client's
//! cache rather than the server's resumption. This store keeps up to [`TICKETS_PER_SERVER`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::NamedGroup;
use rustls_pki_types::ServerName;

/// TLS 1.3 tickets kept per server name (each is offered once, the newest first); beyond it
/// the oldest is dropped.
pub(super) const TICKETS_PER_SERVER: usize = 1024;

#[derive(Default)]
struct Server {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// The sessions a run's connections share (see the module docs).
#[derive(Default)]
pub(super) struct SessionStore {
    servers: Mutex<HashMap<ServerName<'static>, Server>>,
}

impl SessionStore {
    fn with<T>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Server) -> T) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        let server = servers.entry(name.to_owned()).or_default();
        f(server)
    }
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore").finish_non_exhaustive()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(&name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.with(name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(&name, |s| {
            if s.tls13.len() >= TICKETS_PER_SERVER {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(name, |s| s.tls13.pop_back())
    }
}
