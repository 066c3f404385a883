//! The control-plane client that `moat admin`, `moat dev` and `moat bench` share.
//!
//! - Discovery: the endpoints, token and admin certificate come from flags, then the
//!   environment (`MOAT_ENDPOINT`, `MOAT_TOKEN`, `MOAT_TLS_*`), then a `moat dev` data
//!   directory's `endpoints.json`.
//! - Calls: one connection per call (mutual TLS when the admin certificate is known, a bearer
//!   token always). Writes carry a random request id, so a write retried on another node
//!   applies once. A follower answers UNAVAILABLE with the leader's address in the
//!   `moat-leader` metadata and the call follows it; without a hint, or when a node cannot be
//!   reached, the next known endpoint is tried with a backoff, for about 15 seconds.
//! - Failures: [`Failure`] sorts every error into the kind that decides `moat admin`'s exit
//!   code (refused 1, usage 2, authentication 3, unreachable 4, anything else 5).

use std::fmt::Write as _;
use std::future::Future;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_proto::admin_client::AdminClient;
use moat_proto::mtls::InternalTls;
use moat_proto::write_request::Op;
use moat_proto::{ClusterRequest, ClusterStatus, ReadReply, ReadRequest, WriteReply, WriteRequest};
use moat_shared::time::now_ms;
use serde_json::Value;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long retries of one call may go on.
const RETRY_BUDGET: Duration = Duration::from_secs(15);

/// How long one attempt on one node may take before the next node is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// First pause between retries; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);

/// Longest pause between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Leader hints followed in a row before backing off (hints can be stale during elections).
const MAX_REDIRECTS: u32 = 3;

const NO_CONTROL_PLANE: &str = "no control plane found: pass --endpoint and --token (or \
    MOAT_ENDPOINT/MOAT_TOKEN), or run it next to a 'moat dev' data directory \
    (DIR/endpoints.json)";

/// Why a command failed; each kind has its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The control plane refused the request (exit 1).
    Refused(String),
    /// The command line is wrong in a way clap cannot tell (exit 2).
    Usage(String),
    /// Authentication or authorization failed (exit 3).
    Auth { message: String, hint: &'static str },
    /// No control plane was given or found, or no node could serve the request in time
    /// (exit 4).
    Unreachable(String),
    /// Anything else (exit 5).
    Other(String),
}

impl Failure {
    /// The exit code `moat admin` ends with.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Self::Refused(_) => 1,
            Self::Usage(_) => 2,
            Self::Auth { .. } => 3,
            Self::Unreachable(_) => 4,
            Self::Other(_) => 5,
        }
    }

    /// Writes the failure (and a hint where one helps) to standard error.
    pub(crate) fn report(&self) {
        match self {
            Self::Refused(m) | Self::Usage(m) | Self::Unreachable(m) | Self::Other(m) => {
                eprintln!("error: {m}")
            }
            Self::Auth { message, hint } => {
                eprintln!("error: {message}");
                eprintln!("hint: {hint}");
            }
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) | Self::Usage(m) | Self::Unreachable(m) | Self::Other(m) => {
                f.write_str(m)
            }
            Self::Auth { message, hint } => write!(f, "{message} (hint: {hint})"),
        }
    }
}

/// What to check when the token is refused.
const TOKEN_HINT: &str = "check --token (or MOAT_TOKEN, or the token in DIR/endpoints.json); \
    an operator can create one with `moat admin token create`";

/// What admin calls need when the certificate is missing or refused.
const TLS_HINT: &str = "admin calls need mutual TLS: pass --tls-ca, --tls-cert and --tls-key (or \
    MOAT_TLS_CA, MOAT_TLS_CERT, MOAT_TLS_KEY) with a moat-admin certificate from the cluster's CA \
    (`moat cert issue --role admin`); `moat dev` lists its own in DIR/endpoints.json";

/// What a token of too small a role can do instead.
const ROLE_HINT: &str = "the token's role does not allow this: readers cannot change anything, \
    and tenant-admin tokens only reach their own tenant (pass --tenant)";

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let message = if s.message().is_empty() {
            format!("{:?}", s.code())
        } else {
            s.message().to_string()
        };
        match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists => Self::Refused(message),
            Code::Unauthenticated | Code::PermissionDenied
                if message.contains("certificate") || message.contains("TLS") =>
            {
                Self::Auth {
                    message,
                    hint: TLS_HINT,
                }
            }
            Code::Unauthenticated => Self::Auth {
                message,
                hint: TOKEN_HINT,
            },
            Code::PermissionDenied => Self::Auth {
                message,
                hint: ROLE_HINT,
            },
            Code::Unavailable => Self::Unreachable(message),
            // What a TLS server's first bytes look like to a plaintext HTTP/2 client.
            Code::Internal if message.contains("h2 protocol error") => Self::Auth {
                message: format!(
                    "the control node does not speak plaintext gRPC ({message}); it serves \
                     mutual TLS"
                ),
                hint: TLS_HINT,
            },
            code => Self::Other(format!("{code:?}: {message}")),
        }
    }
}

/// A control plane to call from inside Moat (`moat dev`'s set-up, `moat bench`): its
/// addresses (`https://host:port`, `http://host:port` or `host:port`), an operator token and
/// the admin TLS material.
#[derive(Clone, Debug)]
pub struct Target {
    /// Control-plane addresses.
    pub endpoints: Vec<String>,
    /// The bearer token.
    pub token: String,
    /// An admin certificate (`moat-admin`), the cluster's CA.
    pub tls: Option<InternalTls>,
}

impl Target {
    fn client(&self) -> Result<Client, String> {
        let mut urls = Vec::new();
        for e in &self.endpoints {
            push_unique(&mut urls, normalize_endpoint(e)?);
        }
        if urls.is_empty() {
            return Err("no control-plane endpoint to call".into());
        }
        Client::new(urls, &self.token, self.tls.clone()).map_err(|f| f.to_string())
    }
}

/// The control plane a `moat dev` data directory's `endpoints.json` names, with its token
/// and admin certificate (for `moat bench`).
pub fn dev_target(dir: &Path) -> Result<Target, String> {
    let found = read_discovery(dir)
        .map_err(|f| f.to_string())?
        .ok_or_else(|| format!("no control plane in {}/endpoints.json", dir.display()))?;
    let tls = match found.tls {
        Some((ca, cert, key)) => {
            Some(InternalTls::load(&ca, &cert, &key).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    Ok(Target {
        endpoints: found.endpoints,
        token: found.token.ok_or("no admin token in endpoints.json")?,
        tls,
    })
}

/// Creates or replaces an SMTP AUTH user, following the leader and retrying like `moat admin`
/// does (`moat dev` creates its demo user with it).
pub async fn put_user(
    target: &Target,
    tenant: &str,
    address: &str,
    password: &str,
) -> Result<(), String> {
    let op = Op::PutUser(moat_proto::UserSpec {
        tenant: tenant.to_string(),
        address: address.to_string(),
        password: password.to_string(),
        send_as: vec![],
    });
    write_op(target, op)
        .await
        .map_err(|e| format!("creating user {address} in tenant {tenant}: {e}"))
}

/// One admin write with the usual retries and leader-following (for `moat dev`'s set-up).
pub async fn write_op(target: &Target, op: Op) -> Result<(), String> {
    write_op_index(target, op).await.map(|_| ())
}

/// [`write_op`], returning the index the write was committed at.
pub async fn write_op_index(target: &Target, op: Op) -> Result<u64, String> {
    target
        .client()?
        .write(op)
        .await
        .map(|r| r.index)
        .map_err(|f| f.to_string())
}

/// One read from the control plane (following the leader), for `moat bench`.
pub async fn read_op(target: &Target, req: ReadRequest) -> Result<ReadReply, String> {
    target.client()?.read(req).await.map_err(|f| f.to_string())
}

/// Turns `host:port` into `http://host:port`; keeps an explicit scheme; drops trailing `/`.
fn normalize_endpoint(raw: &str) -> Result<String, String> {
    let s = raw.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err(format!("invalid endpoint {raw:?}: empty"));
    }
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    Endpoint::from_shared(url.clone()).map_err(|e| format!("invalid endpoint {raw:?}: {e}"))?;
    Ok(url)
}

/// Splits a comma-separated endpoint list and normalises each one.
fn parse_endpoint_list(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
        push_unique(&mut out, normalize_endpoint(part)?);
    }
    Ok(out)
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The `admin` part of `DIR/endpoints.json`.
#[derive(Debug, Default, PartialEq)]
struct Discovered {
    endpoints: Vec<String>,
    token: Option<String>,
    /// The admin certificate's files: (CA, certificate, key).
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// Extracts the admin endpoints and token from the text of `endpoints.json`.
fn parse_discovery(text: &str) -> Result<Option<Discovered>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(admin) = v.get("admin").filter(|a| a.is_object()) else {
        return Ok(None);
    };
    let mut found = Discovered::default();
    let first = admin.get("endpoint").and_then(Value::as_str);
    let rest = admin
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for e in first.into_iter().chain(rest) {
        push_unique(&mut found.endpoints, normalize_endpoint(e)?);
    }
    found.token = admin
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let file = |k: &str| {
        admin
            .get("tls")
            .and_then(|t| t.get(k))
            .and_then(Value::as_str)
            .map(PathBuf::from)
    };
    found.tls = match (file("ca"), file("cert"), file("key")) {
        (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
        _ => None,
    };
    Ok(Some(found))
}

fn read_discovery(dir: &Path) -> Result<Option<Discovered>, Failure> {
    let path = dir.join("endpoints.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::Other(format!("reading {}: {e}", path.display()))),
    };
    parse_discovery(&text).map_err(|e| Failure::Other(format!("in {}: {e}", path.display())))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Where the command line says the control plane is; the environment (`MOAT_ENDPOINT`,
/// `MOAT_TOKEN`, `MOAT_TLS_*`) and `DIR/endpoints.json` fill what it leaves out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TargetFlags<'a> {
    /// `--endpoint`: comma-separated control-plane addresses.
    pub(crate) endpoint: &'a Option<String>,
    /// `--token`: the bearer token.
    pub(crate) token: &'a Option<String>,
    /// `--tls-ca`: the cluster's internal CA.
    pub(crate) tls_ca: &'a Option<PathBuf>,
    /// `--tls-cert`: an admin certificate.
    pub(crate) tls_cert: &'a Option<PathBuf>,
    /// `--tls-key`: its private key.
    pub(crate) tls_key: &'a Option<PathBuf>,
    /// `--data`: a `moat dev` data directory holding `endpoints.json`.
    pub(crate) data: &'a Path,
}

/// The endpoints to try, in order, and the token.
pub(crate) fn resolve_target(
    args: TargetFlags<'_>,
) -> Result<(Vec<String>, String, Option<InternalTls>), Failure> {
    let explicit = args
        .endpoint
        .clone()
        .or_else(|| env_nonempty("MOAT_ENDPOINT"));
    let mut token = args.token.clone().or_else(|| env_nonempty("MOAT_TOKEN"));
    let path = |flag: &Option<PathBuf>, env: &str| {
        flag.clone()
            .or_else(|| env_nonempty(env).map(PathBuf::from))
    };
    let mut tls_files = match (
        path(args.tls_ca, "MOAT_TLS_CA"),
        path(args.tls_cert, "MOAT_TLS_CERT"),
        path(args.tls_key, "MOAT_TLS_KEY"),
    ) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
        _ => {
            return Err(Failure::Other(
                "--tls-ca, --tls-cert and --tls-key (or MOAT_TLS_CA, MOAT_TLS_CERT and \
                 MOAT_TLS_KEY) go together"
                    .into(),
            ))
        }
    };
    let mut endpoints = match &explicit {
        Some(raw) => parse_endpoint_list(raw).map_err(Failure::Other)?,
        None => Vec::new(),
    };
    if endpoints.is_empty() || token.is_none() {
        if let Some(found) = read_discovery(args.data)? {
            // The dev token only goes to the dev cluster's own nodes.
            let same_cluster =
                endpoints.is_empty() || endpoints.iter().any(|e| found.endpoints.contains(e));
            if token.is_none() && same_cluster {
                token = found.token;
            }
            if tls_files.is_none() && same_cluster {
                tls_files = found.tls;
            }
            if endpoints.is_empty() {
                endpoints = found.endpoints;
            }
        }
    }
    if endpoints.is_empty() {
        return Err(Failure::Unreachable(NO_CONTROL_PLANE.into()));
    }
    let Some(token) = token else {
        return Err(Failure::Auth {
            message: "no admin token: pass --token or set MOAT_TOKEN".into(),
            hint: TOKEN_HINT,
        });
    };
    let tls = match tls_files {
        Some((ca, cert, key)) => {
            let tls = InternalTls::load(&ca, &cert, &key).map_err(|e| Failure::Auth {
                message: e.to_string(),
                hint: TLS_HINT,
            })?;
            if tls.role() != moat_proto::mtls::Role::Admin {
                return Err(Failure::Auth {
                    message: format!(
                        "{} is a {} certificate; admin calls need a moat-admin one",
                        cert.display(),
                        tls.role()
                    ),
                    hint: TLS_HINT,
                });
            }
            Some(tls)
        }
        None => None,
    };
    Ok((endpoints, token, tls))
}

/// 16 random bytes, hex: the id that makes retried writes apply once.
fn new_request_id() -> String {
    random_hex(16)
}

/// `n` random bytes from the OS, hex (falls back to std's per-process random hasher keys).
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !from_os {
        use std::hash::BuildHasher as _;
        let seed = (now_ms(), std::process::id());
        let state = std::collections::hash_map::RandomState::new();
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let h = state.hash_one((seed, i)).to_le_bytes();
            chunk.copy_from_slice(&h[..chunk.len()]);
        }
    }
    hex(&buf)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Failures worth another attempt: the node is unavailable, or the call never got an answer.
fn retryable(s: &Status) -> bool {
    // Errors raised on this side (connect, timeout, broken connection) carry a source; statuses
    // a server sent do not.
    let local = std::error::Error::source(s).is_some();
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Cancelled | Code::Unknown => local,
        _ => false,
    }
}

/// The leader's address from a follower's UNAVAILABLE answer.
fn leader_hint(s: &Status) -> Option<String> {
    if s.code() != Code::Unavailable {
        return None;
    }
    let raw = s.metadata().get("moat-leader")?.to_str().ok()?;
    normalize_endpoint(raw).ok()
}

/// A connection-per-call gRPC client that follows the leader and retries.
pub(crate) struct Client {
    endpoints: Vec<String>,
    auth: MetadataValue<Ascii>,
    tls: Option<InternalTls>,
}

impl Client {
    /// A client of `endpoints` (normalised URLs, tried in order) with a bearer `token`;
    /// refuses a token that cannot be an HTTP header.
    pub(crate) fn new(
        endpoints: Vec<String>,
        token: &str,
        tls: Option<InternalTls>,
    ) -> Result<Self, Failure> {
        let auth = format!("Bearer {}", token.trim())
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| Failure::Auth {
                message: "the admin token contains characters not allowed in a header".into(),
                hint: TOKEN_HINT,
            })?;
        Ok(Self {
            endpoints,
            auth,
            tls,
        })
    }

    fn request<M>(&self, msg: M) -> tonic::Request<M> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", self.auth.clone());
        req
    }

    async fn connect(&self, url: &str) -> Result<AdminClient<Channel>, String> {
        let endpoint = moat_proto::mtls::endpoint(url, self.tls.as_ref())
            .map_err(|e| error_chain(&e))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
        Ok(AdminClient::new(channel))
    }

    /// Calls `f` on a client of some node until it answers, following leader hints and
    /// cycling through the known endpoints with backoff for at most [`RETRY_BUDGET`].
    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, Failure>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut backoff = BACKOFF_START;
        let mut next = 0usize;
        let mut target = self.endpoints.first().cloned().unwrap_or_default();
        let mut tried: Vec<String> = Vec::new();
        let mut redirects = 0u32;
        let mut last_error;
        loop {
            push_unique(&mut tried, target.clone());
            // One node may not take the whole budget: a frozen node accepts the TCP connection
            // and never answers. Retrying a write is safe (its request id makes it apply once).
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .min(ATTEMPT_TIMEOUT);
            let attempt = async {
                let client = self.connect(&target).await.map_err(Err)?;
                f(client).await.map_err(Ok)
            };
            match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(Ok(status))) => {
                    if let Some(leader) = leader_hint(&status) {
                        if leader != target && redirects < MAX_REDIRECTS {
                            redirects += 1;
                            target = leader;
                            continue;
                        }
                    }
                    if !retryable(&status) {
                        return Err(status.into());
                    }
                    last_error = format!("{target}: {}", status_text(&status));
                }
                Ok(Err(Err(connect_error))) => {
                    // A certificate the other side refuses stays refused: no retries.
                    if connect_error.contains("certificate") {
                        return Err(Failure::Auth {
                            message: format!("{target}: {connect_error}"),
                            hint: TLS_HINT,
                        });
                    }
                    last_error = format!("{target}: {connect_error}");
                }
                Err(_) => last_error = format!("{target}: timed out"),
            }
            if Instant::now() + backoff >= deadline {
                return Err(Failure::Unreachable(format!(
                    "control plane unavailable after {}s; tried {}; last error: {last_error}",
                    RETRY_BUDGET.as_secs(),
                    tried.join(", ")
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            redirects = 0;
            next = (next + 1) % self.endpoints.len().max(1);
            if let Some(e) = self.endpoints.get(next) {
                target = e.clone();
            }
        }
    }

    /// One write on the leader, with a fresh request id kept across retries.
    pub(crate) async fn write(&self, op: Op) -> Result<WriteReply, Failure> {
        let msg = WriteRequest {
            request_id: new_request_id(),
            op: Some(op),
        };
        self.call(|mut c| {
            let req = self.request(msg.clone());
            async move { c.write(req).await }
        })
        .await
    }

    /// One read (on the leader unless `stale_ok`).
    pub(crate) async fn read(&self, msg: ReadRequest) -> Result<ReadReply, Failure> {
        self.call(|mut c| {
            let req = self.request(msg.clone());
            async move { c.read(req).await }
        })
        .await
    }

    /// The contacted node's view of the cluster.
    pub(crate) async fn cluster(&self) -> Result<ClusterStatus, Failure> {
        self.call(|mut c| {
            let req = self.request(ClusterRequest {});
            async move { c.cluster(req).await }
        })
        .await
    }
}

fn status_text(s: &Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {}", s.code(), s.message())
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7000").as_deref(),
            Ok("http://127.0.0.1:7000")
        );
        assert_eq!(
            normalize_endpoint(" http://node1:7000/ ").as_deref(),
            Ok("http://node1:7000")
        );
        assert_eq!(
            normalize_endpoint("https://cp.example:443").as_deref(),
            Ok("https://cp.example:443")
        );
        assert_eq!(
            normalize_endpoint("[::1]:7000").as_deref(),
            Ok("http://[::1]:7000")
        );
        assert!(normalize_endpoint("").is_err());
        assert!(normalize_endpoint("http://bad host").is_err());
        assert_eq!(
            parse_endpoint_list("a:1, http://b:2,,a:1").unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
    }

    #[test]
    fn discovery_reads_the_admin_section() {
        let text = r#"{"edges": [], "admin": {"endpoint": "http://127.0.0.1:7001",
            "endpoints": ["http://127.0.0.1:7001", "127.0.0.1:7002"], "token": "tok"}}"#;
        let d = parse_discovery(text).unwrap().unwrap();
        assert_eq!(
            d.endpoints,
            vec!["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
        );
        assert_eq!(d.token.as_deref(), Some("tok"));
        assert_eq!(parse_discovery(r#"{"admin": null}"#).unwrap(), None);
        assert_eq!(parse_discovery(r#"{"edges": []}"#).unwrap(), None);
        assert!(parse_discovery("not json").is_err());
    }

    #[test]
    fn status_codes_map_to_exit_codes() {
        assert_eq!(Failure::from(Status::not_found("x")).exit_code(), 1);
        assert_eq!(Failure::from(Status::invalid_argument("x")).exit_code(), 1);
        assert_eq!(Failure::from(Status::already_exists("x")).exit_code(), 1);
        assert_eq!(
            Failure::from(Status::failed_precondition("x")).exit_code(),
            1
        );
        assert_eq!(Failure::from(Status::unauthenticated("x")).exit_code(), 3);
        assert_eq!(Failure::from(Status::permission_denied("x")).exit_code(), 3);
        assert_eq!(Failure::from(Status::unavailable("x")).exit_code(), 4);
        assert_eq!(Failure::from(Status::internal("x")).exit_code(), 5);
        assert_eq!(Failure::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn leader_hint_and_retryability() {
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut()
            .insert("moat-leader", "10.0.0.2:7000".parse().unwrap());
        assert_eq!(leader_hint(&s).as_deref(), Some("http://10.0.0.2:7000"));
        assert!(retryable(&s));
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
        // A server's own statuses carry no source: not retried.
        assert!(!retryable(&Status::cancelled("x")));
        assert!(!retryable(&Status::not_found("x")));
        assert!(retryable(&Status::deadline_exceeded("x")));
    }

    #[test]
    fn request_ids_are_random_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn put_user_rejects_bad_endpoints_without_retrying() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let target = |endpoints: &[&str], token: &str| Target {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            token: token.into(),
            tls: None,
        };
        let err = rt
            .block_on(put_user(&target(&[], "tok"), "t", "a@t", "pw"))
            .unwrap_err();
        assert!(err.contains("no control-plane endpoint"), "{err}");
        let err = rt
            .block_on(put_user(
                &target(&["http://bad host"], "tok"),
                "t",
                "a@t",
                "pw",
            ))
            .unwrap_err();
        assert!(err.contains("invalid endpoint"), "{err}");
        let err = rt
            .block_on(put_user(
                &target(&["127.0.0.1:1"], "bad\ntoken"),
                "t",
                "a@t",
                "pw",
            ))
            .unwrap_err();
        assert!(err.contains("token"), "{err}");
    }
}
