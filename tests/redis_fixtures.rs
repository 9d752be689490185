//! Self-test of the real-Redis fixtures in `tests/support/redis.rs`.

#[path = "support/redis.rs"]
mod redis;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener, TcpStream};

use redis::{free_port, info_field, RedisCluster, RedisSentinel, RedisServer};

#[test]
fn standalone_server_answers_and_survives_kill_and_restart() {
    let server = RedisServer::start();
    let port = server.port();
    assert_ne!(port, 6379, "must never use the system Redis");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert!(server.is_running());
    assert!(server.ping());
    assert_eq!(server.cli(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(server.cli(&["GET", "greeting"]), "hello");
    let config = server.cli(&["CONFIG", "GET", "save"]);
    assert_eq!(
        config.lines().nth(1).unwrap_or_default(),
        "",
        "persistence must be off: {config}"
    );

    server.kill();
    assert!(!server.is_running());
    assert!(!server.ping());
    assert!(server.try_cli(&["PING"]).is_err());

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.cli(&["PING"]), "PONG");
    // No persistence: the restarted server starts empty, and takes writes.
    assert_eq!(server.cli(&["GET", "greeting"]), "");
    assert_eq!(server.cli(&["SET", "greeting", "again"]), "OK");
    assert_eq!(server.cli(&["GET", "greeting"]), "again");
    // restart() of a running server works too.
    server.restart();
    assert_eq!(server.cli(&["DBSIZE"]), "0");
}

#[test]
fn drop_kills_the_server_and_removes_its_dir() {
    let server = RedisServer::start();
    let (port, dir) = (server.port(), server.dir().to_path_buf());
    assert!(dir.join("redis.log").exists());
    drop(server);
    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "port {port} still answers"
    );
}

#[test]
fn free_ports_are_distinct_and_leave_the_cluster_bus_port_free() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    assert_eq!(
        ports.iter().collect::<BTreeSet<_>>().len(),
        ports.len(),
        "{ports:?}"
    );
    for &port in &ports {
        assert!(port < 55000);
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10000)).is_ok());
    }
}

#[test]
fn cluster_of_three_masters_is_ok_and_serves_keys_through_redirects() {
    let cluster = RedisCluster::start(3);
    assert_eq!(cluster.urls().len(), 3);
    for node in &cluster.nodes {
        let info = node.cli(&["CLUSTER", "INFO"]);
        assert_eq!(info_field(&info, "cluster_state"), Some("ok"), "{info}");
        assert_eq!(
            info_field(&info, "cluster_slots_assigned"),
            Some("16384"),
            "{info}"
        );
    }

    assert_eq!(cluster.cli(&["SET", "user:42", "ada"]), "OK");
    assert_eq!(cluster.cli(&["GET", "user:42"]), "ada");
    for i in 0..12 {
        assert_eq!(
            cluster.cli(&["SET", &format!("key{i}"), &i.to_string()]),
            "OK"
        );
    }
    for i in 0..12 {
        assert_eq!(cluster.cli(&["GET", &format!("key{i}")]), i.to_string());
    }
    // The keys really are spread over the masters.
    let sizes: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).parse().unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 13, "{sizes:?}");
    assert!(sizes.iter().filter(|&&s| s > 0).count() >= 2, "{sizes:?}");
    // Without -c, a node redirects keys whose slot it does not own.
    let moved = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["GET", "user:42"]))
        .filter(|r| r.starts_with("MOVED"))
        .count();
    assert_eq!(moved, 2);
}

#[test]
fn sentinel_fails_over_to_the_replica_and_the_new_master_accepts_writes() {
    let mut fixture = RedisSentinel::start();
    assert_eq!(fixture.sentinels.len(), 3);
    assert_eq!(fixture.sentinel_urls().len(), 3);
    let (old_master, old_replica) = (fixture.master.port(), fixture.replica.port());
    assert_eq!(fixture.master_addr(), ("127.0.0.1".to_owned(), old_master));

    assert_eq!(fixture.master.cli(&["SET", "before", "1"]), "OK");
    assert_eq!(
        fixture.master.cli(&["WAIT", "1", "5000"]),
        "1",
        "the write should reach the replica"
    );
    assert!(fixture
        .replica
        .cli(&["SET", "x", "y"])
        .starts_with("READONLY"));

    fixture.failover();

    assert_eq!(
        fixture.master.port(),
        old_replica,
        "fields are swapped after failover"
    );
    assert_eq!(fixture.replica.port(), old_master);
    assert_eq!(fixture.master_addr(), ("127.0.0.1".to_owned(), old_replica));
    for sentinel in &fixture.sentinels {
        let reply = sentinel.cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"]);
        assert_eq!(
            reply.lines().nth(1),
            Some(old_replica.to_string().as_str()),
            "sentinel {}",
            sentinel.port()
        );
    }
    let info = fixture.master.cli(&["INFO", "replication"]);
    assert_eq!(info_field(&info, "role"), Some("master"), "{info}");
    assert_eq!(fixture.master.cli(&["SET", "after", "2"]), "OK");
    assert_eq!(
        fixture.master.cli(&["GET", "before"]),
        "1",
        "replicated data survives the failover"
    );
    assert_eq!(fixture.master.cli(&["GET", "after"]), "2");
}
