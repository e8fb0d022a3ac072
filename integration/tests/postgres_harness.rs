//! The PostgreSQL test harness itself: a real server starts, takes SQL,
//! gives each test its own database, stops and starts again.

use cms_integration::PostgresServer;

#[test]
fn a_started_postgres_answers_sql_and_keeps_data_across_a_restart() {
    let server = PostgresServer::start().expect("start postgres");
    let url = server.create_database().expect("create a database");
    let database = PostgresServer::database_of(&url);
    server
        .sql(
            database,
            "CREATE TABLE t (v integer); INSERT INTO t VALUES (42)",
        )
        .expect("write");
    server.stop().expect("stop");
    assert!(
        server.sql(database, "SELECT v FROM t").is_err(),
        "a stopped server must refuse connections"
    );
    server.start_again().expect("start again");
    assert_eq!(server.sql(database, "SELECT v FROM t").expect("read"), "42");
    let other = server.create_database().expect("a second database");
    assert_ne!(other, url, "each test gets its own database");
}

/// Set in the child process of the test below: it starts the shared server
/// and prints its folder.
const CHILD: &str = "CMS_TEST_POSTGRES_HARNESS_CHILD";

#[test]
#[ignore = "run by the_shared_server_and_its_folder_are_gone_once_the_test_process_ends"]
fn child_starts_the_shared_server_and_prints_its_folder() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let server = PostgresServer::shared().expect("start the shared postgres");
    println!("folder={}", server.folder().display());
}

#[test]
fn the_shared_server_and_its_folder_are_gone_once_the_test_process_ends() {
    // The shared server is a static, never dropped: only its watchdog can
    // stop it and remove its cluster (about 400 MB) when the process ends.
    let output = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "child_starts_the_shared_server_and_prints_its_folder",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    let folder = stdout
        .lines()
        .find_map(|line| line.split_once("folder=").map(|(_, folder)| folder.trim()))
        .unwrap_or_else(|| panic!("the child printed no folder: {stdout}"));
    let folder = std::path::PathBuf::from(folder);
    cms_integration::wait_until(
        std::time::Duration::from_secs(30),
        &format!("{} to be removed after its process ended", folder.display()),
        || Ok((!folder.exists()).then_some(())),
    )
    .expect("the watchdog removes the cluster");
}
