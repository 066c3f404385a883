//! `moat bench sink`: an SMTP server that answers `250` to everything and discards the
//! content, so that a benchmark measures the edge and not its next hop.

use anyhow::Context as _;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub(super) async fn sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = sink_session(tcp).await;
        });
    }
}

pub(super) async fn sink_session(tcp: TcpStream) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let upper = line
            .iter()
            .take(4)
            .map(u8::to_ascii_uppercase)
            .collect::<Vec<_>>();
        match &upper[..] {
            b"EHLO" => out.extend_from_slice(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            b"DATA" => {
                // Replies to the commands pipelined before DATA go first.
                out.extend_from_slice(b"354 go ahead\r\n");
                w.write_all(&out).await?;
                out.clear();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                }
                out.extend_from_slice(b"250 2.0.0 discarded\r\n");
            }
            b"QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => out.extend_from_slice(b"250 2.0.0 ok\r\n"),
        }
        // Pipelined commands are answered together.
        if r.buffer().is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
    }
}
