//! The policy control: one object (`control`) that keeps the shard policies an operator set
//! at run time (`placement::switch`), answers them to every gateway isolate (each reads them
//! again after `switch::REFRESH_MS`), and after a change tells the users' homes, whose
//! shards drain where the new policy no longer places sockets.
//!
//! A change for everyone goes through the registries, which know every user with open
//! sockets (a user whose home has not pushed metrics yet, within `METRICS_PUSH_MS` of its
//! first socket, is told at its next connect instead); a change for one user goes straight
//! to its home.

use std::cell::RefCell;
use std::rc::Rc;

use worker::{console_error, durable_object, DurableObject, Env, Request, Response, State};

use crate::object_api::{Message, NoticeUsers, PolicyGet, PolicyNotice, PolicySet, PolicySetReply};
use crate::placement::switch::{PolicyState, Switch};
use crate::runtime::{self, Call, Reply};

const KEY: &str = "policy";
/// How long the control waits for each registry or home it tells.
const NOTICE_TIMEOUT_MS: u32 = 5_000;

#[durable_object]
pub struct Control {
    state: State,
    env: Env,
    policies: Rc<RefCell<PolicyState>>,
}

impl DurableObject for Control {
    fn new(state: State, env: Env) -> Self {
        let policies = Rc::new(RefCell::new(PolicyState::default()));
        let slot = policies.clone();
        let storage = state.storage();
        let _load = state.block_concurrency_while(async move {
            if let Ok(Some(p)) = storage.get::<PolicyState>(KEY).await {
                *slot.borrow_mut() = p;
            }
            Ok(())
        });
        Self {
            state,
            env,
            policies,
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        self.on_call(Call::read(req).await?).await?.into_response()
    }

    runtime::socketless_handlers!();
}

runtime::rpc_object!(Control);

impl Control {
    async fn on_call(&self, call: Call) -> worker::Result<Reply> {
        match call.path.as_str() {
            <PolicyGet as Message>::PATH => Reply::json(&*self.policies.borrow()),
            <PolicySet as Message>::PATH => self.set(call.message()?).await,
            p => Ok(Reply::no_route(p.to_owned())),
        }
    }

    async fn set(&self, set: PolicySet) -> worker::Result<Reply> {
        let cfg =
            runtime::config(&self.env).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let mut next = self.policies.borrow().clone();
        let applied = match &set.user {
            Some(user) => next.set_user(user, set.switch.clone()),
            None => {
                next.set_global(set.switch.clone());
                Ok(())
            }
        };
        if let Err(e) = applied {
            let refused = PolicySetReply {
                state: next,
                refused: Some(e.to_string()),
            };
            return Reply::json(&refused);
        }
        // Stored before anyone is told: a notice never runs ahead of what isolates read.
        self.state.storage().put(KEY, &next).await?;
        *self.policies.borrow_mut() = next.clone();
        let drain_ms = set.switch.as_ref().map_or(set.drain_ms, |s| s.drain_ms);
        match set.user {
            Some(user) => {
                let e = next.effective(&user, &cfg.policy);
                let notice = PolicyNotice {
                    policy: e.policy.to_string(),
                    drain_ms,
                    version: next.version,
                };
                self.tell_home(user, notice);
            }
            None => {
                // Everyone without a policy of their own follows the global one (or the
                // config's once it is cleared).
                let policy = next.global.as_ref().and_then(Switch::parsed);
                let notice = PolicyNotice {
                    policy: policy.unwrap_or(cfg.policy).to_string(),
                    drain_ms,
                    version: next.version,
                };
                let except: Vec<String> = next.users.keys().cloned().collect();
                let registries = crate::placement::registry_names(cfg.registry_shards);
                self.tell_registries(registries, NoticeUsers { notice, except });
            }
        }
        Reply::json(&PolicySetReply {
            state: next,
            refused: None,
        })
    }

    /// One user's policy changed: its home tells its shards (in the background).
    fn tell_home(&self, user: String, notice: PolicyNotice) {
        let env = self.env.clone();
        runtime::object_wait_until(&self.state, async move {
            let r =
                runtime::timeout(NOTICE_TIMEOUT_MS, runtime::ask_home(&env, &user, &notice)).await;
            if !matches!(r, Some(Ok(_))) {
                console_error!("policy notice to {user}'s home failed");
            }
        });
    }

    /// Everyone's policy changed: each registry tells the homes of its users (in the
    /// background).
    fn tell_registries(&self, registries: Vec<String>, msg: NoticeUsers) {
        let env = self.env.clone();
        runtime::object_wait_until(&self.state, async move {
            let calls = registries.iter().map(|name| {
                let (env, msg) = (&env, &msg);
                async move {
                    let stub =
                        runtime::object(env, crate::object_api::REGISTRY_BINDING, name).ok()?;
                    runtime::timeout(NOTICE_TIMEOUT_MS, runtime::ask(&stub, None, msg))
                        .await?
                        .ok()
                }
            });
            for (name, r) in registries
                .iter()
                .zip(futures::future::join_all(calls).await)
            {
                if r.is_none() {
                    console_error!("policy notice to {name} failed");
                }
            }
        });
    }
}
