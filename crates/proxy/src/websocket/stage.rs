//! The runtime side of a managed WebSocket API's stage: its routes by route key, route
//! selection and limits. Built with the Runtime, held by each session for its lifetime.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;
use tollgate_ir::websocket::{self as irws, CONNECT, DEFAULT, DISCONNECT};
use tollgate_ir::{self as ir};

use crate::runtime::RoutePolicy;

/// One stage of a managed WebSocket API.
pub struct ManagedStage {
    /// Where the route key is found in a text message.
    pub selection: Vec<String>,
    /// Frame/message sizes, idle timeout and lifetime.
    pub limits: irws::WebSocketLimits,
    routes: HashMap<String, Arc<RoutePolicy>>,
}

/// Which route a message goes to.
pub struct Selected<'a> {
    /// The route key the message selected (or `$default`).
    pub key: String,
    /// The Route serving it; `None`: neither that key nor `$default` has one.
    pub policy: Option<&'a Arc<RoutePolicy>>,
}

impl ManagedStage {
    /// Starts a stage of `api`.
    pub fn builder(api: &irws::WebSocketApi) -> ManagedStageBuilder {
        ManagedStageBuilder {
            stage: ManagedStage {
                selection: api.route_selection.clone(),
                limits: api.limits.clone(),
                routes: HashMap::new(),
            },
        }
    }

    /// The `$disconnect` Route, if the stage has one.
    pub fn disconnect(&self) -> Option<&Arc<RoutePolicy>> {
        self.routes.get(DISCONNECT)
    }

    /// The route for `message`: the key the selection expression finds in a JSON text message
    /// when a Route serves it, otherwise `$default`.
    pub fn select(&self, message: &Message) -> Selected<'_> {
        if let Some(key) = selection_key(&self.selection, message)
            && let Some(policy) = self.routes.get(&key).filter(|_| !key.starts_with('$'))
        {
            return Selected { key, policy: Some(policy) };
        }
        Selected { key: DEFAULT.to_string(), policy: self.routes.get(DEFAULT) }
    }

    /// The key `message` selects, for error messages (`None`: not JSON or no such member).
    pub fn wanted_key(&self, message: &Message) -> Option<String> {
        selection_key(&self.selection, message)
    }
}

/// The value at `path` in a JSON text message, as text (strings as they are; numbers and
/// booleans in JSON form).
fn selection_key(path: &[String], message: &Message) -> Option<String> {
    let Message::Text(text) = message else { return None };
    let value: serde_json::Value = serde_json::from_str(text.as_str()).ok()?;
    let mut at = &value;
    for member in path {
        at = at.get(member.as_str())?;
    }
    match at {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Collects a stage's routes while the Runtime builds them.
pub struct ManagedStageBuilder {
    stage: ManagedStage,
}

impl ManagedStageBuilder {
    /// Takes the policy of `route`. Returns it back for the `$connect` Route, which goes into the
    /// stage's route table (the upgrade request runs the whole pipeline on it).
    pub fn take(&mut self, route: &ir::Route, policy: Arc<RoutePolicy>) -> Option<Arc<RoutePolicy>> {
        match route.route_key.as_deref() {
            Some(CONNECT) => Some(policy),
            Some(key) => {
                self.stage.routes.entry(key.to_string()).or_insert(policy);
                None
            }
            None => None,
        }
    }

    /// The finished stage.
    pub fn build(self) -> Arc<ManagedStage> {
        Arc::new(self.stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_reads_a_json_member() {
        let path = vec!["action".to_string()];
        let key = |text: &str| selection_key(&path, &Message::text(text));
        assert_eq!(key(r#"{"action":"sendMessage","x":1}"#), Some("sendMessage".to_string()));
        assert_eq!(key(r#"{"action":7}"#), Some("7".to_string()));
        assert_eq!(key(r#"{"other":"x"}"#), None);
        assert_eq!(key("not json"), None);
        let nested = vec!["meta".to_string(), "type".to_string()];
        assert_eq!(selection_key(&nested, &Message::text(r#"{"meta":{"type":"t"}}"#)), Some("t".to_string()));
        assert_eq!(selection_key(&path, &Message::binary(b"{\"action\":\"a\"}".to_vec())), None);
    }
}
