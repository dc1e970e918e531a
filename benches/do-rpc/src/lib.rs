//! One internal call to a Durable Object, two ways, from Rust (workers-rs 0.8.7):
//!
//! - `fetch`: the gateway's Request path (`src/runtime.rs` `call_raw` and the shard's
//!   `answer`): a POST with a JSON body and the shard header, the object's `fetch` reads the
//!   text, serde parses it, the reply is `Response::from_json`, the caller reads it as text.
//! - `rpc`: Durable Object RPC. The caller calls a method on the stub (`Stub::into_rpc`, a
//!   `wasm_bindgen` extern type); the object is a JavaScript class that `extends
//!   DurableObject` (rpc-wrapper.mjs, since the class worker-build generates does not) and
//!   hands the JSON string to an exported Rust method; the reply is a string.
//! - `local`: the same parse and answer with no call at all, the floor under both.
//!
//! `GET /bench?mode=fetch|rpc|local&n=ROUNDS&fan=OBJECTS&bytes=SIZE` runs ROUNDS rounds,
//! each a concurrent call to OBJECTS objects with one message of about SIZE bytes
//! (serialised once per round, as the gateway's fan-out does), and checks every reply.

use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::{
    durable_object, event, Context, Date, DurableObject, Env, Headers, Method, Request,
    RequestInit, Response, Result, State, Url,
};

const BINDING: &str = "ECHO";
const PATH: &str = "/deliver";

/// A delivery batch like the gateway's `DeliverBatch`: frames for sockets of one shard.
#[derive(Serialize, Deserialize)]
struct Deliver {
    shard: String,
    frames: Vec<Frame>,
}

#[derive(Serialize, Deserialize)]
struct Frame {
    to: String,
    text: String,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Delivered {
    delivered: usize,
    bytes: usize,
}

impl Deliver {
    /// About `bytes` of JSON: frames of up to 100 characters.
    fn of_size(bytes: usize) -> Self {
        let mut frames = Vec::new();
        let mut left = bytes.saturating_sub(40);
        let mut i = 0;
        while left > 0 {
            let len = left.min(100);
            frames.push(Frame {
                to: format!("c{i:08}"),
                text: "x".repeat(len.saturating_sub(30)),
            });
            left = left.saturating_sub(len);
            i += 1;
        }
        Deliver {
            shard: "cm:bench#0".into(),
            frames,
        }
    }

    fn answer(&self) -> Delivered {
        Delivered {
            delivered: self.frames.len(),
            bytes: self.frames.iter().map(|f| f.text.len()).sum(),
        }
    }
}

#[durable_object]
pub struct EchoCore {
    _state: State,
}

impl DurableObject for EchoCore {
    fn new(state: State, _env: Env) -> Self {
        Self { _state: state }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        // The shard reads its name from this header on every call.
        let _shard = req.headers().get("x-edge-shard")?;
        if req.path() != PATH {
            return Response::error("not found", 404);
        }
        let msg: Deliver = serde_json::from_str(&req.text().await?)?;
        Ok(Response::from_json(&msg.answer())?.with_status(200))
    }
}

#[wasm_bindgen]
impl EchoCore {
    /// The RPC method's Rust half: rpc-wrapper.mjs's `rpcDeliver` calls it.
    #[wasm_bindgen(js_name = rpcDeliver)]
    pub async fn rpc_deliver(
        &self,
        body: String,
        _shard: String,
    ) -> std::result::Result<JsValue, JsValue> {
        let msg: Deliver =
            serde_json::from_str(&body).map_err(|e| JsValue::from_str(&e.to_string()))?;
        let reply =
            serde_json::to_string(&msg.answer()).map_err(|e| JsValue::from_str(&e.to_string()))?;
        Ok(JsValue::from_str(&reply))
    }
}

#[wasm_bindgen]
extern "C" {
    /// The stub seen as an RPC client of rpc-wrapper.mjs's `Echo`.
    #[wasm_bindgen(extends = js_sys::Object)]
    type EchoRpc;

    #[wasm_bindgen(method, catch, js_name = rpcDeliver)]
    fn rpc_deliver(
        this: &EchoRpc,
        body: &str,
        shard: &str,
    ) -> std::result::Result<js_sys::Promise, JsValue>;
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Fetch,
    Rpc,
    Local,
}

async fn call_fetch(env: &Env, name: &str, body: String) -> Result<Delivered> {
    let stub = env.durable_object(BINDING)?.get_by_name(name)?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("x-edge-shard", name)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let req = Request::new_with_init(&format!("https://do.internal{PATH}"), &init)?;
    let resp = stub.fetch_with_request(req).await?;
    if resp.status_code() != 200 {
        return Err(worker::Error::RustError(format!(
            "answered {}",
            resp.status_code()
        )));
    }
    // As the gateway reads an answer: the runtime's text() in one promise.
    let raw: worker::web_sys::Response = resp.into();
    let text = JsFuture::from(raw.text()?).await?;
    Ok(serde_json::from_str(&text.as_string().unwrap_or_default())?)
}

async fn call_rpc(env: &Env, name: &str, body: String) -> Result<Delivered> {
    let stub = env.durable_object(BINDING)?.get_by_name(name)?;
    let rpc: EchoRpc = stub.into_rpc();
    let reply = JsFuture::from(rpc.rpc_deliver(&body, name)?).await?;
    let text = reply
        .as_string()
        .ok_or_else(|| worker::Error::RustError("the RPC answered no string".into()))?;
    Ok(serde_json::from_str(&text)?)
}

async fn call_local(body: String) -> Result<Delivered> {
    let msg: Deliver = serde_json::from_str(&body)?;
    let reply = serde_json::to_string(&msg.answer())?;
    Ok(serde_json::from_str(&reply)?)
}

fn param(url: &Url, name: &str, default: usize, max: usize) -> Result<usize> {
    match url.query_pairs().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(worker::Error::RustError(format!(
                "{name} must be 1..={max}"
            ))),
        },
    }
}

async fn bench(url: &Url, env: &Env) -> Result<Response> {
    let mode = match url
        .query_pairs()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.into_owned())
    {
        Some(m) if m == "fetch" => Mode::Fetch,
        Some(m) if m == "rpc" => Mode::Rpc,
        Some(m) if m == "local" => Mode::Local,
        _ => return Response::error("mode must be fetch, rpc or local", 400),
    };
    let (n, fan, bytes) = match (
        param(url, "n", 1000, 100_000),
        param(url, "fan", 1, 64),
        param(url, "bytes", 300, 65_536),
    ) {
        (Ok(n), Ok(f), Ok(b)) => (n, f, b),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return Response::error(e.to_string(), 400)
        }
    };
    let msg = Deliver::of_size(bytes);
    let expect = msg.answer();
    let names: Vec<String> = (0..fan).map(|k| format!("cm:bench#{k}")).collect();
    let start = Date::now().as_millis();
    for _ in 0..n {
        // Serialised once per round and cloned per target, as `runtime::ask_encoded` does.
        let body = serde_json::to_string(&msg)?;
        let replies = try_join_all(names.iter().map(|name| {
            let body = body.clone();
            async move {
                match mode {
                    Mode::Fetch => call_fetch(env, name, body).await,
                    Mode::Rpc => call_rpc(env, name, body).await,
                    Mode::Local => call_local(body).await,
                }
            }
        }))
        .await?;
        if let Some(bad) = replies.iter().find(|r| **r != expect) {
            return Response::error(format!("wrong reply {bad:?}, expected {expect:?}"), 500);
        }
    }
    let ms = Date::now().as_millis() - start;
    Response::from_json(&serde_json::json!({
        "calls": n * fan,
        "rounds": n,
        "fan": fan,
        "body_bytes": serde_json::to_string(&msg)?.len(),
        "ms": ms,
    }))
}

#[event(fetch)]
async fn main(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    match url.path() {
        "/health" => Response::ok("ok"),
        "/bench" => bench(&url, &env).await,
        _ => Response::error("not found", 404),
    }
}
