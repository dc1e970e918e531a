//! Internal calls between the gateway and the Durable Objects, by Durable Object RPC.
//!
//! A caller sends a typed message (`object_api::Message`) with [`ask`]; the object's class
//! (a JavaScript shell in `scripts/entry.mjs` that `extends DurableObject`, since the class
//! worker-build generates does not) passes the call to the Rust object's exported `handle`
//! ([`rpc_object!`]), which answers a [`Reply`]. The same [`Call`] also arrives by `fetch`
//! ([`Call::read`]), so a caller of an older version, mid-deploy, is still served.
//!
//! Why RPC: one call over the Request path (a `Request` with headers and a body stream, a
//! `Response` read back) cost about twice the runtime CPU of the same call by RPC with the
//! same JSON string (`scripts/rpc-bench.sh`, docs/results/do-rpc-2026-12-04.md).

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::web_sys;
use worker::{Env, Request, Response};

use crate::object_api::{Message, SHARD_BINDING, SHARD_HEADER};
use crate::protocol::ApiError;

#[wasm_bindgen]
extern "C" {
    /// A Durable Object namespace binding, seen only through `getByName`.
    type Namespace;
    #[wasm_bindgen(method, catch, js_name = getByName)]
    fn get_by_name(this: &Namespace, name: &str) -> Result<ObjectStub, JsValue>;

    /// An object's stub as an RPC client of `scripts/entry.mjs`'s classes.
    type ObjectStub;
    #[wasm_bindgen(method, catch)]
    fn handle(
        this: &ObjectStub,
        path: &str,
        shard: &str,
        body: &str,
    ) -> Result<js_sys::Promise, JsValue>;

    /// The object's `fetch`, for the WebSocket upgrade.
    #[wasm_bindgen(method, catch, js_name = fetch)]
    fn fetch(this: &ObjectStub, req: &web_sys::Request) -> Result<js_sys::Promise, JsValue>;
}

/// A Durable Object to send messages to, or to hand a WebSocket upgrade ([`upgrade`]).
pub struct Object(ObjectStub);

/// The object `name` of the class bound as `binding`.
pub fn object(env: &Env, binding: &str, name: &str) -> worker::Result<Object> {
    let ns = js_sys::Reflect::get(env.as_ref(), &JsValue::from_str(binding))?;
    if ns.is_undefined() {
        return Err(worker::Error::RustError(format!("no binding {binding}")));
    }
    Ok(Object(ns.unchecked_into::<Namespace>().get_by_name(name)?))
}

/// Sends a typed message to an object and reads its typed reply (`object_api`). `shard`
/// names the receiving shard (objects are not told their own name).
pub async fn ask<M: Message>(
    obj: &Object,
    shard: Option<&str>,
    msg: &M,
) -> worker::Result<M::Reply> {
    send(obj, M::PATH, shard, &serde_json::to_string(msg)?).await
}

/// Sends a message to the user's home shard; a failure is a 503 the client may retry.
pub async fn ask_home<M: Message>(env: &Env, user: &str, msg: &M) -> Result<M::Reply, ApiError> {
    let text = ask_home_text(env, user, msg).await?;
    serde_json::from_str(&text).map_err(|e| home_unavailable(M::PATH, e))
}

/// [`ask_home`], answering the reply's JSON text unparsed, for a caller that relays it as
/// it is (parsing and writing it again would only cost CPU).
pub async fn ask_home_text<M: Message>(env: &Env, user: &str, msg: &M) -> Result<String, ApiError> {
    let unavailable = |e: worker::Error| home_unavailable(M::PATH, e);
    let home = crate::placement::home_name(user);
    let obj = object(env, SHARD_BINDING, &home).map_err(unavailable)?;
    let body = serde_json::to_string(msg).map_err(|e| unavailable(e.into()))?;
    send_text(&obj, M::PATH, Some(&home), &body)
        .await
        .map_err(unavailable)
}

fn home_unavailable(path: &str, e: impl std::fmt::Display) -> ApiError {
    worker::console_error!("home {path} failed: {e}");
    ApiError::new(
        503,
        "home_unavailable",
        "the user's home shard did not answer; retry",
    )
    .retry_after(1)
}

/// A message serialised once, for a fan-out that sends the same body to many objects.
pub struct Encoded<M> {
    body: String,
    _message: std::marker::PhantomData<M>,
}

pub fn encode<M: Message>(msg: &M) -> worker::Result<Encoded<M>> {
    Ok(Encoded {
        body: serde_json::to_string(msg)?,
        _message: std::marker::PhantomData,
    })
}

/// [`ask`] with a message [`encode`]d once for many targets.
pub async fn ask_encoded<M: Message>(
    obj: &Object,
    shard: Option<&str>,
    msg: &Encoded<M>,
) -> worker::Result<M::Reply> {
    send(obj, M::PATH, shard, &msg.body).await
}

/// One RPC: the object answers `[status, body]`; a status outside 2xx is an error.
async fn send<Resp: DeserializeOwned>(
    obj: &Object,
    path: &str,
    shard: Option<&str>,
    body: &str,
) -> worker::Result<Resp> {
    Ok(serde_json::from_str(
        &send_text(obj, path, shard, body).await?,
    )?)
}

/// [`send`], answering the body's text.
async fn send_text(
    obj: &Object,
    path: &str,
    shard: Option<&str>,
    body: &str,
) -> worker::Result<String> {
    let answer =
        wasm_bindgen_futures::JsFuture::from(obj.0.handle(path, shard.unwrap_or(""), body)?)
            .await?;
    let (status, text) = Reply::from_js(&answer)
        .ok_or_else(|| worker::Error::RustError(format!("{path} answered no [status, body]")))?;
    if !(200..300).contains(&status) {
        return Err(worker::Error::RustError(format!(
            "{path} answered {status}: {}",
            crate::protocol::truncate(&text, 200)
        )));
    }
    Ok(text)
}

/// A shard's answer to an upgrade, as the runtime gave it, to be relayed to the client
/// untouched: converting it into a `worker::Response` and back (headers, status, socket,
/// body stream) cost about 3 % of a connect's CPU in a profile of 200 connects a second.
pub struct Relayed(web_sys::Response);

impl Relayed {
    pub fn status(&self) -> u16 {
        self.0.status()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.0.headers().get(name).ok().flatten()
    }

    pub fn into_raw(self) -> web_sys::Response {
        self.0
    }
}

/// Hands a WebSocket upgrade to `obj`'s `fetch` at `path` with `headers` (and `upgrade:
/// websocket`), built as the runtime's own request: `worker::Request` would read the URL
/// back and parse it, and read `request.cf`, for a request only the object looks at.
pub async fn upgrade(
    obj: &Object,
    path: &str,
    headers: &[(&str, &str)],
) -> worker::Result<Relayed> {
    let h = web_sys::Headers::new()?;
    h.set("upgrade", "websocket")?;
    for (k, v) in headers {
        h.set(k, v)?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method("GET");
    init.set_headers(&h);
    let req =
        web_sys::Request::new_with_str_and_init(&format!("https://do.internal{path}"), &init)?;
    let resp = wasm_bindgen_futures::JsFuture::from(obj.0.fetch(&req)?).await?;
    Ok(Relayed(resp.dyn_into::<web_sys::Response>()?))
}

/// A call as an object receives it.
pub struct Call {
    pub path: String,
    /// The receiving shard's name as its caller knows it (empty for other objects).
    pub shard: String,
    pub body: String,
}

impl Call {
    /// The same call sent by `fetch`: its path, the shard header and the body text.
    pub async fn read(mut req: Request) -> worker::Result<Call> {
        Ok(Call {
            path: req.path(),
            shard: req.headers().get(SHARD_HEADER)?.unwrap_or_default(),
            body: req.text().await?,
        })
    }

    /// The body as message `M`, parsed by serde_json from its text.
    pub fn message<M: DeserializeOwned>(&self) -> worker::Result<M> {
        Ok(serde_json::from_str(&self.body)?)
    }
}

/// An object's answer to a [`Call`]: a status and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json<T: Serialize>(body: &T) -> worker::Result<Reply> {
        Ok(Reply {
            status: 200,
            body: serde_json::to_string(body)?,
        })
    }

    pub fn error(e: &ApiError) -> Reply {
        Reply {
            status: e.status,
            body: e.body(),
        }
    }

    /// The answer to a path the object does not route.
    pub fn no_route(what: String) -> Reply {
        Reply::error(&ApiError::new(404, "not_found", format!("no route {what}")))
    }

    /// As a `fetch` answer.
    pub fn into_response(self) -> worker::Result<Response> {
        super::json_text(self.status, &self.body)
    }

    /// As an RPC answer: `[status, body]`.
    pub fn into_js(self) -> JsValue {
        js_sys::Array::of2(&JsValue::from(self.status), &JsValue::from(self.body)).into()
    }

    fn from_js(v: &JsValue) -> Option<(u16, String)> {
        let a = v.dyn_ref::<js_sys::Array>()?;
        let status = u16::try_from(a.get(0).as_f64()? as u32).ok()?;
        Some((status, a.get(1).as_string()?))
    }
}

/// Reads message `M` from the call, lets `f` answer it, and sends its reply.
pub async fn answer<M, F, Fut>(call: &Call, f: F) -> worker::Result<Reply>
where
    M: Message + DeserializeOwned,
    F: FnOnce(M) -> Fut,
    Fut: Future<Output = worker::Result<M::Reply>>,
{
    Reply::json(&f(call.message::<M>()?).await?)
}

/// Exports a Durable Object's RPC entry, `handle(path, shard, body)`, which
/// `scripts/entry.mjs`'s class calls: it passes a [`Call`] to the object's
/// `async fn on_call(&self, Call) -> worker::Result<Reply>` and answers `[status, body]`.
macro_rules! rpc_object {
    ($object:ty) => {
        #[::wasm_bindgen::prelude::wasm_bindgen]
        impl $object {
            pub async fn handle(
                &self,
                path: String,
                shard: String,
                body: String,
            ) -> Result<::wasm_bindgen::JsValue, ::wasm_bindgen::JsValue> {
                let call = $crate::runtime::Call { path, shard, body };
                self.on_call(call)
                    .await
                    .map($crate::runtime::Reply::into_js)
                    .map_err(::wasm_bindgen::JsValue::from)
            }
        }
    };
}
pub(crate) use rpc_object;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_carries_the_status_and_the_body_a_fetch_caller_read() {
        let ok = Reply::json(&crate::object_api::Done {}).unwrap();
        assert_eq!((ok.status, ok.body.as_str()), (200, "{}"));
        let e = ApiError::new(404, "not_found", "no route /x");
        let r = Reply::error(&e);
        assert_eq!((r.status, r.body), (404, e.body()));
    }

    #[test]
    fn a_call_parses_its_message_or_fails() {
        let call = Call {
            path: "/x".into(),
            shard: String::new(),
            body: r#"{"tier":"pro"}"#.into(),
        };
        let t: crate::object_api::SetTier = call.message().unwrap();
        assert_eq!(t.tier.as_deref(), Some("pro"));
        let bad = Call {
            body: "{".into(),
            ..call
        };
        assert!(bad.message::<crate::object_api::SetTier>().is_err());
    }
}
