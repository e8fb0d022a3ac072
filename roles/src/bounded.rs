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

thread_local! {
    /// Whether this thread was started by [`spawn_compile_thread`], with
    /// [`STACK_SIZE`] bytes of stack.
    static COMPILE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Starts a long-lived thread with [`STACK_SIZE`] bytes of stack that runs
/// `work`; on it, [`on_compile_stack`] runs its work in place instead of
/// starting a thread of its own. A server that compiles many catalogs keeps
/// a few such threads rather than creating (and mapping a stack for) one
/// per compile.
pub fn spawn_compile_thread(
    name: String,
    work: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(STACK_SIZE)
        .spawn(move || {
            COMPILE_THREAD.with(|on| on.set(true));
            work()
        })
}

/// Runs `work` on a thread with [`STACK_SIZE`] bytes of stack and waits for
/// it: in place on a thread of [`spawn_compile_thread`], else on a thread
/// started for it. `Err` holds the panic message when it panicked (a bug),
/// or why the thread could not start.
pub fn on_compile_stack<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, String> {
    if COMPILE_THREAD.with(|on| on.get()) {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(panicked);
    }
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("cms-compile".to_string())
            .stack_size(STACK_SIZE)
            .spawn_scoped(scope, work)
            .map_err(|error| format!("Failed to start the compile thread: {error}"))?;
        handle.join().map_err(panicked)
    })
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!("the compiler panicked ({message}); this is a bug in cms, please report it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compile_thread_runs_work_in_place_and_turns_a_panic_into_an_error() {
        let (sender, receiver) = std::sync::mpsc::channel();
        spawn_compile_thread("test-compile".to_string(), move || {
            let here = std::thread::current().id();
            let ran_on = on_compile_stack(|| std::thread::current().id());
            let panicked = on_compile_stack(|| -> () { panic!("on purpose") });
            let after = on_compile_stack(|| 7);
            sender
                .send((ran_on == Ok(here), panicked, after))
                .expect("the test waits");
        })
        .expect("the thread starts");
        let (in_place, panicked, after) = receiver.recv().expect("the thread answers");
        assert!(in_place, "the work ran on another thread");
        assert!(
            panicked
                .expect_err("a panic is an error")
                .contains("on purpose")
        );
        assert_eq!(after, Ok(7), "the thread serves on after a panic");
        // Elsewhere the work gets a thread of its own.
        let caller = std::thread::current().id();
        assert_ne!(on_compile_stack(|| std::thread::current().id()), Ok(caller));
    }
}
