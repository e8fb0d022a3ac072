//! Free loopback ports for test servers, with nothing but `std`: the
//! testbed's harness uses it, and `cms-server`'s own tests include this
//! file (`#[path]`), since they cannot depend on this crate, which depends
//! on theirs.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// A TCP port on 127.0.0.1 that nothing listens on now and that this
/// process has not given out before. The kernel picks it from its
/// ephemeral range, so two test runs never pick the same one while both
/// use it; but it may answer a port it answered a moment ago (free again
/// once the asker closed it), and the tests of one binary run in parallel
/// threads: two servers were started on one port, and a harness waited
/// on the other's.
pub fn unused_loopback_port() -> std::io::Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    // Held until one is found, so the kernel does not answer them again.
    let mut held = Vec::new();
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        if given.insert(port) {
            return Ok(port);
        }
        held.push(listener);
    }
}
