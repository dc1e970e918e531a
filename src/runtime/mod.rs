//! The thin layer between the Workers runtime and the pure modules: env
//! access, clock, randomness, JSON responses, internal calls with timeouts.

use std::rc::Rc;
use std::time::Duration;

use futures::future::{select, Either};
use serde::Serialize;
use worker::{Delay, Env, Headers, Method, Request, RequestInit, Response};

use crate::config::{Config, ConfigError, VarSource};
use crate::protocol::ApiError;

mod calls;
pub(crate) use calls::rpc_object;
pub use calls::{
    answer, ask, ask_encoded, ask_home, ask_home_text, encode, object, upgrade, Call, Relayed,
    Reply,
};

/// Reads `[vars]` and secrets from the Worker environment.
pub struct EnvVars<'a>(pub &'a Env);

impl VarSource for EnvVars<'_> {
    fn var(&self, name: &str) -> Option<String> {
        // Secrets and plain vars are both strings on `env`.
        self.0
            .secret(name)
            .ok()
            .map(|s| s.to_string())
            .or_else(|| self.0.var(name).ok().map(|v| v.to_string()))
    }
}

thread_local! {
    static CONFIG: std::cell::RefCell<Option<Result<Rc<Config>, ConfigError>>> =
        const { std::cell::RefCell::new(None) };
}

/// The parsed configuration, once per isolate: vars and secrets only change
/// with a deploy, which starts a new isolate, so parsing per request (and
/// per shard call of a fan-out) would be wasted work.
pub fn config(env: &Env) -> Result<Rc<Config>, ConfigError> {
    CONFIG.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| Config::from_vars(&EnvVars(env)).map(Rc::new))
            .clone()
    })
}

/// The time in milliseconds: `Date.now()`, which `worker::Date::now` reaches by building a
/// `Date` object (about 1 % of the runtime's CPU under the fleet shape, in a profile).
pub fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues, catch)]
    fn get_random_values(buf: &mut [u8]) -> Result<wasm_bindgen::JsValue, wasm_bindgen::JsValue>;
}

/// Fills `b` from the platform's CSPRNG. `crypto.getRandomValues` directly: getrandom's
/// JavaScript backend takes the Node.js path under `nodejs_compat` (`randomFillSync`, about
/// 1.5 % of the runtime's CPU under the fleet shape, in a profile).
#[cfg(target_arch = "wasm32")]
fn fill_random(b: &mut [u8]) -> bool {
    get_random_values(b).is_ok() || getrandom::getrandom(b).is_ok()
}

#[cfg(not(target_arch = "wasm32"))]
fn fill_random(b: &mut [u8]) -> bool {
    getrandom::getrandom(b).is_ok()
}

/// 16 random bytes from the platform's CSPRNG. Falls back to time-derived
/// bytes if it ever fails, so a connection id is still unique in practice.
pub fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    if !fill_random(&mut b) {
        let t = now_ms().to_le_bytes();
        b[..8].copy_from_slice(&t);
    }
    b
}

pub fn json<T: Serialize>(status: u16, body: &T) -> worker::Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// A JSON answer already serialised.
pub fn json_text(status: u16, text: &str) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    Ok(Response::ok(text)?
        .with_status(status)
        .with_headers(headers))
}

/// A JSON answer with extra headers (rate limits, retry hints).
pub fn json_with_headers<T: Serialize>(
    status: u16,
    body: &T,
    extra: &[(&str, String)],
) -> worker::Result<Response> {
    let mut resp = json(status, body)?;
    for (k, v) in extra {
        resp.headers_mut().set(k, v)?;
    }
    Ok(resp)
}

pub fn error(e: &ApiError) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    if let Some(s) = e.retry_after_s {
        headers.set("retry-after", &s.to_string())?;
    }
    Ok(Response::ok(e.body())?
        .with_status(e.status)
        .with_headers(headers))
}

/// Runs `fut` for at most `ms` milliseconds.
pub async fn timeout<F: std::future::Future>(ms: u32, fut: F) -> Option<F::Output> {
    let delay = Delay::from(Duration::from_millis(u64::from(ms)));
    futures::pin_mut!(fut);
    match select(fut, delay).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// An absolute alarm time.
pub fn scheduled(at_ms: u64) -> worker::ScheduledTime {
    worker::ScheduledTime::new(js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(
        at_ms as f64,
    )))
}

fn promise<F: std::future::Future<Output = ()> + 'static>(fut: F) -> js_sys::Promise {
    worker::wasm_bindgen_futures::future_to_promise(async move {
        fut.await;
        Ok(wasm_bindgen::JsValue::UNDEFINED)
    })
}

/// `ctx.waitUntil` without the unwrap inside `Context::wait_until`: a panic
/// would reset every object in the isolate, a failed registration is only logged.
pub fn wait_until(ctx: &worker::Context, fut: impl std::future::Future<Output = ()> + 'static) {
    if let Err(e) = ctx.as_ref().wait_until(&promise(fut)) {
        worker::console_error!("waitUntil failed: {e:?}");
    }
}

/// `state.waitUntil` for Durable Objects, likewise without an unwrap.
pub fn object_wait_until(
    state: &worker::State,
    fut: impl std::future::Future<Output = ()> + 'static,
) {
    if let Err(e) = state.as_raw().wait_until(&promise(fut)) {
        worker::console_error!("waitUntil failed: {e:?}");
    }
}

/// Waits `ms`; zero returns at once instead of costing a timer turn (the
/// test knobs call this on every connect and frame with 0 when off).
pub async fn sleep(ms: u32) {
    if ms > 0 {
        Delay::from(Duration::from_millis(u64::from(ms))).await;
    }
}

/// What the gateway answers: a response it built, or a shard's answer relayed as is.
pub enum Answer {
    Built(Response),
    Relayed(Relayed),
}

impl From<Response> for Answer {
    fn from(r: Response) -> Self {
        Answer::Built(r)
    }
}

impl worker::IntoResponse for Answer {
    fn into_raw(
        self,
    ) -> std::result::Result<worker::web_sys::Response, impl Into<Box<dyn std::error::Error>>> {
        Ok::<_, worker::Error>(match self {
            Answer::Built(r) => r.into(),
            Answer::Relayed(r) => r.into_raw(),
        })
    }
}

/// A response's body as text, read by the runtime in one promise: `Response::text` of
/// workers-rs pulls the stream chunk by chunk across the wasm boundary, which profiling
/// under connection churn showed at about 7 % of all CPU for the internal calls.
async fn body_text(resp: Response) -> worker::Result<String> {
    let raw: worker::web_sys::Response = resp.into();
    let text = worker::wasm_bindgen_futures::JsFuture::from(raw.text()?).await?;
    Ok(text.as_string().unwrap_or_default())
}

/// POSTs a signed JSON body to the upstream (docs/upstream.md) within its timeout; answers
/// the status and body, or why there was none.
pub async fn upstream_post(
    env: &Env,
    up: &crate::upstream::UpstreamConfig,
    body: &str,
) -> Result<(u16, String), crate::upstream::Failure> {
    use crate::upstream::{self, Failure, Target};
    let fail = |e: worker::Error| Failure::Error(e.to_string());
    let now = now_ms();
    let headers = Headers::new();
    headers
        .set("content-type", "application/json")
        .map_err(fail)?;
    headers
        .set("x-edge-timestamp", &now.to_string())
        .map_err(fail)?;
    if let Some(sig) = upstream::sign(&up.secret, now, body) {
        headers.set("x-edge-signature", &sig).map_err(fail)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.to_owned().into()));
    let call = async {
        let resp = match &up.target {
            Target::Off => return Err(Failure::Error("no upstream is configured".into())),
            Target::Service => {
                let req = Request::new_with_init(upstream::SERVICE_URL, &init).map_err(fail)?;
                env.service(upstream::BINDING)
                    .map_err(fail)?
                    .fetch_request(req)
                    .await
                    .map_err(fail)?
            }
            Target::Url(u) => {
                let req = Request::new_with_init(u, &init).map_err(fail)?;
                worker::Fetch::Request(req).send().await.map_err(fail)?
            }
        };
        let status = resp.status_code();
        let text = body_text(resp).await.map_err(fail)?;
        Ok((status, text))
    };
    timeout(up.timeout_ms, call)
        .await
        .unwrap_or(Err(Failure::Timeout(up.timeout_ms)))
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// A socket seen only through `send(value)`, so one string converted once can go to
    /// many sockets (`web_sys` offers only the per-call converting `send_with_str`).
    type Sendable;
    #[wasm_bindgen(method, catch, js_name = send)]
    fn send_value(
        this: &Sendable,
        data: &wasm_bindgen::JsValue,
    ) -> Result<(), wasm_bindgen::JsValue>;
}

/// Sends one frame to every socket; returns how many took it (a closing socket refuses).
/// The frame becomes a JavaScript string once: `send_with_str` encodes it anew for each
/// socket, which profiling showed as most of a large broadcast's cost.
pub fn send_all<'a>(sockets: impl IntoIterator<Item = &'a worker::WebSocket>, frame: &str) -> u64 {
    let text = wasm_bindgen::JsValue::from_str(frame);
    sockets
        .into_iter()
        .filter(|w| {
            let socket: &worker::web_sys::WebSocket = w.as_ref();
            wasm_bindgen::JsCast::unchecked_ref::<Sendable>(socket)
                .send_value(&text)
                .is_ok()
        })
        .count() as u64
}

/// Keeps `value` as the socket's hibernation attachment, as JSON text; answers its length.
/// workers-rs would store it as a JavaScript object built field by field across the wasm
/// boundary (`serde_wasm_bindgen`), and read it back the same way on every frame, close and
/// filtered delivery; a string crosses once and parses in wasm.
pub fn attach<T: Serialize>(ws: &worker::WebSocket, value: &T) -> worker::Result<usize> {
    use worker::worker_sys::ext::WebSocketExt;
    let text = serde_json::to_string(value)?;
    let socket: &worker::web_sys::WebSocket = ws.as_ref();
    socket.serialize_attachment(wasm_bindgen::JsValue::from_str(&text))?;
    Ok(text.len())
}

/// The socket's attachment ([`attach`]); one stored as an object (by a version before
/// [`attach`], still open across the deploy) is read the old way.
pub fn attached<T: serde::de::DeserializeOwned>(ws: &worker::WebSocket) -> Option<T> {
    use worker::worker_sys::ext::WebSocketExt;
    let socket: &worker::web_sys::WebSocket = ws.as_ref();
    let v = socket.deserialize_attachment().ok()?;
    match v.as_string() {
        Some(text) => serde_json::from_str(&text).ok(),
        None if v.is_null() || v.is_undefined() => None,
        None => ws.deserialize_attachment::<T>().ok().flatten(),
    }
}

/// An object's one alarm, shared by the parts that need it: each asks for a time, and the
/// alarm is moved only when that time is earlier than the one set (the handler re-arms).
#[derive(Debug, Default)]
pub struct AlarmClock {
    armed_at: std::cell::Cell<Option<u64>>,
    /// Whether `armed_at` is known. A woken object does not know the alarm its previous
    /// life set: it reads it before moving it, or a later time would replace an earlier one
    /// (a drain's step delayed to a report's retry).
    known: std::cell::Cell<bool>,
}

impl AlarmClock {
    /// Makes sure the alarm fires no later than `at`.
    pub async fn arm(&self, state: &worker::State, at: u64) -> worker::Result<()> {
        if !self.known.get() {
            let stored = state.storage().get_alarm().await?;
            // Another arm may have run while this one read.
            if !self.known.replace(true) {
                self.armed_at
                    .set(stored.and_then(|ms| u64::try_from(ms).ok()));
            }
        }
        if self.armed_at.get().is_some_and(|armed| armed <= at) {
            return Ok(());
        }
        self.armed_at.set(Some(at));
        state.storage().set_alarm(scheduled(at)).await
    }

    /// The alarm fired (or was deleted): nothing is set any more.
    pub fn fired(&self) {
        self.known.set(true);
        self.armed_at.set(None);
    }
}

/// The handlers a Durable Object without sockets or TCP still has to
/// implement: the workers-rs defaults panic, and a panic resets every object
/// in the isolate. Expands inside `impl DurableObject for ...`.
macro_rules! socketless_handlers {
    () => {
        async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
            Err(worker::Error::RustError(
                "TCP connect is not supported".into(),
            ))
        }

        async fn websocket_message(
            &self,
            _ws: worker::WebSocket,
            _m: worker::WebSocketIncomingMessage,
        ) -> worker::Result<()> {
            Ok(())
        }

        async fn websocket_close(
            &self,
            _ws: worker::WebSocket,
            _code: usize,
            _reason: String,
            _clean: bool,
        ) -> worker::Result<()> {
            Ok(())
        }

        async fn websocket_error(
            &self,
            _ws: worker::WebSocket,
            _e: worker::Error,
        ) -> worker::Result<()> {
            Ok(())
        }
    };
}
pub(crate) use socketless_handlers;
