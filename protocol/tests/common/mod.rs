//! Sample messages shared by the vector and property tests.

#![allow(dead_code)]

use bytes::Bytes;
use plugd_protocol::message::handshake::{
    Hello, HookDecl, HookMode, LaneHello, PermissionDecl, RouteDecl, Welcome,
};
use plugd_protocol::message::http::{HttpRequest, HttpResponse};
use plugd_protocol::message::settings::{SettingsMap, SettingsParams};
use plugd_protocol::{ErrorObject, ProtocolVersion};

pub fn hello() -> Hello {
    Hello {
        protocol: ProtocolVersion { major: 1, minor: 1 },
        name: "notes".into(),
        version: "1.2.3".into(),
        epoch: 1_763_900_000_000_001,
        token: "3f1c9a".into(),
        max_frame: 16 * 1024 * 1024,
        routes: vec![
            RouteDecl {
                method: "GET".into(),
                path: "/notes/{id}".into(),
                ..RouteDecl::default()
            },
            RouteDecl {
                method: "POST".into(),
                path: "/notes".into(),
                permission: Some("notes.write".into()),
                ..RouteDecl::default()
            },
        ],
        hooks: vec![HookDecl {
            name: "document.before_save".into(),
            mode: HookMode::Veto,
            priority: 10,
            fail_closed: false,
        }],
        services: vec!["notes.search".into()],
        permissions: vec![PermissionDecl {
            key: "notes.write".into(),
            description: "create and change notes".into(),
        }],
        lanes: 0,
    }
}

/// A 1.2 plugin's handshake: a streaming route and a WebSocket route.
pub fn hello_streaming() -> Hello {
    let mut hello = hello();
    hello.protocol = ProtocolVersion { major: 1, minor: 2 };
    hello.routes.extend([
        RouteDecl {
            method: "POST".into(),
            path: "/upload".into(),
            stream: true,
            max_body: Some(1 << 30),
            ..RouteDecl::default()
        },
        RouteDecl {
            method: "GET".into(),
            path: "/chat".into(),
            websocket: true,
            ..RouteDecl::default()
        },
    ]);
    hello
}

pub fn welcome() -> Welcome {
    Welcome {
        protocol: ProtocolVersion { major: 1, minor: 0 },
        supervisor: "plugd 0.1.0".into(),
        max_frame: 16 * 1024 * 1024,
        settings: Default::default(),
        stream_window: None,
        lanes: 0,
    }
}

/// A 1.3 plugin's handshake: it can open up to 8 lanes.
pub fn hello_lanes() -> Hello {
    Hello {
        protocol: ProtocolVersion { major: 1, minor: 3 },
        lanes: 8,
        ..hello()
    }
}

/// A 1.3 welcome that asks for one lane.
pub fn welcome_lanes() -> Welcome {
    Welcome {
        protocol: ProtocolVersion { major: 1, minor: 3 },
        stream_window: Some(256 * 1024),
        lanes: 1,
        ..welcome()
    }
}

/// The first request on lane 1.
pub fn lane_hello() -> LaneHello {
    LaneHello {
        epoch: 1_763_900_000_000_001,
        token: "3f1c9a".into(),
        lane: 1,
    }
}

pub fn settings_values() -> SettingsMap {
    [
        ("greeting".to_string(), rmpv::Value::from("hello")),
        ("timeout".to_string(), rmpv::Value::from(30_000)),
        (
            "tags".to_string(),
            rmpv::Value::Array(vec!["a".into(), "b".into()]),
        ),
        ("verbose".to_string(), rmpv::Value::Boolean(true)),
    ]
    .into_iter()
    .collect()
}

pub fn welcome_with_settings() -> Welcome {
    Welcome {
        protocol: ProtocolVersion { major: 1, minor: 1 },
        settings: settings_values(),
        stream_window: Some(256 * 1024),
        ..welcome()
    }
}

pub fn settings_params() -> SettingsParams {
    SettingsParams {
        values: settings_values(),
        changed: vec!["greeting".into()],
    }
}

pub fn http_request() -> HttpRequest {
    HttpRequest {
        request_id: "5a1d-7".into(),
        method: "POST".into(),
        path: "/notes/42".into(),
        route: "/notes/{id}".into(),
        params: [("id".to_string(), "42".to_string())].into_iter().collect(),
        query: "draft=1".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from_static(b"{\"title\":\"hi\"}"),
        deadline_unix_ms: 1_763_900_030_000,
        stream: false,
        websocket: false,
    }
}

pub fn http_response() -> HttpResponse {
    HttpResponse {
        status: 201,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from_static(b"{\"id\":42}"),
        stream: false,
    }
}

pub fn refusal() -> ErrorObject {
    ErrorObject::new(
        plugd_protocol::codes::HANDSHAKE_REFUSED,
        "protocol version mismatch: the plugin speaks 2.0, the supervisor speaks 1.0",
    )
}

pub fn error_with_data() -> ErrorObject {
    ErrorObject {
        code: plugd_protocol::codes::INVALID_PARAMS,
        message: "bad params".into(),
        data: Some(rmpv::Value::Map(vec![(
            rmpv::Value::from("field"),
            rmpv::Value::from("path"),
        )])),
    }
}
