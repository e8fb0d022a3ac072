//! The one stack every parse, validation and compile runs on.
//!
//! Parsing TOML, compiling handlebars templates and rendering them recurse
//! as deep as the text nests. The limits (`template::MAX_NESTING`,
//! `repository::MAX_INCLUDE_DEPTH`, `repository::MAX_DATA_DEPTH`) keep that
//! depth small, and this module makes the stack it runs on the same
//! everywhere: [`on_compile_stack`] runs the work on a thread of its own
//! with [`STACK_SIZE`] bytes of stack, whoever calls it (`cms-server check`
//! on an 8 MiB main thread, the server on a 2 MiB blocking thread, the
//! agent's `apply`). So what `check` and CI accept, the server accepts, and
//! what the server refuses, `check` refuses. A panic on that thread comes
//! back as an error rather than unwinding into the caller.

/// The stack of the compile thread. The limits need a small fraction of
/// it even in a debug build (the tests render templates at the limit on
/// it); the rest is margin. It is reserved, not committed: untouched pages
/// cost no memory.
pub const STACK_SIZE: usize = 64 * 1024 * 1024;

/// Runs `work` on a thread with [`STACK_SIZE`] bytes of stack and waits for
/// it. `Err` holds the panic message when it panicked (a bug), or why the
/// thread could not start.
pub fn on_compile_stack<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("cms-compile".to_string())
            .stack_size(STACK_SIZE)
            .spawn_scoped(scope, work)
            .map_err(|error| format!("Failed to start the compile thread: {error}"))?;
        handle.join().map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            format!("the compiler panicked ({message}); this is a bug in cms, please report it")
        })
    })
}
