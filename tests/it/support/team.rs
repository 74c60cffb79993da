//! The users and the team the authorization tests share: an owner, a team owner, members with and
//! without `canChangeStatusApplication`, and a stranger, each with a user token of their own.

use serde_json::{Value, json};

use super::{AgentOptions, AgentProcess, Client, Workload, app_body, app_id};

pub const OWNER: &str = "user-owner";
pub const LEAD: &str = "user-lead";
pub const CAN: &str = "user-can";
pub const CANNOT: &str = "user-cannot";
pub const STRANGER: &str = "user-stranger";
pub const USERS: [&str; 5] = [OWNER, LEAD, CAN, CANNOT, STRANGER];

/// The token of `user`.
pub fn token_of(user: &str) -> String {
    format!("token-of-{user}")
}

/// The name of `user`'s token, as the agent logs it.
pub fn token_name(user: &str) -> String {
    format!("name-{user}")
}

/// An agent that knows every user's token.
pub fn agent_with_users() -> AgentProcess {
    agent_with_users_and(AgentOptions::default())
}

/// An agent that knows every user's token, with `options` besides.
pub fn agent_with_users_and(options: AgentOptions) -> AgentProcess {
    AgentProcess::start_with(AgentOptions {
        user_tokens: USERS
            .iter()
            .map(|u| (token_name(u), token_of(u), u.to_string()))
            .collect(),
        ..options
    })
}

/// `client`, acting as `user`.
pub fn as_user(client: &Client, user: &str) -> Client {
    let mut c = client.clone();
    c.token = token_of(user);
    c
}

/// The team object as the CamposCloud document populates it.
pub fn team() -> Value {
    let member = |user: &str, may: bool| json!({"user": user, "permissions": {"canChangeStatusApplication": may, "canCreateApplication": true}, "_id": format!("m-{user}")});
    json!({
        "_id": "team-1", "name": "My Team", "owner": LEAD,
        "members": [member(CAN, true), member(CANNOT, false)],
        "invites": [], "createdAt": "2025-07-18T23:49:19.701Z", "updatedAt": "2025-07-19T17:57:05.069Z",
    })
}

/// A running container registered as an app of `OWNER` with the given `teamId`.
pub async fn team_app(client: &Client, team_id: Value) -> (Workload, String) {
    let w = Workload::start("exit").await;
    let id = app_id();
    let mut body = app_body(&id, &w.name);
    body["userId"] = json!(OWNER);
    body["teamId"] = team_id;
    client.register_body(&id, body).await;
    (w, id)
}
