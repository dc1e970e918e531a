//! The user's shard policy as its home knows it: the config's, until a run-time switch
//! (`placement::switch`) reaches the home, by the control's notice or on a connect placed
//! under it. The latest notice is stored with the home's record, so a restart keeps it.

use shard_policies::PolicyConfig;

use super::Home;
use crate::config::Config;
use crate::object_api::PolicyNotice;

impl Home {
    /// The policy the user's sockets are placed by now.
    pub fn policy(&self, cfg: &Config) -> PolicyConfig {
        self.saved
            .borrow()
            .policy
            .as_ref()
            .and_then(|n| n.policy.parse().ok())
            .unwrap_or(cfg.policy)
    }

    /// The policy's text as reported: the notice's canonical form, or `SHARD_POLICY` as
    /// written.
    pub fn policy_name(&self, cfg: &Config) -> String {
        match &self.saved.borrow().policy {
            Some(n) => n.policy.clone(),
            None => cfg.policy_name.clone(),
        }
    }

    /// Keeps `n` if it is newer than the notice the home has (version 0 is the config's
    /// policy with nothing ever set: nothing to learn). Answers whether it was.
    pub async fn learn_policy(&self, n: &PolicyNotice) -> worker::Result<bool> {
        let newer = n.version > 0
            && self
                .saved
                .borrow()
                .policy
                .as_ref()
                .is_none_or(|have| n.version > have.version);
        if newer {
            self.saved.borrow_mut().policy = Some(n.clone());
            self.save().await?;
        }
        Ok(newer)
    }
}
