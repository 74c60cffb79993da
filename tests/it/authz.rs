//! Who may stop and read what, on both stop routes, against the real agent and engine: owners, team
//! owners, members with and without the permission, and strangers. Every refusal leaves the container
//! running.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::team::{
    CAN, CANNOT, LEAD, OWNER, STRANGER, agent_with_users, agent_with_users_and, as_user, team,
    team_app,
};
use crate::support::{AgentOptions, Answer, Client, NODE_ID};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Route {
    V1,
    Okeanos,
}

/// Stops `id` as `user` through `route`; returns the status and the body.
async fn stop_as(client: &Client, route: Route, user: &str, id: &str) -> (u16, Value) {
    let c = as_user(client, user);
    let a = match route {
        Route::V1 => c.stop(id).await,
        Route::Okeanos => {
            c.send(
                c.http
                    .post(c.url(&format!("/api/apps/{id}/stop/")))
                    .header("Authorization", format!("Token {}", c.token))
                    .form(&[("lambda_instance_id", NODE_ID)]),
            )
            .await
        }
    };
    (a.status, a.body)
}

async fn wait_offline(client: &Client, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(&format!("/v1/apps/{id}")).await.body["currentResourceMetrics"]["online"]
        != false
    {
        assert!(Instant::now() < deadline, "{id} never went offline");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn owners_team_owners_and_permitted_members_may_stop_on_both_routes() {
    let agent = agent_with_users();
    let client = agent.client();
    for route in [Route::V1, Route::Okeanos] {
        for user in [OWNER, LEAD, CAN] {
            let (w, id) = team_app(&client, team()).await;
            let (status, body) = stop_as(&client, route, user, &id).await;
            match route {
                Route::V1 => {
                    assert_eq!(status, 200, "{route:?} {user}: {body}");
                    assert_eq!(body["currentResourceMetrics"]["online"], false);
                }
                Route::Okeanos => {
                    assert_eq!(status, 202, "{route:?} {user}: {body}");
                    wait_offline(&client, &id).await;
                }
            }
            assert!(!w.running().await, "{route:?} {user}");
            // The accepted stop is logged with the token's name.
            agent.wait_logged(&[": stopped ", &id, &format!("name-{user}")], 1);
        }
    }
    assert!(
        !agent.log_text().contains("token-of-"),
        "no token is ever logged"
    );
}

#[tokio::test]
async fn refused_callers_leave_the_container_untouched() {
    let agent = agent_with_users();
    let client = agent.client();
    let (w, id) = team_app(&client, team()).await;
    for route in [Route::V1, Route::Okeanos] {
        // A member without the permission sees the app but may not stop it.
        let (status, body) = stop_as(&client, route, CANNOT, &id).await;
        assert_eq!(status, 403, "{route:?}: {body}");
        match route {
            Route::V1 => assert_eq!(body["error"], "forbidden"),
            Route::Okeanos => assert_eq!(
                body,
                json!({"errors": [{"status": 403, "detail": "You do not have permission to perform this action."}]})
            ),
        }
        // A user with no relation to the app is told it does not exist.
        let (status, body) = stop_as(&client, route, STRANGER, &id).await;
        assert_eq!(status, 404, "{route:?}: {body}");
        match route {
            Route::V1 => assert_eq!(body["error"], "app_not_found"),
            Route::Okeanos => assert_eq!(
                body["errors"][0]["detail"],
                "The specified application doesn't exist."
            ),
        }
    }
    assert!(w.running().await, "no refused caller touched the container");
    let lines = agent.wait_logged(&["stop refused", &id, "name-user-cannot"], 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let lines = agent.wait_logged(&["stop refused", &id, "name-user-stranger"], 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        !agent.log_text().contains("token-of-"),
        "no token is ever logged"
    );
    // The operator still can.
    assert_eq!(client.stop(&id).await.status, 200);
}

#[tokio::test]
async fn a_team_given_as_an_id_or_null_leaves_only_the_owner() {
    let agent = agent_with_users();
    let client = agent.client();
    for team_id in [json!("team-1"), Value::Null] {
        let (w, id) = team_app(&client, team_id.clone()).await;
        for user in [LEAD, CAN] {
            for route in [Route::V1, Route::Okeanos] {
                let (status, body) = stop_as(&client, route, user, &id).await;
                assert_eq!(status, 404, "teamId {team_id} {user} {route:?}: {body}");
            }
        }
        assert!(w.running().await);
        let (status, body) = stop_as(&client, Route::V1, OWNER, &id).await;
        assert_eq!(status, 200, "{body}");
        assert!(!w.running().await);
        // And the owner through the ~okeanos route.
        let (w, id) = team_app(&client, team_id.clone()).await;
        let (status, body) = stop_as(&client, Route::Okeanos, OWNER, &id).await;
        assert_eq!(status, 202, "{body}");
        wait_offline(&client, &id).await;
        assert!(!w.running().await);
    }
}

#[tokio::test]
async fn reading_needs_only_membership_and_lists_show_only_what_may_be_read() {
    let agent = agent_with_users();
    let client = agent.client();
    let (_w1, team_id) = team_app(&client, team()).await;
    let (_w2, solo_id) = team_app(&client, Value::Null).await;
    let visible = |user: &'static str| {
        let c = as_user(&client, user);
        async move {
            let list = c.get("/v1/apps").await;
            assert_eq!(list.status, 200, "{list:?}");
            let mut ids: Vec<String> = list.body["applications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["_id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            (ids, list.body["pagination"]["totalItems"].as_u64().unwrap())
        }
    };
    let mut both = vec![team_id.clone(), solo_id.clone()];
    both.sort();
    assert_eq!(visible(OWNER).await, (both, 2));
    for member in [LEAD, CAN, CANNOT] {
        assert_eq!(
            visible(member).await,
            (vec![team_id.clone()], 1),
            "{member}"
        );
        let got = as_user(&client, member)
            .get(&format!("/v1/apps/{team_id}"))
            .await;
        assert_eq!(got.status, 200, "{member} reads the team's app");
        let hidden = as_user(&client, member)
            .get(&format!("/v1/apps/{solo_id}"))
            .await;
        assert_eq!(hidden.status, 404, "{member}");
    }
    assert_eq!(visible(STRANGER).await, (vec![], 0));
}

/// `GET /v1/apps/{id}/wait?online=false&timeout={secs}` as `client`'s token, in a task.
fn spawn_wait(client: &Client, id: &str, secs: u32) -> tokio::task::JoinHandle<Answer> {
    let (c, path) = (
        client.clone(),
        format!("/v1/apps/{id}/wait?online=false&timeout={secs}"),
    );
    tokio::spawn(async move { c.get(&path).await })
}

/// Until the agent counts `n` waits under way.
async fn until_waiting(client: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = format!("node_agent_waits_in_progress {n}");
    while !client.metrics_text().await.lines().any(|l| l == line) {
        assert!(Instant::now() < deadline, "never {n} waits under way");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One tenant cannot hold the agent: a user token's stop `timeout` and its concurrent waits are
/// capped; operators are not, and other tokens' waits go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_token_is_capped_in_stop_timeout_and_concurrent_waits() {
    let agent = agent_with_users_and(AgentOptions {
        auth_extra: "user_max_stop_timeout_secs = 5\nmax_waits_per_token = 2\n".into(),
        ..Default::default()
    });
    let client = agent.client();
    let owner = as_user(&client, OWNER);
    let (w, id) = team_app(&client, team()).await;

    // Over the cap: 400, and nothing happens to the container.
    for verb in ["stop", "restart"] {
        let a = owner.operate(&id, verb, "?timeout=6").await;
        assert_eq!(a.status, 400, "{verb}: {a:?}");
        assert_eq!(a.body["error"], "bad_request", "{a:?}");
        assert!(
            a.body["message"].as_str().unwrap().contains("at most 5"),
            "{a:?}"
        );
    }
    assert!(w.running().await);

    // Two waits of one user token hold its places; a third is 429 with Retry-After.
    let held = [spawn_wait(&owner, &id, 3), spawn_wait(&owner, &id, 3)];
    until_waiting(&client, 2).await;
    let refused = owner
        .get(&format!("/v1/apps/{id}/wait?online=false&timeout=3"))
        .await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.body["status"], 429, "{refused:?}");
    assert_eq!(refused.body["error"], "too_many_requests", "{refused:?}");
    assert!(refused.body["message"].as_str().unwrap().contains("2"));
    let retry = refused.headers.get("retry-after").expect("Retry-After");
    assert!(retry.to_str().unwrap().parse::<u32>().unwrap() >= 1);
    // Another user's token, and the operator's, are not held by them.
    let lead = as_user(&client, LEAD)
        .get(&format!("/v1/apps/{id}/wait?online=false&timeout=1"))
        .await;
    assert_eq!(lead.status, 408, "{lead:?}");
    let operator: Vec<_> = (0..3).map(|_| spawn_wait(&client, &id, 1)).collect();
    for a in operator {
        let a = a.await.unwrap();
        assert_eq!(a.status, 408, "{a:?}");
    }
    // A wait that holds at once takes no place.
    let now = owner
        .get(&format!("/v1/apps/{id}/wait?online=true&timeout=3"))
        .await;
    assert_eq!(now.status, 200, "{now:?}");
    // Once the waits end, their places are free again.
    for a in held {
        assert_eq!(a.await.unwrap().status, 408);
    }
    let again = owner
        .get(&format!("/v1/apps/{id}/wait?online=false&timeout=1"))
        .await;
    assert_eq!(again.status, 408, "{again:?}");

    // At the cap, the user's stop goes ahead; the operator may ask for the whole range.
    let a = owner.operate(&id, "stop", "?timeout=5").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(client.start(&id).await.status, 200);
    let a = client.operate(&id, "stop", "?timeout=3600").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(!w.running().await);
}

/// A wait re-checks the caller's right to read the app at each wake: access taken away by a
/// re-registration ends it as absent, and the new record is never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_as_absent_when_access_is_taken_away() {
    let agent = agent_with_users();
    let client = agent.client();
    let (w, id) = team_app(&client, team()).await;
    let waiting = spawn_wait(&as_user(&client, OWNER), &id, 30);
    until_waiting(&client, 1).await;
    let mut body = support::app_body(&id, &w.name);
    body["userId"] = json!(STRANGER);
    body["name"] = json!("someone else's now");
    let started = Instant::now();
    assert_eq!(client.register_body(&id, body).await.status, 200);
    let a = waiting.await.unwrap();
    assert_eq!(a.status, 404, "{a:?}");
    assert_eq!(a.body["error"], "app_not_found", "{a:?}");
    assert!(a.body.get("app").is_none(), "{a:?}");
    assert!(!a.body.to_string().contains("someone else's now"), "{a:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
