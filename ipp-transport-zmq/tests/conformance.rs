//! Every transport conformance check against `ZmqTransport` on real TCP sockets.

use ipp_transport_zmq::ZmqTransport;

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            ipp_core::testing::transport::$check(&ZmqTransport::new(), "tcp://127.0.0.1:0").await;
        }
    )*};
}

conformance!(
    bind_port_zero_reports_real_port,
    router_dealer_round_trip_with_identity,
    router_sees_distinct_ids_for_anonymous_dealers,
    multipart_frames_arrive_unchanged,
    pub_sub_filters_by_topic_prefix,
    sub_bound_receives_from_connected_pub,
    sub_cannot_send,
    router_send_to_unknown_peer_is_dropped,
    dealer_connects_before_router_binds,
    dealer_reconnects_after_router_rebinds,
    router_connects_to_router_with_identity,
    many_messages_arrive_in_order,
    dropping_a_socket_closes_it,
);
