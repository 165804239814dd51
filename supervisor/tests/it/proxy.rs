//! The happy path through the proxy: example plugins, every part of a request and response
//! carried both ways, and many requests at once.

use crate::harness::{PluginDef, TestSupervisor};

fn examples() -> Vec<PluginDef> {
    vec![
        PluginDef::relative("hello", "plugd-example-hello"),
        PluginDef::bin(
            "notes",
            "plugd-example-notes",
            &[],
            "[limits]\nmax_body = \"64KiB\"\n",
        ),
        PluginDef::echo("echo", ""),
    ]
}

#[tokio::test]
async fn example_plugins_answer_through_the_proxy() {
    let sup = TestSupervisor::start(&examples(), &[]).await;

    let r = sup.get("/plugins/hello/hello").await.expect("hello");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("text"), "hello, world\n");

    sup.get("/plugins/hello/hello/ann")
        .await
        .expect("first visit");
    let r = sup
        .get("/plugins/hello/hello/ann?greeting=hi")
        .await
        .expect("second visit");
    assert_eq!(r.text().await.expect("text"), "hi, ann! (visit 2)\n");
    let stats = sup.get_json("/plugins/hello/stats", 200).await;
    assert_eq!(stats["visits"]["ann"], 2);

    // notes: create, read, update, list, delete, and a bad body.
    let created = sup
        .client
        .post(sup.url("/plugins/notes/notes"))
        .json(&serde_json::json!({"title": "t1", "body": "b1"}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let note: serde_json::Value = created.json().await.expect("json");
    let id = note["id"].as_u64().expect("id");
    let got = sup
        .get_json(&format!("/plugins/notes/notes/{id}"), 200)
        .await;
    assert_eq!(got["title"], "t1");
    let updated = sup
        .client
        .put(sup.url(&format!("/plugins/notes/notes/{id}")))
        .json(&serde_json::json!({"title": "t2"}))
        .send()
        .await
        .expect("update");
    assert_eq!(updated.status(), 200);
    let all = sup.get_json("/plugins/notes/notes", 200).await;
    assert_eq!(all.as_array().expect("list").len(), 1);
    assert_eq!(all[0]["title"], "t2");
    let bad = sup
        .client
        .post(sup.url("/plugins/notes/notes"))
        .body("{not json")
        .send()
        .await
        .expect("bad create");
    assert_eq!(bad.status(), 400);
    let error: serde_json::Value = bad.json().await.expect("json");
    assert!(error["error"]
        .as_str()
        .expect("message")
        .contains("not valid JSON"));
    let deleted = sup
        .client
        .delete(sup.url(&format!("/plugins/notes/notes/{id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    sup.get_json(&format!("/plugins/notes/notes/{id}"), 404)
        .await;
}

#[tokio::test]
async fn a_request_without_an_id_gets_one_that_the_plugin_and_the_client_both_see() {
    let sup = TestSupervisor::start(&examples(), &[]).await;
    let r = sup
        .client
        .post(sup.url("/plugins/echo/echo/x"))
        .body("payload")
        .send()
        .await
        .expect("echo");
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(!id.is_empty());
    let echoed: serde_json::Value = r.json().await.expect("json");
    assert_eq!(echoed["request_id"], id.as_str());

    // Answers plugd gives itself carry one too, and ids are not reused.
    let missing = sup
        .client
        .get(sup.url("/plugins/nobody/here"))
        .send()
        .await
        .expect("unknown plugin");
    assert_eq!(missing.status(), 404);
    let other = missing.headers()["x-request-id"].to_str().expect("text");
    assert!(!other.is_empty());
    assert_ne!(other, id);

    // An id the client sent that cannot serve (too long) is replaced, in the request and the
    // answer alike; a plugin cannot answer with an id of its own.
    for (sent, answer_id) in [
        ("x".repeat(200), None),
        ("client-7".to_owned(), Some("mine")),
    ] {
        let query = answer_id
            .map(|a| format!("?answer_id={a}"))
            .unwrap_or_default();
        let r = sup
            .client
            .post(sup.url(&format!("/plugins/echo/echo/x{query}")))
            .header("x-request-id", &sent)
            .body("payload")
            .send()
            .await
            .expect("echo");
        assert_eq!(r.status(), 200);
        let answered = r.headers()["x-request-id"]
            .to_str()
            .expect("text")
            .to_owned();
        let echoed: serde_json::Value = r.json().await.expect("json");
        assert_eq!(echoed["request_id"], answered.as_str(), "sent {sent:.20}");
        match answer_id {
            None => assert_ne!(answered, sent),
            Some(_) => assert_eq!(answered, sent),
        }
    }
}

#[tokio::test]
async fn request_and_response_parts_travel_both_ways() {
    let sup = TestSupervisor::start(&examples(), &[]).await;

    let r = sup
        .client
        .post(sup.url("/plugins/echo/echo/a%20b?q=x%26y&status=201"))
        .header("x-custom", "v1")
        .header("x-request-id", "req-123")
        .body("payload")
        .send()
        .await
        .expect("echo");
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-echo"], "yes");
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let echoed: serde_json::Value = r.json().await.expect("json");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/echo/a%20b");
    assert_eq!(echoed["route"], "/echo/{id}");
    assert_eq!(echoed["id"], "a b");
    assert_eq!(echoed["query"], "q=x%26y&status=201");
    assert_eq!(echoed["q"], "x&y");
    assert_eq!(echoed["body"], "payload");
    assert_eq!(echoed["request_id"], "req-123");
    let headers = echoed["headers"].as_array().expect("headers");
    assert!(headers.contains(&serde_json::json!(["x-custom", "v1"])));

    let r = sup
        .client
        .put(sup.url("/plugins/echo/files/a/b/c.txt"))
        .send()
        .await
        .expect("catch-all");
    let echoed: serde_json::Value = r.json().await.expect("json");
    assert_eq!(echoed["rest"], "a/b/c.txt");

    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let r = sup
        .client
        .post(sup.url("/plugins/echo/bytes"))
        .body(all_bytes.clone())
        .send()
        .await
        .expect("bytes");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &all_bytes[..]);

    let big = sup
        .get("/plugins/echo/big?bytes=3000000")
        .await
        .expect("big");
    assert_eq!(big.bytes().await.expect("body").len(), 3_000_000);
}

#[tokio::test]
async fn a_hundred_concurrent_requests_to_one_plugin_all_succeed() {
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let requests = (0..100).map(|i| {
        let client = sup.client.clone();
        let url = sup.url(&format!("/plugins/echo/echo/{i}"));
        tokio::spawn(async move {
            let r = client.get(url).send().await.expect("request");
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.expect("json");
            body["id"].as_str().expect("id").to_owned()
        })
    });
    let mut ids: Vec<String> = Vec::new();
    for r in futures_util::future::join_all(requests).await {
        ids.push(r.expect("task"));
    }
    ids.sort();
    let mut expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected, "every request got its own answer");

    // The same, with handlers that overlap in time: all 100 are in the plugin at once.
    let slow = (0..100).map(|_| {
        let client = sup.client.clone();
        let url = sup.url("/plugins/echo/slow?ms=300");
        tokio::spawn(async move { client.get(url).send().await.expect("slow").status() })
    });
    for status in futures_util::future::join_all(slow).await {
        assert_eq!(status.expect("task"), 200);
    }
}

/// On a multi-threaded runtime the plugin's reader runs each handler's first poll itself (no
/// task, no other thread woken), until a handler proves heavy: four first polls over 1 ms in a
/// row. From then on that handler is a task, so a long computation in it does not hold up the
/// requests behind it.
#[tokio::test]
async fn a_handler_that_proved_heavy_runs_beside_the_plugins_reader() {
    let plugin = PluginDef::echo("echo", "[env]\nECHO_WORKERS = \"2\"\n");
    let sup = TestSupervisor::start(&[plugin], &[]).await;
    for _ in 0..4 {
        let r = sup
            .get("/plugins/echo/compute?ms=5")
            .await
            .expect("compute");
        assert_eq!(r.status(), 200);
    }
    let long = {
        let client = sup.client.clone();
        let url = sup.url("/plugins/echo/compute?ms=4000");
        tokio::spawn(async move { client.get(url).send().await.expect("long").status() })
    };
    // Answered while the long computation runs: the reader is free. Were the reader computing
    // itself, /computing would answer only once it is done, and never say 1.
    sup.wait_until(
        "another request is answered during the computation",
        || async {
            match sup.get("/plugins/echo/computing").await {
                Ok(r) => r.text().await.is_ok_and(|t| t == "1"),
                Err(_) => false,
            }
        },
    )
    .await;
    assert!(
        !long.is_finished(),
        "the long computation was still running"
    );
    assert_eq!(long.await.expect("task"), 200);
}

/// A handler that waits goes on in the plugin's reader, which polled it first, on either
/// runtime: no task is spawned for it.
#[tokio::test]
async fn a_handler_that_waits_goes_on_in_the_plugins_reader() {
    let many = PluginDef::echo("many", "");
    let one = PluginDef::echo("one", "[env]\nECHO_RUNTIME = \"current_thread\"\n");
    let sup = TestSupervisor::start(&[many, one], &[]).await;
    for plugin in ["many", "one"] {
        let r = sup
            .get(&format!("/plugins/{plugin}/where"))
            .await
            .expect("where");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.text().await.expect("body"),
            "the task it started in",
            "{plugin}"
        );
    }
}

/// A handler that waits first goes on in the plugin's reader; once one of its polls there
/// computes for long, it moves to a task of its own. Two such requests then compute at the
/// same time, which two runs in the one reader never do.
#[tokio::test]
async fn a_waiting_handler_that_computes_leaves_the_plugins_reader_for_a_task() {
    let plugin = PluginDef::echo("echo", "[env]\nECHO_WORKERS = \"3\"\n");
    let sup = TestSupervisor::start(&[plugin], &[]).await;
    let long = || {
        let client = sup.client.clone();
        let url = sup.url("/plugins/echo/compute?ms=3000&rounds=6");
        tokio::spawn(async move { client.get(url).send().await.expect("long").status() })
    };
    let (first, second) = (long(), long());
    sup.wait_until("both requests compute at once", || async {
        match sup.get("/plugins/echo/computing").await {
            Ok(r) => r.text().await.is_ok_and(|t| t == "2"),
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(first.await.expect("task"), 200);
    assert_eq!(second.await.expect("task"), 200);
}
