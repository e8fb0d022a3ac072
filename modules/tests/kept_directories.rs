//! Reads keep the directories they reached open (`host::fs`), and every
//! change made through the host forgets them: a folder replaced by the
//! agent itself, or by a command it ran, is read afresh afterwards, never
//! through the descriptor of the folder it replaced.
//!
//! Every test runs twice: with `openat2`, and with the `O_NOFOLLOW` walk
//! used on kernels without it.

use cms_modules::Host;
use cms_modules::host::CommandSpec;
use cms_modules::host::fs::FileAttributes;
use tempfile::TempDir;

fn hosts(root: &TempDir) -> [Host; 2] {
    [
        Host::new(root.path()),
        Host::new(root.path()).resolving_by_walk(),
    ]
}

#[test]
fn a_folder_the_host_replaced_is_read_afresh() {
    let root = TempDir::new().expect("a temporary root");
    for host in hosts(&root) {
        std::fs::create_dir_all(host.path("/srv/app")).expect("mkdir");
        std::fs::write(host.path("/srv/app/app.conf"), b"old\n").expect("writes");
        assert_eq!(
            host.read_file("/srv/app/app.conf").expect("reads"),
            b"old\n"
        );

        host.remove_recursively("/srv/app").expect("removes");
        host.create_directory("/srv/app", FileAttributes::default())
            .expect("creates");
        host.write_file_atomically("/srv/app/app.conf", b"new\n", FileAttributes::default())
            .expect("writes");

        assert_eq!(
            host.read_file("/srv/app/app.conf").expect("reads"),
            b"new\n"
        );
        std::fs::remove_dir_all(host.path("/srv")).expect("cleans up");
    }
}

#[test]
fn a_folder_a_command_replaced_is_read_afresh() {
    let root = TempDir::new().expect("a temporary root");
    for host in hosts(&root) {
        std::fs::create_dir_all(host.path("/srv/app")).expect("mkdir");
        assert_eq!(host.status("/srv/app/app.conf").expect("status"), None);

        // What a package install can do: the folder goes, a new one with
        // the file comes.
        let mut replace = CommandSpec::shell(
            "mv srv/app srv/app.old && mkdir srv/app && echo new > srv/app/app.conf",
        );
        replace.cwd = Some("/".to_string());
        assert!(host.run(&replace).expect("runs").success());

        assert!(host.status("/srv/app/app.conf").expect("status").is_some());
        assert_eq!(
            host.read_file("/srv/app/app.conf").expect("reads"),
            b"new\n"
        );
        std::fs::remove_dir_all(host.path("/srv")).expect("cleans up");
    }
}

/// Kernel files say they hold 0 bytes, and an integer sysctl answers only
/// a read that starts at 0: the whole value must come in the first read.
#[test]
fn a_kernel_file_that_says_it_is_empty_is_read_whole() {
    let path = "/proc/sys/kernel/pid_max";
    let expected = std::fs::read(path).expect("the kernel has pid_max");
    assert!(expected.len() > 2, "{expected:?}");
    let host = Host::new(std::path::Path::new("/"));
    assert_eq!(host.read_file(path).expect("read"), expected);
}
