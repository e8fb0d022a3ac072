//! A small TCP load balancer for tests of server replicas: it accepts on a
//! free loopback port and forwards each connection, bytes as they are, to
//! the next backend in round-robin order that accepts a connection,
//! skipping the ones that refuse (a killed replica), as HAProxy or an AWS
//! NLB with health checks would. TLS passes through untouched, so agents
//! authenticate to the replica itself.
//!
//! Threads, not tasks: two per forwarded connection, which tests with a
//! handful of agents can afford, and no runtime to share with the test.
//! When a backend dies its connections are closed on the client's side too,
//! so clients reconnect (through the proxy, to another backend).

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the proxy waits for a backend to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    stopping: AtomicBool,
    /// How many connections went to each backend, by address.
    forwarded: Mutex<Vec<(SocketAddr, usize)>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `backends`.
    pub fn start(backends: Vec<SocketAddr>) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backends: Mutex::new(backends),
            next: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            forwarded: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tcp-proxy".into())
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(TcpProxy {
            address,
            shared,
            accept: Some(accept),
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Replaces the list of backends (for connections made from now on).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.shared.backends.lock().expect("backends lock") = backends;
    }

    /// How many connections were forwarded to `backend` so far.
    pub fn forwarded_to(&self, backend: SocketAddr) -> usize {
        self.shared
            .forwarded
            .lock()
            .expect("forwarded lock")
            .iter()
            .find(|(address, _)| *address == backend)
            .map_or(0, |(_, count)| *count)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees it is stopping.
        let _ = TcpStream::connect_timeout(&self.address, CONNECT_TIMEOUT);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("tcp-proxy-conn".into())
            .spawn(move || {
                if let Some(backend) = connect_to_a_backend(&shared) {
                    forward(client, backend);
                }
                // No backend accepts: the client's connection is closed.
            });
    }
}

/// The next backend, round-robin, that accepts a connection.
fn connect_to_a_backend(shared: &Shared) -> Option<TcpStream> {
    let backends = shared.backends.lock().expect("backends lock").clone();
    if backends.is_empty() {
        return None;
    }
    let start = shared.next.fetch_add(1, Ordering::Relaxed);
    for offset in 0..backends.len() {
        let address = backends[(start + offset) % backends.len()];
        if let Ok(stream) = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            let mut forwarded = shared.forwarded.lock().expect("forwarded lock");
            match forwarded.iter_mut().find(|(a, _)| *a == address) {
                Some((_, count)) => *count += 1,
                None => forwarded.push((address, 1)),
            }
            return Some(stream);
        }
    }
    None
}

/// Copies bytes both ways until either side ends, then closes both.
fn forward(client: TcpStream, backend: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let (Ok(client_reader), Ok(backend_reader)) = (client.try_clone(), backend.try_clone()) else {
        return;
    };
    let upstream = std::thread::Builder::new()
        .name("tcp-proxy-up".into())
        .spawn(move || copy_then_close(client_reader, backend));
    copy_then_close(backend_reader, client);
    if let Ok(upstream) = upstream {
        let _ = upstream.join();
    }
}

/// Copies `from` into `to`; when `from` ends or fails, both are shut down
/// so the other direction ends too.
fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that answers each connection with its name, then closes.
    fn named_backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                stream.write_all(name.as_bytes()).unwrap();
            }
        });
        (address, handle)
    }

    fn ask(proxy: &TcpProxy) -> String {
        let mut stream = TcpStream::connect(proxy.address()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn connections_go_round_robin_and_skip_a_backend_that_refuses() {
        let (a, _a) = named_backend("a");
        let (b, _b) = named_backend("b");
        // A port nobody listens on: refused.
        let dead = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let proxy = TcpProxy::start(vec![a, dead, b]).unwrap();
        let answers: Vec<String> = (0..4).map(|_| ask(&proxy)).collect();
        let mut sorted = answers.clone();
        sorted.sort();
        assert_eq!(sorted, vec!["a", "a", "b", "b"], "{answers:?}");
        assert_eq!(proxy.forwarded_to(dead), 0);
        assert_eq!((proxy.forwarded_to(a), proxy.forwarded_to(b)), (2, 2));
    }
}
