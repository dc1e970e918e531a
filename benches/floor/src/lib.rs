//! The least a Rust (workers-rs 0.8) edge can do per WebSocket connect, as the gateway does
//! it: the Worker's `fetch` names a Durable Object by the `user` query parameter and passes
//! the upgrade on; the object accepts the socket with the hibernation API and sends a
//! `connected` frame (as the platform does), echoes each frame, and answers a close with a
//! close. `js/worker.mjs` is the same in JavaScript, as the
//! platform's single object is written. The difference between the two is what the toolchain
//! costs before the edge does anything of its own.

use worker::{
    durable_object, event, Context, DurableObject, Env, Request, Response, Result, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

/// About the size of the platform's `connected` frame.
const CONNECTED: &str =
    r#"{"event":"connected","data":{"connectionId":"c-0000000000000000","timestamp":0}}"#;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    if url.path() == "/health" {
        return Response::ok("ok");
    }
    let user = url
        .query_pairs()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let stub = env
        .durable_object("FLOOR")?
        .id_from_name(&user)?
        .get_stub()?;
    stub.fetch_with_request(req).await
}

#[durable_object]
pub struct Floor {
    state: State,
}

impl DurableObject for Floor {
    fn new(state: State, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        let pair = WebSocketPair::new()?;
        self.state.accept_web_socket(&pair.server);
        pair.server.send_with_str(CONNECTED)?;
        Response::from_websocket(pair.client)
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        match message {
            WebSocketIncomingMessage::String(s) => ws.send_with_str(s),
            WebSocketIncomingMessage::Binary(b) => ws.send_with_bytes(b),
        }
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        // 1005 (no code) cannot be sent back.
        let code = if code == 1005 { 1000 } else { code };
        ws.close(Some(code as u16), Some(reason))
    }
}
