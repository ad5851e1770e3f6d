//! APISIX's `headers` shape shared by `proxy-rewrite` and
//! `response-rewrite`: `{add, set, remove}`, or a flat map read as `set`.
//! Each plugin says what `add` holds (a map, or `"name: value"` lines).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(bound = "A: JsonSchema + Default + serde::Serialize")]
#[serde(untagged, bound(deserialize = "A: Deserialize<'de> + Default"))]
pub(crate) enum HeaderEdits<A> {
    Ops(HeaderOps<A>),
    Set(BTreeMap<String, String>),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(bound = "A: JsonSchema + Default + serde::Serialize")]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "A: Deserialize<'de> + Default")
)]
pub(crate) struct HeaderOps<A> {
    #[serde(default)]
    pub(crate) add: A,
    #[serde(default)]
    pub(crate) set: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) remove: Vec<String>,
}

impl<A: Default> HeaderEdits<A> {
    /// The edits as `{add, set, remove}`; none when unset.
    pub(crate) fn ops(edits: Option<Self>) -> HeaderOps<A> {
        match edits {
            Some(HeaderEdits::Ops(ops)) => ops,
            Some(HeaderEdits::Set(set)) => HeaderOps {
                add: A::default(),
                set,
                remove: Vec::new(),
            },
            None => HeaderOps {
                add: A::default(),
                set: BTreeMap::new(),
                remove: Vec::new(),
            },
        }
    }
}
