//! A small HTTP/1.1 server for static files: just enough for apt to fetch
//! `Release`, `Packages` and `.deb` files from the internal package
//! repository. One thread accepts; each connection gets a thread that serves
//! one request and closes (`Connection: close`). Every request is recorded,
//! so tests can see which instance address fetched what.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a client may take to send its request or receive a response
/// before its connection is dropped; it bounds how long shutdown waits.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Request heads longer than this are refused.
const MAXIMUM_REQUEST_HEAD_BYTES: usize = 16 * 1024;

/// One request the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub peer: SocketAddr,
    pub method: String,
    /// The request target as sent, before decoding.
    pub target: String,
    pub status: u16,
}

/// A running file server; stops when dropped.
pub struct HttpFileServer {
    address: SocketAddr,
    stopping: Arc<AtomicBool>,
    access_log: Arc<Mutex<Vec<AccessLogEntry>>>,
    accept_thread: Option<JoinHandle<()>>,
    /// Things that must outlive the server, such as the bridge it listens on
    /// and the directory it serves.
    _keep_alive: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for HttpFileServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HttpFileServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl HttpFileServer {
    /// Serves the files under `root` on `bind_address` (port 0 picks one).
    pub fn start(bind_address: SocketAddr, root: &Path) -> Result<HttpFileServer> {
        Self::start_keeping_alive(bind_address, root, Vec::new())
    }

    pub(crate) fn start_keeping_alive(
        bind_address: SocketAddr,
        root: &Path,
        keep_alive: Vec<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Result<HttpFileServer> {
        let listener = TcpListener::bind(bind_address)
            .with_context(|| format!("Failed to listen on {bind_address}"))?;
        Self::start_on_keeping_alive(listener, root, keep_alive)
    }

    /// Serves `root` on a listener bound already; `keep_alive` is held until
    /// the server stops.
    pub(crate) fn start_on_keeping_alive(
        listener: TcpListener,
        root: &Path,
        keep_alive: Vec<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Result<HttpFileServer> {
        let address = listener
            .local_addr()
            .context("Failed to read the listening address")?;
        let stopping = Arc::new(AtomicBool::new(false));
        let access_log = Arc::new(Mutex::new(Vec::new()));
        let accept_thread = {
            let stopping = Arc::clone(&stopping);
            let access_log = Arc::clone(&access_log);
            let root = root.to_path_buf();
            std::thread::Builder::new()
                .name(format!("http-file-server-{address}"))
                .spawn(move || accept_connections(listener, root, stopping, access_log))
                .context("Failed to start the file server thread")?
        };
        Ok(HttpFileServer {
            address,
            stopping,
            access_log,
            accept_thread: Some(accept_thread),
            _keep_alive: keep_alive,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://ADDRESS:PORT/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// Every request answered so far, oldest first.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        lock_ignoring_poison(&self.access_log).clone()
    }

    /// The requests answered so far that came from `address`.
    pub fn requests_from(&self, address: IpAddr) -> Vec<AccessLogEntry> {
        self.access_log()
            .into_iter()
            .filter(|entry| entry.peer.ip() == address)
            .collect()
    }
}

impl Drop for HttpFileServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop, which then sees the flag and returns. If the
        // connection fails, the listener is already gone.
        let _ = TcpStream::connect_timeout(&self.address, CONNECTION_TIMEOUT);
        if let Some(accept_thread) = self.accept_thread.take() {
            let _ = accept_thread.join();
        }
    }
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A connection thread that panicked leaves a log that is still valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_connections(
    listener: TcpListener,
    root: PathBuf,
    stopping: Arc<AtomicBool>,
    access_log: Arc<Mutex<Vec<AccessLogEntry>>>,
) {
    let mut connection_threads: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            continue;
        };
        connection_threads.retain(|thread| !thread.is_finished());
        let root = root.clone();
        let access_log = Arc::clone(&access_log);
        let spawned = std::thread::Builder::new()
            .name("http-file-server-connection".to_string())
            .spawn(move || serve_connection(stream, &root, &access_log));
        if let Ok(thread) = spawned {
            connection_threads.push(thread);
        }
    }
    // Connections end by themselves within the connection timeout.
    for thread in connection_threads {
        let _ = thread.join();
    }
}

/// Serves one request and logs it; a client that goes away before sending
/// a request line is not logged.
fn serve_connection(stream: TcpStream, root: &Path, access_log: &Mutex<Vec<AccessLogEntry>>) {
    let _ = serve_one_request(stream, root, access_log);
}

fn serve_one_request(
    stream: TcpStream,
    root: &Path,
    access_log: &Mutex<Vec<AccessLogEntry>>,
) -> Option<()> {
    let peer = stream.peer_addr().ok()?;
    stream.set_read_timeout(Some(CONNECTION_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(CONNECTION_TIMEOUT)).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    if request_line.trim().is_empty() {
        return None;
    }
    // Read and ignore the headers, up to the blank line.
    let mut head_bytes = request_line.len();
    loop {
        let mut header = String::new();
        let read = reader.read_line(&mut header).ok()?;
        head_bytes += read;
        if read == 0
            || header == "\r\n"
            || header == "\n"
            || head_bytes > MAXIMUM_REQUEST_HEAD_BYTES
        {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut stream = stream;
    let status = respond(&mut stream, &method, &target, root, head_bytes);
    let _ = stream.flush();
    // Log before closing, so that a client that has read the whole response
    // finds its request in the log.
    lock_ignoring_poison(access_log).push(AccessLogEntry {
        peer,
        method,
        target,
        status,
    });
    let _ = stream.shutdown(Shutdown::Both);
    Some(())
}

fn respond(
    stream: &mut TcpStream,
    method: &str,
    target: &str,
    root: &Path,
    head_bytes: usize,
) -> u16 {
    if head_bytes > MAXIMUM_REQUEST_HEAD_BYTES {
        return send_empty(stream, 431, "Request Header Fields Too Large");
    }
    if method != "GET" && method != "HEAD" {
        return send_empty(stream, 405, "Method Not Allowed");
    }
    let Some(relative_path) = resolve_target(target) else {
        return send_empty(stream, 404, "Not Found");
    };
    let path = root.join(relative_path);
    let Ok(mut file) = std::fs::File::open(&path) else {
        return send_empty(stream, 404, "Not Found");
    };
    let Ok(metadata) = file.metadata() else {
        return send_empty(stream, 404, "Not Found");
    };
    if !metadata.is_file() {
        return send_empty(stream, 404, "Not Found");
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n\r\n",
        metadata.len()
    );
    if stream.write_all(head.as_bytes()).is_ok() && method == "GET" {
        let _ = std::io::copy(&mut file, stream);
    }
    200
}

fn send_empty(stream: &mut TcpStream, status: u16, reason: &str) -> u16 {
    let head =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes());
    status
}

/// The file a request target names, relative to the served root: the path
/// without query, percent-decoded, without `.` segments. Targets with `..`
/// or that are not origin-form are refused.
fn resolve_target(target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    if !path.starts_with('/') {
        return None;
    }
    let mut relative_path = PathBuf::new();
    for segment in path.split('/') {
        let segment = percent_decode(segment)?;
        match segment.as_str() {
            "" | "." => {}
            ".." => return None,
            _ if segment.contains(['/', '\0']) => return None,
            _ => relative_path.push(segment),
        }
    }
    Some(relative_path)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn targets_resolve_inside_the_root_only() {
        let check = |target: &str| resolve_target(target).map(|path| path.display().to_string());
        assert_eq!(check("/./Packages"), Some("Packages".to_string()));
        assert_eq!(check("/dists//x?query=1"), Some("dists/x".to_string()));
        assert_eq!(
            check("/bsdutils_1%253a2.38_amd64.deb"),
            Some("bsdutils_1%3a2.38_amd64.deb".to_string())
        );
        assert_eq!(check("/../etc/passwd"), None);
        assert_eq!(check("/a/%2e%2e/b"), None);
        assert_eq!(check("/a%2fb"), None);
        assert_eq!(check("http://host/x"), None);
    }

    fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_files_and_logs_who_asked() {
        let root = std::env::temp_dir().join(format!("cmstb-unit-http-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("Release"), "Origin: test\n").unwrap();
        let server = HttpFileServer::start("127.0.0.1:0".parse().unwrap(), &root).unwrap();

        let found = get(
            server.address(),
            "GET /./Release HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let missing = get(server.address(), "GET /InRelease HTTP/1.1\r\n\r\n");
        let head = get(server.address(), "HEAD /Release HTTP/1.1\r\n\r\n");
        assert_eq!(
            found,
            "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: application/octet-stream\r\n\
             Connection: close\r\n\r\nOrigin: test\n"
        );
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");

        let statuses: Vec<(String, u16)> = server
            .requests_from("127.0.0.1".parse().unwrap())
            .into_iter()
            .map(|entry| (entry.target, entry.status))
            .collect();
        assert_eq!(
            statuses,
            vec![
                ("/./Release".to_string(), 200),
                ("/InRelease".to_string(), 404),
                ("/Release".to_string(), 200)
            ]
        );
        drop(server);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
