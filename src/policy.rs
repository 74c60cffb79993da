//! Who may do what to which app: operators everything; users the apps they own, or may act on through
//! their team. An app a user has no relation to is reported as absent.

use serde_json::Value;

use crate::auth::{Access, Principal};
use crate::record::AppRecord;

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    /// Stop, start or restart the app.
    ChangeStatus,
    Register,
    Delete,
}

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The caller may not know the app exists.
    Hidden,
    /// The caller sees the app but may not do this.
    Forbidden,
}

/// How a user relates to an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    None,
    Member { may_change_status: bool },
    Owner,
}

fn relation(record: &AppRecord, user_id: &str) -> Relation {
    if record.str_key("userId") == Some(user_id) {
        return Relation::Owner;
    }
    // `teamId` may be an id string or null (no team data: only the owner and operators act), or the
    // populated team object.
    let Some(team) = record.registered.get("teamId").filter(|t| t.is_object()) else {
        return Relation::None;
    };
    if team.get("owner").and_then(Value::as_str) == Some(user_id) {
        return Relation::Owner;
    }
    let member = team
        .get("members")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|m| m.get("user").and_then(Value::as_str) == Some(user_id));
    match member {
        Some(m) => Relation::Member {
            may_change_status: m
                .pointer("/permissions/canChangeStatusApplication")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        None => Relation::None,
    }
}

/// Whether `principal` may do `action` on `record`.
pub fn authorize(principal: &Principal, record: &AppRecord, action: Action) -> Result<(), Denial> {
    let user_id = match &principal.access {
        Access::Operator => return Ok(()),
        Access::User { user_id } => user_id,
    };
    match (action, relation(record, user_id)) {
        (_, Relation::None) => Err(Denial::Hidden),
        (Action::Register | Action::Delete, _) => Err(Denial::Forbidden),
        (Action::Read, _) | (Action::ChangeStatus, Relation::Owner) => Ok(()),
        (Action::ChangeStatus, Relation::Member { may_change_status }) => {
            if may_change_status {
                Ok(())
            } else {
                Err(Denial::Forbidden)
            }
        }
    }
}

/// Whether `principal` may register or delete records at all (before any record is looked at).
pub fn may_manage_records(principal: &Principal) -> bool {
    principal.is_operator()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(registered: Value) -> AppRecord {
        AppRecord::for_tests(registered.as_object().cloned().expect("object"))
    }

    fn user(id: &str) -> Principal {
        Principal {
            name: id.into(),
            access: Access::User { user_id: id.into() },
        }
    }

    #[test]
    fn operators_do_everything() {
        let op = Principal {
            name: "cp".into(),
            access: Access::Operator,
        };
        let r = record(json!({"containerId": "c"}));
        for a in [
            Action::Read,
            Action::ChangeStatus,
            Action::Register,
            Action::Delete,
        ] {
            assert_eq!(authorize(&op, &r, a), Ok(()));
        }
    }

    #[test]
    fn users_by_relation() {
        let r = record(json!({
            "containerId": "c", "userId": "owner",
            "teamId": {"owner": "lead", "members": [
                {"user": "can", "permissions": {"canChangeStatusApplication": true}},
                {"user": "cannot", "permissions": {"canChangeStatusApplication": false}},
                {"user": "bare"},
            ]},
        }));
        for who in ["owner", "lead", "can"] {
            assert_eq!(
                authorize(&user(who), &r, Action::ChangeStatus),
                Ok(()),
                "{who}"
            );
            assert_eq!(authorize(&user(who), &r, Action::Read), Ok(()), "{who}");
            assert_eq!(
                authorize(&user(who), &r, Action::Delete),
                Err(Denial::Forbidden),
                "{who}"
            );
        }
        for who in ["cannot", "bare"] {
            assert_eq!(
                authorize(&user(who), &r, Action::ChangeStatus),
                Err(Denial::Forbidden),
                "{who}"
            );
            assert_eq!(authorize(&user(who), &r, Action::Read), Ok(()), "{who}");
        }
        assert_eq!(
            authorize(&user("stranger"), &r, Action::Read),
            Err(Denial::Hidden)
        );
        assert_eq!(
            authorize(&user("stranger"), &r, Action::ChangeStatus),
            Err(Denial::Hidden)
        );
    }

    #[test]
    fn team_as_id_or_null_leaves_only_the_owner() {
        for team in [json!("t1"), Value::Null] {
            let r = record(json!({"containerId": "c", "userId": "owner", "teamId": team}));
            assert_eq!(authorize(&user("owner"), &r, Action::ChangeStatus), Ok(()));
            assert_eq!(
                authorize(&user("t1"), &r, Action::ChangeStatus),
                Err(Denial::Hidden)
            );
        }
    }
}
