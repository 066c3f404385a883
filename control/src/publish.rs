//! From the replicated state to the policy snapshot edges enforce: [`policy_snapshot`] maps
//! tenants, connectors, restricted entities, users, the speed bump and the on-premises rules
//! onto the wire form the Policy service streams.

use moat_proto::convert::{
    connector_to_wire, restricted_to_wire, step_to_wire, tenant_to_wire, user_to_wire,
};
use moat_proto::v1;

use crate::state::State;

/// The policy snapshot of `state`, as the node thread publishes it after each change of the
/// policy version.
pub fn policy_snapshot(state: &State) -> v1::PolicySnapshot {
    v1::PolicySnapshot {
        version: state.policy_version,
        changed_at_ms: state.policy_changed_ms,
        tenants: state
            .directory
            .tenants
            .values()
            .map(tenant_to_wire)
            .collect(),
        connectors: state
            .directory
            .connectors
            .values()
            .map(connector_to_wire)
            .collect(),
        restricted: state.restricted.iter().map(restricted_to_wire).collect(),
        users: state.directory.users.values().map(user_to_wire).collect(),
        speed_bump: state.limits.speed_bump.iter().map(step_to_wire).collect(),
        onprem: Some(onprem_rules(state)),
        clock_offset_ms: state.clock_offset_ms,
    }
}

/// The on-premises part of the snapshot: the baseline, the servers under enforcement now with
/// their stage's throttle and block, the service and the scope.
fn onprem_rules(state: &State) -> v1::OnpremRules {
    v1::OnpremRules {
        baseline: baseline_to_wire(state),
        enforced: {
            let schedule = state.onprem.schedule();
            state
                .onprem
                .servers
                .values()
                .filter(|s| s.enforced(&schedule))
                .filter_map(|s| {
                    let st = schedule.get(s.stage)?;
                    Some(v1::EnforcedServer {
                        tenant: s.tenant.to_string(),
                        server: s.server.clone(),
                        stage: s.stage,
                        throttle: u32::from(st.throttle),
                        block: u32::from(st.block),
                    })
                })
                .collect()
        },
        service: state.onprem.service.clone(),
        all_connectors: state.onprem.all_connectors,
    }
}

/// The baseline builds (the built-in default when none is set), as the wire carries them.
pub fn baseline_to_wire(state: &State) -> Vec<String> {
    state
        .onprem
        .baseline()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}
