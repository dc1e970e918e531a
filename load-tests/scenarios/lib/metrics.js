// Every custom metric of the scenario (names from the capacity guide where it has one; times in ms).

import { Counter, Gauge, Rate, Trend } from 'k6/metrics';

// Sockets
export const connectionTime = new Trend('ws_connection_time', true); // new socket -> `connected` frame
export const connectionErrors = new Counter('ws_connection_errors'); // failed attempts + unexpected drops
export const connectionSuccess = new Rate('ws_connection_success'); // per attempt
export const messageLatency = new Trend('ws_message_latency', true); // ping sent -> pong received
export const broadcastDelivery = new Trend('ws_broadcast_delivery_time', true); // sender's clock -> receipt
export const reconnectionTime = new Trend('ws_reconnection_time', true); // reconnect hint/drop -> `connected`
export const reconnects = new Counter('ws_reconnects');
// Client-side concurrency over time (opened - closed), for the reports' time windows.
export const socketsOpened = new Counter('ws_sockets_opened');
export const socketsClosed = new Counter('ws_sockets_closed');
export const pongsReceived = new Counter('ws_pongs_received');
export const pingTimeouts = new Counter('ws_ping_timeouts');
export const broadcastsReceived = new Counter('ws_broadcasts_received');
export const serverErrorFrames = new Counter('ws_error_frames');

// HTTP
export const broadcastRequestTime = new Trend('ws_broadcast_request_time', true);
export const broadcastDelivered = new Counter('ws_broadcast_delivered'); // server-reported recipients
export const broadcastErrors = new Counter('ws_broadcast_errors');
export const httpOpDuration = new Trend('http_op_duration', true); // per operation, tag `op`

// The stats endpoint (the guide's "per DO" metrics)
export const doConnectionsTotal = new Gauge('do_connections_total');
export const doConnectionsRejected = new Counter('do_connections_rejected');
export const doRejectionRate = new Rate('do_connection_rejection_rate');
export const doResponseTime = new Trend('do_response_time', true);
export const doMemoryUsage = new Gauge('do_memory_usage_bytes');
export const doOldestConnection = new Gauge('do_oldest_connection_ms');
export const doShards = new Gauge('do_shards');
export const doShardConnectionsMax = new Gauge('do_shard_connections_max');
export const doImbalance = new Gauge('do_imbalance');
export const doStatsRejected = new Gauge('do_stats_rejected'); // the server's own cumulative count
export const doStatsErrors = new Counter('do_stats_errors');
export const doFailedShards = new Counter('do_failed_shards');
export const doFrames = new Gauge('do_frames'); // client frames the user's shards routed
export const doSubrequestsPerFrame = new Gauge('do_subrequests_per_frame');

// Platform mode: RPC, forwarding and correctness
export const rpcCalls = new Counter('rpc_calls'); // tag kind
export const rpcRoundTrip = new Trend('rpc_round_trip', true); // app send -> its ack; tags kind, placement
export const rpcAcks = new Counter('rpc_acks'); // answered calls; tags kind, placement
export const rpcUnavailable = new Counter('rpc_unavailable'); // "RPC method not available"; tag kind
export const rpcErrors = new Counter('rpc_errors'); // any other {ok:false} ack; tag kind
export const rpcLateAcks = new Counter('rpc_late_acks'); // an ack after its call was counted dropped
export const rpcInterrupted = new Counter('rpc_interrupted'); // calls in flight when their socket closed
export const rpcRequestsReceived = new Counter('rpc_requests_received'); // tag role
export const forwardDelivery = new Trend('forward_delivery_time', true); // alive sent -> app; tags kind, form
export const forwardsReceived = new Counter('forwards_received'); // tag kind
export const framesSent = new Counter('frames_sent'); // tag role
export const framesReceived = new Counter('frames_received'); // tag role
export const framesDropped = new Counter('frames_dropped'); // no ack within 10 s; tag kind
export const framesMisdelivered = new Counter('frames_misdelivered'); // tag reason
// An app told its own machine is offline while the machine's VU held it (a move the edge
// made must not show as one).
export const presenceFlicker = new Counter('presence_flicker');
// Alive frames an app got from its user's sessions and machine (each sender numbers its
// own, per socket), and the numbers it never got between two it did (tag kind: mobile, an
// app that sends a correlationId the edge can match across a move; web, one without).
export const deliveriesChecked = new Counter('deliveries_checked');
export const deliveriesLost = new Counter('deliveries_lost');
// SWITCH: each run-time policy switch (tag policy) and the time until /health shows it.
export const policySwitches = new Counter('policy_switches');
export const policySwitchApplied = new Trend('policy_switch_applied_ms', true);
