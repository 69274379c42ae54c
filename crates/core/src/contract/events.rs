//! The events the master publishes, decoded by hand from a JSON value rather than by `serde` derive, so
//! that a rejection names the field and the rule it broke, and so that the `event_id` and `allocation_id`
//! of a bad event can still be read for the `failed` reply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{EventKind, SCHEMA_VERSION};
use crate::validate;

/// Larger payloads are refused unread: an event is a few hundred bytes, so this bounds what a hostile
/// publisher can make a worker parse.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
const MAX_SELECTOR_PAIRS: usize = 16;
const MAX_PROXY_PORTS: usize = 16;

/// One proxy port a task asks to expose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyPort {
    /// IANA service name, unique within the event.
    pub name: String,
    /// The container port the task listens on.
    pub port: u16,
}

/// A validated `started` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub event_id: Uuid,
    pub allocation_id: String,
    pub task_id: Option<String>,
    pub namespace: String,
    pub pod_selector: BTreeMap<String, String>,
    pub proxy_ports: Vec<ProxyPort>,
    pub occurred_at: Option<String>,
}

/// A validated `ended` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub event_id: Uuid,
    pub allocation_id: String,
    pub occurred_at: Option<String>,
}

/// A validated event of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started(Started),
    Ended(Ended),
}

impl Event {
    /// The id the master published the event under.
    pub fn event_id(&self) -> Uuid {
        match self {
            Event::Started(s) => s.event_id,
            Event::Ended(e) => e.event_id,
        }
    }

    /// The allocation the event is about.
    pub fn allocation_id(&self) -> &str {
        match self {
            Event::Started(s) => &s.allocation_id,
            Event::Ended(e) => &e.allocation_id,
        }
    }
}

/// Why an event was refused, with whatever identifying fields could still be read from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct InvalidEvent {
    /// The JSON path of the offending field (`proxy_ports[1].name`), or `payload` for the whole message.
    pub field: String,
    /// What is wrong, as a sentence fragment naming the rule.
    pub problem: String,
    /// The event id, when it was readable and valid.
    pub event_id: Option<Uuid>,
    /// The allocation id, when it was readable and valid.
    pub allocation_id: Option<String>,
}

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    event_id: Option<Uuid>,
    allocation_id: Option<String>,
}

impl<'a> Fields<'a> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> InvalidEvent {
        InvalidEvent {
            field: field.into(),
            problem: problem.into(),
            event_id: self.event_id,
            allocation_id: self.allocation_id.clone(),
        }
    }

    fn required(&self, name: &str) -> Result<&'a Value, InvalidEvent> {
        self.obj
            .get(name)
            .ok_or_else(|| self.err(name, "is required but missing"))
    }

    fn string(&self, name: &str) -> Result<&'a str, InvalidEvent> {
        self.required(name)?
            .as_str()
            .ok_or_else(|| self.err(name, "must be a string"))
    }

    fn optional_string(&self, name: &str) -> Result<Option<String>, InvalidEvent> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(name, "must be a string when present")),
        }
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        format!("{s:?}")
    } else {
        let cut = (0..=MAX)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{:?}... ({} bytes)", &s[..cut], s.len())
    }
}

/// The schemas' form of a UUID, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`. `Uuid::parse_str` also reads the
/// simple, braced and URN forms, which name the same id in other words and would be echoed back in a form
/// the master never sent.
fn is_hyphenated_uuid(s: &str) -> bool {
    s.len() == 36 && Uuid::parse_str(s).is_ok()
}

/// Decodes and validates one event payload of the given kind.
///
/// # Errors
/// [`InvalidEvent`] naming the first field that breaks the contract.
pub fn decode_event(kind: EventKind, payload: &[u8]) -> Result<Event, InvalidEvent> {
    let bare = |field: &str, problem: String| InvalidEvent {
        field: field.into(),
        problem,
        event_id: None,
        allocation_id: None,
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(bare(
            "payload",
            format!(
                "is {} bytes, more than the limit of {MAX_PAYLOAD_BYTES}",
                payload.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| bare("payload", format!("is not valid JSON: {e}")))?;
    let Value::Object(obj) = &value else {
        return Err(bare("payload", "must be a JSON object".into()));
    };
    let mut f = Fields {
        obj,
        event_id: None,
        allocation_id: None,
    };
    // Identity first, so every later rejection can carry it.
    if let Some(id) = obj
        .get("event_id")
        .and_then(Value::as_str)
        .filter(|s| is_hyphenated_uuid(s))
        .and_then(|s| Uuid::parse_str(s).ok())
    {
        f.event_id = Some(id);
    }
    if let Some(id) = obj
        .get("allocation_id")
        .and_then(Value::as_str)
        .filter(|s| validate::is_allocation_id(s))
    {
        f.allocation_id = Some(id.to_owned());
    }

    match f.required("schema_version")?.as_u64() {
        Some(SCHEMA_VERSION) => {}
        _ => {
            return Err(f.err(
                "schema_version",
                format!("must be {SCHEMA_VERSION}, the version this worker reads"),
            ));
        }
    }
    let event_id_str = f.string("event_id")?;
    let event_id = f.event_id.ok_or_else(|| {
        f.err(
            "event_id",
            format!(
                "{} is not a UUID written as 8-4-4-4-12 hex digits",
                shorten(event_id_str)
            ),
        )
    })?;
    let alloc_str = f.string("allocation_id")?;
    let allocation_id = f.allocation_id.clone().ok_or_else(|| {
        f.err(
            "allocation_id",
            format!(
                "{} must be 1 to 255 printable ASCII characters without whitespace",
                shorten(alloc_str)
            ),
        )
    })?;
    let occurred_at = f.optional_string("occurred_at")?;
    if let Some(at) = &occurred_at
        && !validate::is_rfc3339_timestamp(at)
    {
        {
            return Err(f.err(
                "occurred_at",
                format!("{} is not an RFC 3339 timestamp", shorten(at)),
            ));
        }
    }
    if kind == EventKind::Ended {
        return Ok(Event::Ended(Ended {
            event_id,
            allocation_id,
            occurred_at,
        }));
    }

    let task_id = f.optional_string("task_id")?;
    let namespace = f.string("namespace")?;
    if !validate::is_dns1123_label(namespace) {
        return Err(f.err(
            "namespace",
            format!(
                "{} must be {}",
                shorten(namespace),
                validate::DNS1123_LABEL_RULE
            ),
        ));
    }
    let selector = f
        .required("pod_selector")?
        .as_object()
        .ok_or_else(|| f.err("pod_selector", "must be an object of label pairs"))?;
    if selector.is_empty() || selector.len() > MAX_SELECTOR_PAIRS {
        return Err(f.err(
            "pod_selector",
            format!(
                "has {} pairs; it must have 1 to {MAX_SELECTOR_PAIRS}",
                selector.len()
            ),
        ));
    }
    let mut pod_selector = BTreeMap::new();
    for (k, v) in selector {
        let field = format!("pod_selector.{}", shorten(k));
        if !validate::is_label_key(k) {
            return Err(f.err(field, "key is not a valid Kubernetes label key"));
        }
        let v = v
            .as_str()
            .ok_or_else(|| f.err(field.clone(), "value must be a string"))?;
        if !validate::is_label_value(v) {
            return Err(f.err(
                field,
                format!("value {} is not a valid Kubernetes label value", shorten(v)),
            ));
        }
        pod_selector.insert(k.clone(), v.to_owned());
    }

    let ports = f
        .required("proxy_ports")?
        .as_array()
        .ok_or_else(|| f.err("proxy_ports", "must be an array"))?;
    if ports.is_empty() || ports.len() > MAX_PROXY_PORTS {
        return Err(f.err(
            "proxy_ports",
            format!(
                "has {} entries; it must have 1 to {MAX_PROXY_PORTS}",
                ports.len()
            ),
        ));
    }
    let mut proxy_ports: Vec<ProxyPort> = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let at = |k: &str| format!("proxy_ports[{i}].{k}");
        let obj = p
            .as_object()
            .ok_or_else(|| f.err(format!("proxy_ports[{i}]"), "must be an object"))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| f.err(at("name"), "is required and must be a string"))?;
        if !validate::is_iana_svc_name(name) {
            return Err(f.err(at("name"), format!("{} must be an IANA service name: 1 to 15 characters of a-z, 0-9 and '-', with a letter, no leading, trailing or doubled '-'", shorten(name))));
        }
        let port = obj
            .get("port")
            .and_then(Value::as_u64)
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| f.err(at("port"), "must be an integer from 1 to 65535"))?;
        let port = u16::try_from(port).map_err(|_| f.err(at("port"), "out of range"))?;
        if proxy_ports.iter().any(|q| q.name == name) {
            return Err(f.err(
                at("name"),
                format!("{name:?} appears twice; names must be unique"),
            ));
        }
        if proxy_ports.iter().any(|q| q.port == port) {
            return Err(f.err(
                at("port"),
                format!("{port} appears twice; ports must be unique"),
            ));
        }
        proxy_ports.push(ProxyPort {
            name: name.to_owned(),
            port,
        });
    }
    Ok(Event::Started(Started {
        event_id,
        allocation_id,
        task_id,
        namespace: namespace.to_owned(),
        pod_selector,
        proxy_ports,
        occurred_at,
    }))
}
