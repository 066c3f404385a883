//! The embedded maildir sink.
//!
//! Each recipient has a maildir at `ROOT/<domain>/<local-part>/{tmp,new,cur}`. The local part is
//! percent-encoded except for `[A-Za-z0-9_+=-]` and non-leading dots, so no address can name a
//! path outside the root. A message is written once into the first recipient's `tmp/`,
//! `fsync`ed, hard-linked into every recipient's `new/` (each directory `fsync`ed), and the
//! `tmp/` name removed: a reader never sees a partial message, and once `250` is sent the
//! message is on disk. The file starts with `Return-Path: <sender>` (`<>` for the null sender),
//! as an MTA delivering to a mailbox writes it (RFC 5321 section 4.4).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::io::AsyncWriteExt;

use crate::session::command::Address;
use crate::session::reply::{self, Reply};

/// The sink: a root directory.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    host: String,
    seq: AtomicU64,
}

impl Maildir {
    /// Whether the root directory exists (it is created at start).
    pub async fn probe(&self) -> Result<String, String> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => Ok(format!("{} is a directory", self.root.display())),
            Ok(_) => Err(format!("{} is not a directory", self.root.display())),
            Err(e) => Err(format!("{}: {e}", self.root.display())),
        }
    }

    /// A sink writing below `root`.
    pub fn new(root: PathBuf) -> Self {
        let host = std::env::var("HOSTNAME")
            .unwrap_or_else(|_| "moat".into())
            .replace('/', "\\057")
            .replace(':', "\\072");
        Self {
            root,
            host,
            seq: AtomicU64::new(0),
        }
    }

    /// Starts a transaction for a message from `from` (`None`: the null sender `<>`).
    pub fn open(&self, from: Option<&Address>) -> MaildirTxn {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed),
            self.host
        );
        MaildirTxn {
            root: self.root.clone(),
            name,
            return_path: return_path(from),
            boxes: Vec::new(),
            file: None,
            failed: None,
        }
    }
}

/// The directory of `to`'s maildir below `root`.
pub fn mailbox_dir(root: &Path, to: &Address) -> PathBuf {
    let mut local = String::new();
    for (i, b) in to.local.to_lowercase().bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b"_+=-".contains(&b) || (b == b'.' && i > 0);
        if keep {
            local.push(b as char);
        } else {
            local.push_str(&format!("%{b:02X}"));
        }
    }
    // Domains are validated (letters, digits, hyphens, dots, UTF-8) or address literals.
    let domain: String = to
        .domain
        .chars()
        .map(|c| if c == '/' || c == ':' { '_' } else { c })
        .collect();
    root.join(domain).join(local)
}

/// The `Return-Path:` header a delivering MTA puts first (RFC 5321 section 4.4): the envelope
/// sender, `<>` for the null sender, so the mailbox keeps where bounces go.
pub fn return_path(from: Option<&Address>) -> String {
    match from {
        Some(a) => format!("Return-Path: <{a}>\r\n"),
        None => "Return-Path: <>\r\n".to_owned(),
    }
}

/// A message being written.
#[derive(Debug)]
pub struct MaildirTxn {
    root: PathBuf,
    name: String,
    /// The `Return-Path:` line written first.
    return_path: String,
    boxes: Vec<PathBuf>,
    file: Option<(PathBuf, tokio::io::BufWriter<tokio::fs::File>)>,
    failed: Option<std::io::Error>,
}

impl MaildirTxn {
    /// Adds a recipient (the policy has already accepted it).
    pub fn rcpt(&mut self, to: &Address) -> Reply {
        let dir = mailbox_dir(&self.root, to);
        if !self.boxes.contains(&dir) {
            self.boxes.push(dir);
        }
        reply::RECIPIENT_OK.into()
    }

    /// Creates the maildirs and the temporary file.
    pub async fn start_body(&mut self) -> Reply {
        let result = async {
            for b in &self.boxes {
                for sub in ["tmp", "new", "cur"] {
                    tokio::fs::create_dir_all(b.join(sub)).await?;
                }
            }
            let first = self.boxes.first().ok_or(std::io::ErrorKind::InvalidInput)?;
            let path = first.join("tmp").join(&self.name);
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await?;
            let mut w = tokio::io::BufWriter::with_capacity(256 * 1024, f);
            w.write_all(self.return_path.as_bytes()).await?;
            Ok::<_, std::io::Error>((path, w))
        }
        .await;
        match result {
            Ok(f) => {
                self.file = Some(f);
                reply::START_DATA.into()
            }
            Err(e) => {
                tracing::error!(error = %e, "maildir: cannot start message");
                reply::LOCAL_ERROR.into()
            }
        }
    }

    /// Appends content.
    pub async fn body(&mut self, content: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Some((_, f)) = self.file.as_mut() {
            if let Err(e) = f.write_all(content).await {
                self.failed = Some(e);
            }
        }
    }

    /// Makes the message durable and visible in every recipient's `new/`.
    pub async fn finish(mut self) -> Reply {
        let Some((tmp, mut f)) = self.file.take() else {
            return reply::LOCAL_ERROR.into();
        };
        let written = async {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            f.flush().await?;
            f.get_ref().sync_all().await
        }
        .await;
        drop(f);
        let boxes = std::mem::take(&mut self.boxes);
        let name = self.name.clone();
        let tmp2 = tmp.clone();
        let published = match written {
            Ok(()) => tokio::task::spawn_blocking(move || publish(&tmp2, &boxes, &name))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        match published {
            Ok(()) => Reply::with_text(
                reply::MESSAGE_ACCEPTED,
                format!("Message accepted for delivery ({})", self.name),
            ),
            Err(e) => {
                tracing::error!(error = %e, "maildir: delivery failed");
                reply::LOCAL_ERROR.into()
            }
        }
    }

    /// Removes the partial file.
    pub async fn abort(mut self) {
        if let Some((tmp, f)) = self.file.take() {
            drop(f);
            let _ = tokio::fs::remove_file(tmp).await;
        }
    }
}

/// Links `tmp` into each maildir's `new/` and syncs the directories; undoes the links made if
/// one fails, so a message is delivered to all recipients or to none.
fn publish(tmp: &Path, boxes: &[PathBuf], name: &str) -> std::io::Result<()> {
    let mut made = Vec::new();
    let result = (|| {
        for b in boxes {
            let new_dir = b.join("new");
            let target = new_dir.join(name);
            std::fs::hard_link(tmp, &target)?;
            made.push(target);
            std::fs::File::open(&new_dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        for m in made {
            let _ = std::fs::remove_file(m);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts_cannot_escape_the_root() {
        let root = Path::new("/r");
        let a = |l: &str| Address {
            local: l.into(),
            domain: "x.test".into(),
        };
        assert_eq!(
            mailbox_dir(root, &a("Alice.B")),
            Path::new("/r/x.test/alice.b")
        );
        assert_eq!(
            mailbox_dir(root, &a("../../etc")),
            Path::new("/r/x.test/%2E.%2F..%2Fetc")
        );
        assert_eq!(
            mailbox_dir(root, &a("\"a/b\"")),
            Path::new("/r/x.test/%22a%2Fb%22")
        );
        assert_eq!(
            mailbox_dir(root, &a("josé")),
            Path::new("/r/x.test/jos%C3%A9")
        );
    }

    #[tokio::test]
    async fn delivered_files_start_with_the_return_path() {
        let root = std::env::temp_dir().join(format!("moat-maildir-rp-{}", std::process::id()));
        let sink = Maildir::new(root.clone());
        let to = Address {
            local: "alice".into(),
            domain: "x.test".into(),
        };
        let from = Address {
            local: "bob".into(),
            domain: "y.test".into(),
        };
        for (sender, want) in [
            (Some(&from), "Return-Path: <bob@y.test>\r\n"),
            (None, "Return-Path: <>\r\n"),
        ] {
            let mut txn = sink.open(sender);
            assert!(txn.rcpt(&to).is_positive());
            assert_eq!(txn.start_body().await.code, 354);
            txn.body(b"Subject: x\r\n\r\nhi\r\n").await;
            let name = txn.name.clone();
            assert_eq!(txn.finish().await.code, 250);
            let file = std::fs::read(mailbox_dir(&root, &to).join("new").join(name)).expect("file");
            assert_eq!(
                String::from_utf8_lossy(&file),
                format!("{want}Subject: x\r\n\r\nhi\r\n")
            );
        }
        let _ = std::fs::remove_dir_all(root);
    }
}
