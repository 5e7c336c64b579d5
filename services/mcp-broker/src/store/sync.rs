//! What discovery changes in a server's stored tools: one plan, computed the same way by
//! every backend (each then writes it in its own way, atomically).
//!
//! Known tools are matched by their remote name. A tool keeps its name unless the name
//! it should have (`<prefix><remote name>`, see [`naming`]) changed, as after a new
//! `tool_prefix`; a name held by another tool gets a `_2`, `_3`... suffix. Tools that
//! disappear are disabled and marked withdrawn, so they are enabled again when they come
//! back — unless someone updated them by hand meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DiscoveredTool, JsonObject, SyncOutcome, ToolRecord, naming};

/// The changes that make the server's `known` tools match `discovered`, naming new and
/// renamed tools against `names` (every tool name in the catalogue → its tool), which is
/// kept up to date as names are given. The outcome's `tools` is left empty.
///
/// A tool only ever takes a name that is free or that an update planned before it frees,
/// so writing the updates (in order) before the creations never breaks uniqueness.
pub fn plan(
    prefix: &str,
    server_id: Uuid,
    known: Vec<ToolRecord>,
    names: &mut BTreeMap<String, Uuid>,
    discovered: &[DiscoveredTool],
    at: DateTime<Utc>,
) -> SyncOutcome {
    let known: HashMap<String, ToolRecord> =
        known.into_iter().filter_map(|tool| Some((tool.remote_name.clone()?, tool))).collect();
    let mut outcome = SyncOutcome::default();
    let mut offered = HashSet::new();
    for tool in discovered {
        if !offered.insert(tool.remote_name.as_str()) {
            continue;
        }
        let current = known.get(&tool.remote_name);
        let own_id = current.map(|c| c.id);
        let name = naming::unique(&naming::desired(prefix, &tool.remote_name), |candidate| {
            names.get(candidate).is_some_and(|holder| Some(*holder) != own_id)
        });
        let Some(next) = synced_tool(current, server_id, name, tool, at) else { continue };
        if let Some(current) = current {
            names.remove(&current.name);
        }
        names.insert(next.name.clone(), next.id);
        if current.is_some() {
            outcome.updated.push(next);
        } else {
            outcome.created.push(next);
        }
    }
    let mut gone: Vec<&ToolRecord> =
        known.values().filter(|t| t.enabled && !offered.contains(t.remote_name.as_deref().unwrap_or(""))).collect();
    gone.sort_by(|a, b| a.name.cmp(&b.name));
    outcome.disabled = gone
        .into_iter()
        .map(|tool| ToolRecord { enabled: false, withdrawn: true, updated_at: at, ..tool.clone() })
        .collect();
    outcome
}

/// The tool as discovery wants it, given the stored one (`None` for a new tool) and the
/// name it should have; `None` when the stored tool already matches.
fn synced_tool(
    current: Option<&ToolRecord>,
    server_id: Uuid,
    name: String,
    discovered: &DiscoveredTool,
    at: DateTime<Utc>,
) -> Option<ToolRecord> {
    let Some(current) = current else {
        return Some(ToolRecord {
            id: Uuid::now_v7(),
            name,
            description: discovered.description.clone(),
            schema: discovered.input_schema.clone(),
            mcp_server_id: Some(server_id),
            enabled: true,
            metadata: JsonObject::new(),
            title: discovered.title.clone(),
            output_schema: discovered.output_schema.clone(),
            annotations: discovered.annotations.clone(),
            remote_name: Some(discovered.remote_name.clone()),
            withdrawn: false,
            created_at: at,
            updated_at: at,
        });
    };
    let next = ToolRecord {
        name,
        description: discovered.description.clone(),
        schema: discovered.input_schema.clone(),
        title: discovered.title.clone(),
        output_schema: discovered.output_schema.clone(),
        annotations: discovered.annotations.clone(),
        enabled: current.enabled || current.withdrawn,
        withdrawn: false,
        ..current.clone()
    };
    let changed = next != *current;
    changed.then_some(ToolRecord { updated_at: at, ..next })
}
