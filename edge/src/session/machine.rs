//! The sans-IO SMTP session: bytes and the current time in, [`Action`]s out.
//!
//! The driver feeds whatever it read with [`Session::receive`] and drains [`Session::poll`]
//! until it returns `None`. Some actions are requests that need I/O or policy (opening the
//! next-hop transaction, adding a recipient, starting and ending the body): the machine then
//! waits, and the driver answers with [`Session::resolve`]. Nothing here blocks, sleeps, reads a
//! clock or touches a socket, which is what lets the tests drive it byte by byte.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::body::{ChunkChecker, DataScanner, Scan};
use super::command::{self, Address, Command, MailParams};
use super::reply::{self, Reply};
use super::{SessionFacts, TlsFacts};

/// Settings of one session, fixed by its listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Node name appended to replies (`[edge-1]`).
    pub node: String,
    /// Host name in the greeting, EHLO reply and `Received:` header.
    pub hostname: String,
    /// Whether STARTTLS is offered (a certificate is configured and the session is not TLS yet).
    pub starttls: bool,
    /// Whether MAIL needs TLS first (submission).
    pub require_tls: bool,
    /// Whether AUTH is offered (once TLS is up) and required before MAIL (submission, smtps).
    pub auth: bool,
    /// Largest message accepted, in octets.
    pub max_message_size: u64,
    /// Most recipients per transaction.
    pub max_recipients: usize,
    /// Protocol errors before the session is closed.
    pub max_errors: u32,
    /// Longest command line, including CRLF.
    pub max_line: usize,
    /// Longest time one command line may take to arrive, however slowly its bytes trickle in.
    pub command_timeout: Duration,
    /// Close an unauthenticated session that sends where it must wait for a reply
    /// ([`reply::PROTOCOL_SYNC`]; see [`Session::talked_early`]).
    pub forbid_unauth_pipelining: bool,
}

/// A listener's [`SessionConfig`] with the reply text every session of it sends alike, built
/// once: the greeting's line and EHLO's keyword lines, before and after STARTTLS, with and
/// without AUTH. A session then starts and answers EHLO without building them again.
#[derive(Debug)]
pub struct Prepared {
    cfg: SessionConfig,
    /// `<hostname> ESMTP Moat ready`.
    greeting: Arc<[String]>,
    /// The keyword lines after EHLO's first line, by [STARTTLS offered][AUTH offered].
    ehlo: [[Arc<[String]>; 2]; 2],
}

impl Prepared {
    /// Prepares the replies of `cfg`'s sessions.
    pub fn new(cfg: SessionConfig) -> Self {
        let greeting = Arc::from([format!("{} {}", cfg.hostname, reply::GREETING.text)]);
        let ehlo = [false, true].map(|starttls| {
            [false, true].map(|auth| Arc::from(ehlo_keywords(&cfg, starttls, auth)))
        });
        Self {
            cfg,
            greeting,
            ehlo,
        }
    }
}

impl std::ops::Deref for Prepared {
    type Target = SessionConfig;

    fn deref(&self) -> &SessionConfig {
        &self.cfg
    }
}

/// EHLO's keyword lines (every line but the first), STARTTLS and AUTH included when offered.
fn ehlo_keywords(cfg: &SessionConfig, starttls: bool, auth: bool) -> Vec<String> {
    let mut lines = vec![
        format!("SIZE {}", cfg.max_message_size),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
        "PIPELINING".into(),
        "CHUNKING".into(),
        "ENHANCEDSTATUSCODES".into(),
    ];
    if starttls {
        lines.push("STARTTLS".into());
    }
    if auth {
        lines.push("AUTH PLAIN LOGIN".into());
    }
    lines.push("HELP".into());
    lines
}

/// Longest command line whose buffer a session keeps for the next one.
const KEPT_LINE: usize = 1024;

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write a reply to the client.
    Send(Reply),
    /// Flush the replies, then run the TLS handshake and call [`Session::tls_established`].
    UpgradeTls,
    /// Flush the replies and close the connection.
    Close,
    /// Open the next-hop transaction (MAIL); answer with [`Session::resolve`].
    Open(Envelope),
    /// Check and forward a recipient; answer with [`Session::resolve`].
    AddRecipient(Address),
    /// Start the message body at the next hop; answer with [`Session::resolve`].
    StartBody,
    /// Message content to stream to the next hop (already un-stuffed, CRLF lines).
    Body(Vec<u8>),
    /// The content is complete: finish at the next hop and answer with [`Session::resolve`].
    EndBody,
    /// Discard the next-hop transaction, if any; nothing was accepted.
    Abort,
    /// Check these credentials (and the policy on who may log in here); answer with
    /// [`Session::resolve`]: `235` logs the session in as `login`.
    Authenticate {
        /// The login name, as sent.
        login: String,
        /// The password.
        password: Secret,
    },
}

/// A password: never printed, not even in debug output.
#[derive(PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where an AUTH exchange stands.
#[derive(Debug, PartialEq, Eq)]
enum AuthStep {
    /// `AUTH PLAIN` without an initial response: waiting for it.
    Plain,
    /// `AUTH LOGIN`: waiting for the user name.
    LoginUser,
    /// `AUTH LOGIN`: waiting for the password of this user.
    LoginPassword(String),
}

/// The envelope sender of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path; `None` is `<>`.
    pub from: Option<Address>,
    /// MAIL parameters.
    pub params: MailParams,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Command,
    Data,
    Bdat { remaining: u64, last: bool },
    Closed,
}

#[derive(Debug)]
enum Pending {
    Mail(Envelope),
    Rcpt(Address),
    DataStart,
    BdatStart,
    End,
    Auth(String),
}

#[derive(Debug)]
struct Txn {
    envelope: Envelope,
    recipients: Vec<Address>,
    body_started: bool,
    via_bdat: bool,
    size: u64,
    /// Set when the transaction can no longer succeed (BDAT refused, size exceeded).
    failed: Option<Reply>,
}

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<Prepared>,
    /// Whether STARTTLS is offered: the listener's setting until TLS is up.
    starttls: bool,
    facts: SessionFacts,
    buf: Vec<u8>,
    /// The command line being handled (its buffer reused from line to line).
    line: Vec<u8>,
    out: VecDeque<Action>,
    state: State,
    pending: Option<Pending>,
    txn: Option<Txn>,
    esmtp: bool,
    errors: u32,
    discarding_line: bool,
    /// When the partial command line in `buf` began arriving.
    partial_since: Option<SystemTime>,
    scanner: DataScanner,
    checker: ChunkChecker,
    /// Why the current BDAT chunk is refused, if it is.
    chunk_refusal: Option<Reply>,
    transactions: u32,
    auth_step: Option<AuthStep>,
}

impl Session {
    /// A new session; the greeting is the first action.
    pub fn new(cfg: SessionConfig, facts: SessionFacts) -> Self {
        Self::prepared(Arc::new(Prepared::new(cfg)), facts)
    }

    /// A new session of a listener whose replies are prepared ([`Prepared`]); the greeting is
    /// the first action.
    pub fn prepared(cfg: Arc<Prepared>, facts: SessionFacts) -> Self {
        let greeting = Reply::prepared(reply::GREETING, Arc::clone(&cfg.greeting));
        // Room for the greeting and what one command line gives (a reply, then an upgrade or
        // a close), without growing.
        let mut out = VecDeque::with_capacity(4);
        out.push_back(Action::Send(greeting));
        Self {
            out,
            starttls: cfg.starttls,
            cfg,
            facts,
            buf: Vec::new(),
            line: Vec::new(),
            state: State::Command,
            pending: None,
            txn: None,
            esmtp: false,
            errors: 0,
            discarding_line: false,
            partial_since: None,
            scanner: DataScanner::default(),
            checker: ChunkChecker::default(),
            chunk_refusal: None,
            transactions: 0,
            auth_step: None,
        }
    }

    /// The facts known about this session so far.
    pub fn facts(&self) -> &SessionFacts {
        &self.facts
    }

    /// Bytes read from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.state != State::Closed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes that arrived before the greeting was sent. With `forbid_unauth_pipelining` the
    /// greeting is replaced by [`reply::PROTOCOL_SYNC`] and the session closed (RFC 5321
    /// section 3.1: the client waits for the greeting); otherwise they are served in order.
    pub fn talked_early(&mut self, bytes: &[u8]) {
        if self.cfg.forbid_unauth_pipelining && !bytes.is_empty() {
            tracing::info!(
                session = %self.facts.id,
                "improper command pipelining after CONNECT: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(100)])
            );
            self.out.clear();
            self.close_with(reply::PROTOCOL_SYNC.into());
        } else {
            self.receive(bytes);
        }
    }

    /// Whether `cmd`, from an unauthenticated client, came with input after it that the client
    /// should have held back until the reply: RFC 2920 section 3.1 makes EHLO, DATA, VRFY, EXPN
    /// and QUIT (and RFC 3207/4954 STARTTLS and AUTH, HELO as EHLO) the last command of a
    /// group. NOOP, which RFC 2920 lists too, is left out: it changes nothing, and clients
    /// pipeline it as a keep-alive. Postfix answers such input with `554 5.5.0 Error: SMTP
    /// protocol synchronization` and hangs up; so does Moat.
    fn out_of_sync(&mut self, cmd: &Command) -> bool {
        let ends_group = match cmd {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Data => "DATA",
            Command::StartTls => "STARTTLS",
            Command::Auth(..) => "AUTH",
            Command::Quit => "QUIT",
            Command::Vrfy => "VRFY",
            Command::Expn => "EXPN",
            _ => return false,
        };
        if !self.cfg.forbid_unauth_pipelining || self.facts.auth.is_some() || self.buf.is_empty() {
            return false;
        }
        tracing::info!(
            session = %self.facts.id,
            "improper command pipelining after {ends_group}: {:?}",
            String::from_utf8_lossy(&self.buf[..self.buf.len().min(100)])
        );
        self.close_with(reply::PROTOCOL_SYNC.into());
        true
    }

    /// Whether the session is reading message content (the DATA-block timeout applies).
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Data | State::Bdat { .. })
    }

    /// Whether no transaction is under way, so the session may be closed for shutdown.
    pub fn is_idle(&self) -> bool {
        self.txn.is_none() && self.pending.is_none() && self.state == State::Command
    }

    /// When the command line being received must be complete, if one is under way.
    pub fn command_deadline(&self) -> Option<SystemTime> {
        self.partial_since.map(|t| t + self.cfg.command_timeout)
    }

    /// The client was silent for too long.
    pub fn timeout(&mut self) {
        self.close_with(reply::TIMEOUT.into());
    }

    /// The edge is shutting down.
    pub fn shutdown(&mut self) {
        self.close_with(reply::SHUTTING_DOWN.into());
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 4.2).
    pub fn tls_established(&mut self, tls: TlsFacts) {
        self.facts.tls = Some(tls);
        self.facts.helo = None;
        self.esmtp = false;
        self.starttls = false;
    }

    /// The next action, or `None` when the machine needs more input or a [`Session::resolve`].
    pub fn poll(&mut self, now: SystemTime) -> Option<Action> {
        loop {
            if let Some(a) = self.out.pop_front() {
                return Some(a);
            }
            if self.pending.is_some() {
                return None;
            }
            let progressed = match self.state {
                State::Closed => return None,
                State::Command => self.next_command(now),
                State::Data => self.scan_data(),
                State::Bdat { .. } => self.scan_bdat(),
            };
            if !progressed && self.out.is_empty() {
                return None;
            }
        }
    }

    /// The answer to the request the machine is waiting on.
    pub fn resolve(&mut self, result: Reply, now: SystemTime) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let ok = result.is_positive();
        if result.code == 421 && matches!(pending, Pending::Auth(_) | Pending::Mail(_)) {
            // A policy refusal that ends the session (the legacy-TLS speed bump).
            self.close_with(result);
            return;
        }
        match pending {
            Pending::Auth(login) => {
                if ok {
                    self.facts.auth = Some(login.to_lowercase());
                }
            }
            Pending::Mail(envelope) if ok => {
                self.txn = Some(Txn {
                    envelope,
                    recipients: Vec::new(),
                    body_started: false,
                    via_bdat: false,
                    size: 0,
                    failed: None,
                });
            }
            Pending::Rcpt(to) if ok => {
                if let Some(t) = self.txn.as_mut() {
                    t.recipients.push(to);
                }
            }
            Pending::DataStart if ok => {
                self.state = State::Data;
                self.scanner = DataScanner::default();
                self.start_body(now);
            }
            Pending::DataStart => self.abort_txn(),
            Pending::BdatStart => {
                if ok {
                    self.start_body(now);
                } else {
                    self.abort_txn_keep(result.clone());
                    self.chunk_refusal = Some(result);
                }
                return;
            }
            Pending::End => {
                self.txn = None;
                self.state = State::Command;
            }
            Pending::Mail(_) | Pending::Rcpt(_) => {}
        }
        self.out.push_back(Action::Send(result));
    }

    fn close_with(&mut self, r: Reply) {
        // Closed is final: a timer or a shutdown that fires after the close says nothing more.
        if self.state == State::Closed {
            return;
        }
        if self.txn.take().is_some() || self.pending.take().is_some() {
            self.out.push_back(Action::Abort);
        }
        self.out.push_back(Action::Send(r));
        self.out.push_back(Action::Close);
        self.state = State::Closed;
        self.buf.clear();
    }

    fn abort_txn(&mut self) {
        if self.txn.take().is_some() {
            self.out.push_back(Action::Abort);
        }
        self.state = State::Command;
    }

    /// Marks the transaction failed but keeps it, so later BDAT chunks get the same answer.
    fn abort_txn_keep(&mut self, why: Reply) {
        if let Some(t) = self.txn.as_mut() {
            if t.failed.is_none() {
                self.out.push_back(Action::Abort);
            }
            t.failed = Some(why);
        }
    }

    fn error(&mut self, r: Reply) {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.close_with(reply::TOO_MANY_ERRORS.into());
        } else {
            self.out.push_back(Action::Send(r));
        }
    }

    fn send(&mut self, r: impl Into<Reply>) {
        self.out.push_back(Action::Send(r.into()));
    }

    /// Reads one command line if a whole one is buffered; returns whether it consumed input.
    fn next_command(&mut self, now: SystemTime) -> bool {
        let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.is_empty() {
                self.partial_since = None;
            } else {
                self.partial_since.get_or_insert(now);
            }
            if self.buf.len() >= self.cfg.max_line && !self.discarding_line {
                self.discarding_line = true;
                self.buf.clear();
                self.error(reply::LINE_TOO_LONG.into());
                return true;
            }
            if self.discarding_line {
                self.buf.clear();
            }
            return false;
        };
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.extend(self.buf.drain(..=lf));
        self.partial_since = None;
        self.command_line(&line);
        if line.capacity() <= KEPT_LINE {
            self.line = line;
        }
        true
    }

    /// Handles one command line, `line` ending in LF.
    fn command_line(&mut self, line: &[u8]) {
        if std::mem::take(&mut self.discarding_line) {
            return;
        }
        if line.len() > self.cfg.max_line {
            self.error(reply::LINE_TOO_LONG.into());
            return;
        }
        let body = &line[..line.len() - 1];
        let Some(body) = body.strip_suffix(b"\r") else {
            self.error(reply::BAD_LINE_ENDING.into());
            return;
        };
        if body.iter().any(|&b| b == b'\r' || b == 0) {
            self.error(reply::BAD_LINE_ENDING.into());
            return;
        }
        if let Some(step) = self.auth_step.take() {
            self.auth_line(step, body);
            return;
        }
        match command::parse(body) {
            Ok(cmd) if self.out_of_sync(&cmd) => {}
            Ok(cmd) => self.handle(cmd),
            Err(code) => self.error(code.into()),
        }
    }

    /// One line of an AUTH exchange: a base64 response, or `*` to cancel (RFC 4954).
    fn auth_line(&mut self, step: AuthStep, line: &[u8]) {
        if line == b"*" {
            self.send(reply::AUTH_CANCELLED);
            return;
        }
        let Some(text) = decode_b64(line) else {
            self.error(reply::AUTH_BAD_RESPONSE.into());
            return;
        };
        match step {
            AuthStep::Plain => self.auth_plain(&text),
            AuthStep::LoginUser => {
                self.auth_step = Some(AuthStep::LoginPassword(text));
                self.send(Reply::challenge("UGFzc3dvcmQ6"));
            }
            AuthStep::LoginPassword(login) => self.authenticate(login, text),
        }
    }

    /// `authzid NUL authcid NUL password` (RFC 4616); an authorization identity other than the
    /// login itself is not supported.
    fn auth_plain(&mut self, message: &str) {
        let mut parts = message.split('\0');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(authz), Some(login), Some(password), None)
                if !login.is_empty() && (authz.is_empty() || authz.eq_ignore_ascii_case(login)) =>
            {
                self.authenticate(login.to_owned(), password.to_owned())
            }
            (Some(_), Some(_), Some(_), None) => self.send(reply::AUTH_FAILED),
            _ => self.error(reply::AUTH_BAD_RESPONSE.into()),
        }
    }

    fn authenticate(&mut self, login: String, password: String) {
        self.pending = Some(Pending::Auth(login.clone()));
        self.out.push_back(Action::Authenticate {
            login,
            password: Secret(password),
        });
    }

    fn start_auth(&mut self, mechanism: &str, initial: Option<String>) {
        if !self.cfg.auth {
            return self.error(reply::NOT_IMPLEMENTED.into());
        }
        if self.facts.tls.is_none() {
            return self.error(reply::TLS_REQUIRED.into());
        }
        if self.facts.helo.is_none() {
            return self.error(reply::HELO_FIRST.into());
        }
        if self.facts.auth.is_some() {
            return self.error(reply::AUTH_AGAIN.into());
        }
        if self.txn.is_some() {
            return self.error(reply::BAD_SEQUENCE.into());
        }
        let initial = match initial.as_deref() {
            None => None,
            Some("=") => Some(String::new()),
            Some(b64) => match decode_b64(b64.as_bytes()) {
                Some(t) => Some(t),
                None => return self.error(reply::AUTH_BAD_RESPONSE.into()),
            },
        };
        match (mechanism, initial) {
            ("PLAIN", Some(message)) => self.auth_plain(&message),
            ("PLAIN", None) => {
                self.auth_step = Some(AuthStep::Plain);
                self.send(Reply::challenge(""));
            }
            ("LOGIN", Some(login)) if !login.is_empty() => {
                self.auth_step = Some(AuthStep::LoginPassword(login));
                self.send(Reply::challenge("UGFzc3dvcmQ6"));
            }
            ("LOGIN", _) => {
                self.auth_step = Some(AuthStep::LoginUser);
                self.send(Reply::challenge("VXNlcm5hbWU6"));
            }
            _ => self.error(reply::AUTH_MECHANISM.into()),
        }
    }

    /// `<hostname> Hello <name> [<client IP>]`, the first line of the EHLO and HELO replies.
    fn hello(&self, name: &str) -> String {
        use std::fmt::Write as _;
        // Sized once (an IPv6 address is at most 39 characters): `format!` would start
        // empty and grow several times.
        let mut text = String::with_capacity(self.cfg.hostname.len() + name.len() + 50);
        let _ = write!(
            text,
            "{} Hello {} [{}]",
            self.cfg.hostname,
            name,
            self.facts.peer.ip()
        );
        text
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Ehlo(name) => {
                self.abort_txn();
                self.esmtp = true;
                let hello = self.hello(&name);
                // Credentials only ever travel inside TLS (no plaintext AUTH, as Postfix's
                // smtpd_tls_auth_only).
                let auth = self.cfg.auth && self.facts.tls.is_some() && self.facts.auth.is_none();
                let keywords = &self.cfg.ehlo[usize::from(self.starttls)][usize::from(auth)];
                let r = Reply::ehlo_prepared(hello, Arc::clone(keywords));
                self.facts.helo = Some(name);
                self.send(r);
            }
            Command::Helo(name) => {
                self.abort_txn();
                self.esmtp = false;
                let text = self.hello(&name);
                self.facts.helo = Some(name);
                self.send(Reply::with_text(reply::OK, text));
            }
            Command::Mail(from, params) => {
                if self.facts.helo.is_none() {
                    self.error(reply::HELO_FIRST.into());
                } else if self.txn.is_some() {
                    self.error(reply::NESTED_MAIL.into());
                } else if self.cfg.require_tls && self.facts.tls.is_none() {
                    self.error(reply::TLS_REQUIRED.into());
                } else if self.cfg.auth && self.facts.auth.is_none() {
                    self.error(reply::AUTH_REQUIRED.into());
                } else if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
                    self.send(reply::MESSAGE_TOO_BIG);
                } else {
                    let envelope = Envelope { from, params };
                    self.pending = Some(Pending::Mail(envelope.clone()));
                    self.out.push_back(Action::Open(envelope));
                }
            }
            Command::Rcpt(to) => match self.txn.as_ref() {
                None => self.error(reply::MAIL_FIRST.into()),
                Some(t) if t.body_started => self.error(reply::BAD_SEQUENCE.into()),
                Some(t) if t.recipients.len() >= self.cfg.max_recipients => {
                    self.send(reply::TOO_MANY_RECIPIENTS)
                }
                Some(t) if to.is_utf8() && !t.envelope.params.smtputf8 => {
                    self.send(reply::NEEDS_SMTPUTF8)
                }
                Some(_) => {
                    self.pending = Some(Pending::Rcpt(to.clone()));
                    self.out.push_back(Action::AddRecipient(to));
                }
            },
            Command::Data => match self.txn.as_ref() {
                None => self.error(reply::MAIL_FIRST.into()),
                Some(t) if t.via_bdat => self.error(reply::DATA_AFTER_BDAT.into()),
                Some(t) if t.recipients.is_empty() => self.send(reply::NO_VALID_RECIPIENTS),
                Some(_) => {
                    self.pending = Some(Pending::DataStart);
                    self.out.push_back(Action::StartBody);
                }
            },
            Command::Bdat { size, last } => {
                self.state = State::Bdat {
                    remaining: size,
                    last,
                };
                self.chunk_refusal = match self.txn.as_mut() {
                    None => Some(reply::MAIL_FIRST.into()),
                    Some(t) if t.recipients.is_empty() => Some(reply::NO_VALID_RECIPIENTS.into()),
                    Some(t) if t.failed.is_some() => t.failed.clone(),
                    Some(t) => {
                        t.via_bdat = true;
                        if !t.body_started {
                            t.body_started = true;
                            self.checker = ChunkChecker::default();
                            self.pending = Some(Pending::BdatStart);
                            self.out.push_back(Action::StartBody);
                        }
                        None
                    }
                };
            }
            Command::Rset => {
                self.abort_txn();
                self.send(reply::OK);
            }
            Command::Noop => self.send(reply::OK),
            Command::Quit => self.close_with(reply::BYE.into()),
            Command::Help => self.send(reply::HELP),
            Command::Vrfy => self.send(reply::CANNOT_VRFY),
            Command::Expn => self.send(reply::EXPN_DISABLED),
            Command::Auth(mechanism, initial) => self.start_auth(&mechanism, initial),
            Command::StartTls => {
                if self.facts.tls.is_some() {
                    self.error(reply::TLS_ACTIVE.into());
                } else if !self.starttls {
                    self.error(reply::NOT_IMPLEMENTED.into());
                } else {
                    self.abort_txn();
                    // Anything pipelined after STARTTLS was sent in clear text and must not be
                    // executed inside TLS (RFC 3207 section 4.2, CVE-2011-0411).
                    self.buf.clear();
                    self.send(reply::READY_TLS);
                    self.out.push_back(Action::UpgradeTls);
                }
            }
        }
    }

    fn start_body(&mut self, now: SystemTime) {
        let header = self.received_header(now);
        if let Some(t) = self.txn.as_mut() {
            t.body_started = true;
        }
        self.transactions += 1;
        self.out.push_back(Action::Body(header));
    }

    /// Counts content and streams it on, or drops it once the transaction has failed.
    fn account(&mut self, content: Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if t.failed.is_some() || content.is_empty() {
            return;
        }
        t.size += content.len() as u64;
        if t.size > self.cfg.max_message_size {
            self.abort_txn_keep(reply::MESSAGE_TOO_BIG.into());
        } else {
            self.out.push_back(Action::Body(content));
        }
    }

    fn refuse_content(&mut self) {
        self.close_with(reply::BAD_DATA_ENDING.into());
    }

    fn scan_data(&mut self) -> bool {
        if self.buf.is_empty() {
            return false;
        }
        let mut content = Vec::with_capacity(self.buf.len());
        match self.scanner.scan(&self.buf, &mut content) {
            Scan::More => {
                self.buf.clear();
                self.account(content);
            }
            Scan::End(used) => {
                self.buf.drain(..used);
                self.account(content);
                self.state = State::Command;
                match self.txn.as_ref().and_then(|t| t.failed.clone()) {
                    Some(why) => {
                        self.txn = None;
                        self.send(why);
                    }
                    None => {
                        self.pending = Some(Pending::End);
                        self.out.push_back(Action::EndBody);
                    }
                }
            }
            Scan::Invalid => self.refuse_content(),
        }
        true
    }

    fn scan_bdat(&mut self) -> bool {
        let State::Bdat { remaining, last } = self.state else {
            return false;
        };
        let take = remaining.min(self.buf.len() as u64) as usize;
        if take == 0 && remaining > 0 {
            return false;
        }
        let chunk: Vec<u8> = self.buf.drain(..take).collect();
        let remaining = remaining - take as u64;
        self.state = State::Bdat { remaining, last };
        if self.chunk_refusal.is_none() {
            let complete = remaining == 0 && last;
            if !self.checker.check(&chunk) || (complete && self.checker.pending_cr()) {
                self.refuse_content();
                return true;
            }
            self.account(chunk);
        }
        if remaining > 0 {
            return true;
        }
        self.state = State::Command;
        let failed = self
            .chunk_refusal
            .take()
            .or_else(|| self.txn.as_ref().and_then(|t| t.failed.clone()));
        match failed {
            Some(why) => {
                if last && self.txn.take().is_some() {
                    self.out.push_back(Action::Abort);
                }
                self.send(why);
            }
            None if last => {
                self.pending = Some(Pending::End);
                self.out.push_back(Action::EndBody);
            }
            None => {
                let text = format!(
                    "{} octets received",
                    self.txn.as_ref().map_or(0, |t| t.size)
                );
                self.send(Reply::with_text(reply::CHUNK_OK, text));
            }
        }
        true
    }

    /// The `Received:` trace header (RFC 5321 section 4.4) prepended to every message.
    fn received_header(&self, now: SystemTime) -> Vec<u8> {
        let f = &self.facts;
        let t = self.txn.as_ref();
        let utf8 = t.is_some_and(|t| t.envelope.params.smtputf8);
        let protocol = match (utf8, self.esmtp, f.tls.is_some()) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, _) => "SMTP",
        };
        // RFC 3848: an `A` for an authenticated session.
        let auth = if f.auth.is_some() { "A" } else { "" };
        let helo: String = f
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .map(|c| {
                // What a domain or an address literal is made of; anything else (quotes, `;`,
                // `<`, comment parentheses, controls) would change how the header parses, and
                // 8-bit text belongs only in an SMTPUTF8 message.
                let fits = c.is_ascii_alphanumeric()
                    || matches!(c, '-' | '.' | '_' | ':' | '[' | ']')
                    || (utf8 && c.is_alphanumeric());
                if fits {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let mut h = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (Moat {}) with {protocol}{auth} id {}.{}",
            f.peer.ip(),
            self.cfg.hostname,
            self.cfg.node,
            f.id,
            self.transactions + 1,
        );
        if let Some(tls) = &f.tls {
            h.push_str(&format!(
                "\r\n\t(version={} cipher={}",
                tls.version, tls.cipher
            ));
            // Only a certificate whose chain verified reaches the facts.
            if let Some(name) = tls.client_domains.first() {
                h.push_str(&format!(" client-cert={name} verified"));
            }
            h.push(')');
        }
        if let Some(t) = t {
            if let [only] = t.recipients.as_slice() {
                h.push_str(&format!("\r\n\tfor <{only}>"));
            }
        }
        h.push_str(&format!("; {}\r\n", moat_shared::time::rfc5322_date(now)));
        h.into_bytes()
    }
}

/// Decodes a base64 AUTH response into UTF-8 text.
fn decode_b64(b64: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim_ascii())
        .ok()?;
    String::from_utf8(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The EHLO reply as the machine built it before the keyword lines were prepared per
    /// listener, for the same settings and session state.
    fn old_ehlo(cfg: &SessionConfig, starttls: bool, facts: &SessionFacts, name: &str) -> Reply {
        let mut lines = vec![
            format!("{} Hello {} [{}]", cfg.hostname, name, facts.peer.ip()),
            format!("SIZE {}", cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "PIPELINING".into(),
            "CHUNKING".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if starttls {
            lines.push("STARTTLS".into());
        }
        if cfg.auth && facts.tls.is_some() && facts.auth.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Reply::ehlo(lines)
    }

    fn rendered(r: &Reply) -> Vec<u8> {
        let mut out = Vec::new();
        r.render("edge-p", &mut out);
        out
    }

    /// The one reply the session sends next (answering requests as a successful driver would).
    fn next_reply(s: &mut Session) -> Reply {
        let now = SystemTime::UNIX_EPOCH;
        loop {
            match s.poll(now).expect("a reply") {
                Action::Send(r) => return r,
                Action::Authenticate { .. } => s.resolve(reply::AUTH_OK.into(), now),
                a => panic!("unexpected {a:?}"),
            }
        }
    }

    /// Sends `EHLO name` and checks the reply is byte for byte what the old builder gave.
    fn ehlo_as_before(s: &mut Session, name: &str) {
        s.receive(format!("EHLO {name}\r\n").as_bytes());
        let r = next_reply(s);
        let old = old_ehlo(&s.cfg, s.starttls, &s.facts, name);
        assert_eq!(
            rendered(&r),
            rendered(&old),
            "{}",
            String::from_utf8_lossy(&rendered(&r))
        );
        assert_eq!(r.summary(), old.summary());
        assert_eq!(r.text().collect::<Vec<_>>(), old.text().collect::<Vec<_>>());
    }

    #[test]
    fn prepared_replies_are_the_ones_built_per_session_before() {
        for (starttls, auth, ipv6) in [
            (false, false, false),
            (true, false, false),
            (false, true, true),
            (true, true, false),
            (true, true, true),
        ] {
            let cfg = SessionConfig {
                node: "edge-p".into(),
                hostname: "mx.prepared.test".into(),
                starttls,
                require_tls: auth,
                auth,
                max_message_size: 35_882_577,
                max_recipients: 100,
                max_errors: 10,
                max_line: 512,
                command_timeout: Duration::from_secs(60),
                forbid_unauth_pipelining: false,
            };
            let peer = if ipv6 {
                "[2001:db8::7]:4000"
            } else {
                "192.0.2.7:4000"
            };
            let facts = SessionFacts {
                id: "p1".into(),
                peer: peer.parse().expect("address"),
                local: "192.0.2.1:587".parse().expect("address"),
                listener: "submission".into(),
                tls: None,
                helo: None,
                auth: None,
            };
            let mut s = Session::new(cfg.clone(), facts);
            let greeting = Reply::with_text(
                reply::GREETING,
                format!("mx.prepared.test {}", reply::GREETING.text),
            );
            assert_eq!(rendered(&next_reply(&mut s)), rendered(&greeting));
            // In clear text, then again (a second EHLO), then inside TLS.
            ehlo_as_before(&mut s, "client.test");
            ehlo_as_before(&mut s, "[192.0.2.7]");
            if starttls {
                s.receive(b"STARTTLS\r\n");
                assert_eq!(next_reply(&mut s), reply::READY_TLS.into());
                assert_eq!(s.poll(SystemTime::UNIX_EPOCH), Some(Action::UpgradeTls));
            }
            s.tls_established(TlsFacts {
                version: "TLSv1.3".into(),
                cipher: "TLS_AES_128_GCM_SHA256".into(),
                client_domains: vec![],
            });
            ehlo_as_before(&mut s, "client.test");
            if auth {
                // AUTH is no longer offered once the session is logged in.
                s.receive(b"AUTH PLAIN AGFsaWNlAHJpZ2h0\r\n");
                assert_eq!(next_reply(&mut s), reply::AUTH_OK.into());
                ehlo_as_before(&mut s, "client.test");
            }
            // HELO's line is the same first line.
            s.receive(b"HELO old.client\r\n");
            let helo = Reply::with_text(
                reply::OK,
                format!("mx.prepared.test Hello old.client [{}]", s.facts.peer.ip()),
            );
            assert_eq!(next_reply(&mut s), helo);
        }
    }

    #[test]
    fn a_long_command_line_buffer_is_not_kept() {
        let mut s = Session::new(
            SessionConfig {
                node: "n".into(),
                hostname: "h".into(),
                starttls: false,
                require_tls: false,
                auth: false,
                max_message_size: 1000,
                max_recipients: 1,
                max_errors: 10,
                max_line: 512,
                command_timeout: Duration::from_secs(60),
                forbid_unauth_pipelining: false,
            },
            SessionFacts {
                id: "l1".into(),
                peer: "192.0.2.7:4000".parse().expect("address"),
                local: "192.0.2.1:25".parse().expect("address"),
                listener: "mx".into(),
                tls: None,
                helo: None,
                auth: None,
            },
        );
        next_reply(&mut s);
        s.receive(b"NOOP\r\n");
        assert_eq!(next_reply(&mut s), reply::OK.into());
        assert!(s.line.capacity() > 0 && s.line.capacity() <= KEPT_LINE);
        let mut long = vec![b'x'; 4000];
        long.extend_from_slice(b"\r\n");
        s.receive(&long);
        assert_eq!(next_reply(&mut s), reply::LINE_TOO_LONG.into());
        assert_eq!(s.line.capacity(), 0);
        s.receive(b"NOOP\r\n");
        assert_eq!(next_reply(&mut s), reply::OK.into());
    }
}
