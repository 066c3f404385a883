//! Legacy TLS (1.0/1.1): on a legacy (opt-in) listener only users of tenants with
//! `allow-legacy-tls-clients` pass AUTH (`550 5.7.67`); on a standard listener the cluster's
//! speed bump schedule refuses a share of legacy sessions (`421 4.7.66`) at AUTH, or at MAIL on
//! listeners without AUTH. The session's draw is an input, so the decision stays pure.

use moat_shared::{PolicySnapshot, TenantId};

use super::Denial;
use crate::config::LegacyTls;

/// What the legacy-TLS rules need to know of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Legacy {
    /// The listener's rule.
    pub rule: LegacyTls,
    /// Whether the session negotiated TLS 1.0 or 1.1.
    pub legacy: bool,
    /// The session's speed bump draw, 0 to 99 (`moat_shared::submission::speed_bump_draw`).
    pub draw: u8,
}

/// The speed bump: a legacy session on a speed-bump listener is refused when its draw falls
/// below the share of the schedule in force at `now_ms`.
pub fn speed_bump(snapshot: &PolicySnapshot, s: &Legacy, now_ms: i64) -> Result<(), Denial> {
    if s.rule != LegacyTls::SpeedBump || !s.legacy {
        return Ok(());
    }
    let percent = snapshot.speed_bump_percent(now_ms);
    if s.draw < percent {
        return Err(Denial::SpeedBump {
            percent,
            draw: s.draw,
        });
    }
    Ok(())
}

/// AUTH by a user of `tenant`, whose password was right: the opt-in rule of legacy listeners
/// (whatever TLS version this session has), then the speed bump.
pub fn at_auth(
    snapshot: &PolicySnapshot,
    s: &Legacy,
    tenant: &TenantId,
    now_ms: i64,
) -> Result<(), Denial> {
    if s.rule == LegacyTls::OptIn
        && !snapshot
            .tenant(tenant)
            .is_some_and(|t| t.allow_legacy_tls_clients)
    {
        return Err(Denial::LegacyTlsRefused {
            tenant: tenant.clone(),
        });
    }
    speed_bump(snapshot, s, now_ms)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use moat_shared::submission::SpeedBumpStep;

    /// contoso allows legacy clients, other does not; the speed bump refuses 30 %.
    fn snap() -> PolicySnapshot {
        let mut contoso = tenant("contoso", &["contoso.test"]);
        contoso.allow_legacy_tls_clients = true;
        PolicySnapshot::from_change(&moat_shared::PolicyChange {
            version: 1,
            reset: true,
            tenants: vec![contoso, tenant("other", &["other.test"])],
            speed_bump: Some(vec![SpeedBumpStep::parse("1970-01-01=30").unwrap()]),
            ..Default::default()
        })
        .unwrap()
    }

    /// One row per legacy-TLS reply: (case, inputs -> denial, reply, counter).
    #[test]
    fn legacy_tls_table() {
        let snap = snap();
        let s = |rule, legacy, draw| Legacy { rule, legacy, draw };
        let t = |id: &str| TenantId::new(id).unwrap();
        let bump = "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2. Visit https://aka.ms/smtp_auth_tls.";
        let opt_in = "550 5.7.67 TLS 1.0 and 1.1 are not supported by your organization";
        use LegacyTls::{OptIn, SpeedBump};
        check(&[
            (
                "speed bump: legacy session drawn below the share",
                speed_bump(&snap, &s(SpeedBump, true, 29), 0).err(),
                Some(bump),
                Some("auth - speed-bump"),
            ),
            (
                "speed bump: legacy session drawn at the share",
                speed_bump(&snap, &s(SpeedBump, true, 30), 0).err(),
                None,
                None,
            ),
            (
                "speed bump: a modern session is never drawn",
                speed_bump(&snap, &s(SpeedBump, false, 0), 0).err(),
                None,
                None,
            ),
            (
                "speed bump: not on an opt-in listener",
                speed_bump(&snap, &s(OptIn, true, 0), 0).err(),
                None,
                None,
            ),
            (
                "AUTH on an opt-in listener, tenant not opted in",
                at_auth(&snap, &s(OptIn, false, 99), &t("other"), 0).err(),
                Some(opt_in),
                Some("auth - legacy-refused"),
            ),
            (
                "AUTH on an opt-in listener, tenant opted in",
                at_auth(&snap, &s(OptIn, true, 0), &t("contoso"), 0).err(),
                None,
                None,
            ),
            (
                "AUTH on a standard listener, drawn by the speed bump",
                at_auth(&snap, &s(SpeedBump, true, 0), &t("contoso"), 0).err(),
                Some(bump),
                Some("auth - speed-bump"),
            ),
        ]);
        assert_eq!(
            speed_bump(&snap, &s(SpeedBump, true, 7), 0),
            Err(Denial::SpeedBump {
                percent: 30,
                draw: 7
            })
        );
    }
}
