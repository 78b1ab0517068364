//! The fixture of the gateway's generated-input tests: a gateway on a loopback port whose one service
//! has one replica.

use tokio::net::TcpListener;

use crate::{Gateway, GatewayConfig, Listeners, RoutingTable, ServiceRoutes, Upstream};

/// A gateway on a loopback port, with one service, `web`, the default for every host.
pub(super) async fn gateway() -> (Gateway, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let config = GatewayConfig { workers: 1, pin_workers: false, busy_poll: false, ..GatewayConfig::default() };
    let gateway = Gateway::new(config);
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(Listeners { http: Some(listener), ..Listeners::default() }).await });
    (gateway, addr)
}

/// The table with the one replica at `addr` (a new instance every time: no pooled connection and no
/// failure count carries over from another case).
pub(super) fn table(case: u64, addr: std::net::SocketAddr) -> RoutingTable {
    let replica = Upstream { instance: format!("r{case}"), addr, group: "stable".to_owned(), weight: 100 };
    RoutingTable {
        services: vec![ServiceRoutes {
            name: "web".to_owned(),
            hosts: Vec::new(),
            routes: Vec::new(),
            endpoints: vec![replica],
            protocol: Default::default(),
            pools: Vec::new(),
            redirect_https: false,
            sticky: None,
        }],
        default_service: Some("web".to_owned()),
    }
}
