//! The HTTP/1.1 side of the test doubles of remote APIs
//! (`AwsSecretsDouble`, `AwsApiDouble`): one thread accepts; each
//! connection is served on its own thread, one request (its head and a
//! `Content-Length` body), one answer, then closed. The double's logic is
//! a function from the request to the answer. Stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bodies longer than this are cut (the doubles' requests are small).
const MAXIMUM_BODY_BYTES: usize = 1 << 20;

/// One request as a double received it.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedRequest {
    /// Who connected: in the testbed, the instance's address.
    pub peer: SocketAddr,
    pub method: String,
    /// The request target as sent (`/path?query`).
    pub target: String,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A double's answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// How often the accepting thread looks for a connection.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

type Handler = dyn Fn(&ReceivedRequest) -> Answer + Send + Sync;

/// The running server; stops when dropped.
pub(crate) struct DoubleServer {
    address: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DoubleServer {
    pub fn start(listener: TcpListener, handler: Arc<Handler>) -> std::io::Result<DoubleServer> {
        let address = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let accepting = stopping.clone();
        // Polled rather than blocking in accept: the address may be gone by
        // the time the double stops (a testbed bridge shut down first), and
        // then no connection could wake a blocked accept.
        listener.set_nonblocking(true)?;
        let thread = std::thread::spawn(move || {
            while !accepting.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let handler = handler.clone();
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = serve(stream, &*handler);
                        });
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(ACCEPT_POLL);
                    }
                    Err(_) => std::thread::sleep(ACCEPT_POLL),
                }
            }
        });
        Ok(DoubleServer {
            address,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for DoubleServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, length)| length.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length.min(MAXIMUM_BODY_BYTES)];
    reader.read_exact(&mut body)?;
    let answer = handler(&ReceivedRequest {
        peer,
        method,
        target,
        headers,
        body,
    });
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        answer.status,
        answer.content_type,
        answer.body.len(),
        answer.body
    )?;
    stream.flush()
}
