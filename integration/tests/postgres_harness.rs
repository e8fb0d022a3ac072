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
