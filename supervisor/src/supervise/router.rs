//! Each plugin's route table, built from the routes it declared in its handshake.
//!
//! Patterns use `{name}` for one segment and `{*name}` for the rest of the path (matchit's
//! syntax, the same as axum's). A path that matches with another method gives the list of
//! allowed methods, so the proxy can answer 405 instead of 404.
//!
//! Paths are normalised before they are matched ([`normalize`]): `.` and `..` segments are
//! resolved (a `..` that would climb above the plugin's mount is refused), and a captured value
//! that decodes to a NUL byte or to bytes that are not UTF-8 is refused, so a plugin never sees
//! either.

use percent_encoding::percent_decode_str;
use plugd_protocol::message::handshake::RouteDecl;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// How many dots a path segment stands for when it is a dot segment (`.` or `..`, also
/// percent-encoded as `%2e`), else 0. Allocates nothing: it runs on every proxied request.
fn dot_segment(segment: &str) -> usize {
    let b = segment.as_bytes();
    let (mut dots, mut i) = (0, 0);
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b.len() - i >= 3 && b[i] == b'%' && b[i + 1] == b'2' && b[i + 2] | 0x20 == b'e' {
            i += 3;
        } else {
            return 0;
        }
        dots += 1;
    }
    if dots <= 2 {
        dots
    } else {
        0
    }
}

/// `path` (the part below a plugin's mount) with its dot segments resolved, also their
/// percent-encoded forms (`%2e%2e`). Refused when a `..` would climb above the mount.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, String> {
    if !path.split('/').any(|s| dot_segment(s) > 0) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match dot_segment(segment) {
            // `/a/.` is `/a/`: the directory itself.
            1 if i == last => out.push(""),
            1 => {}
            2 => {
                if out.pop().is_none() {
                    return Err(format!(
                        "the path {path:?} climbs above the plugin's mount with '..'"
                    ));
                }
                if i == last {
                    out.push("");
                }
            }
            _ => out.push(segment),
        }
    }
    Ok(Cow::Owned(format!("/{}", out.join("/"))))
}

/// A plugin's routes, ready for lookups.
#[derive(Debug, Default)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    paths: Vec<PathRoutes>,
}

#[derive(Debug)]
struct PathRoutes {
    pattern: String,
    methods: Vec<String>,
    /// What each method's route declared, parallel to `methods`.
    kinds: Vec<RouteKind>,
}

/// What a route declared beyond its method and path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteKind {
    /// The permission the route requires, if any.
    pub permission: Option<String>,
    /// Its request body streams to the plugin, and it may answer with a streamed body.
    pub stream: bool,
    /// It takes WebSocket upgrades.
    pub websocket: bool,
    /// The largest request body it takes, if it named one.
    pub max_body: Option<u64>,
}

impl RouteKind {
    fn of(route: &RouteDecl) -> RouteKind {
        RouteKind {
            permission: route.permission.clone(),
            stream: route.stream,
            websocket: route.websocket,
            max_body: route.max_body,
        }
    }
}

/// The result of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A route matched.
    Found {
        /// The pattern as the plugin declared it.
        pattern: &'a str,
        /// What the route declared: its permission, whether it streams.
        kind: &'a RouteKind,
        /// Captured values, percent-decoded.
        params: BTreeMap<String, String>,
    },
    /// The path matched, but not with this method.
    MethodNotAllowed {
        /// The methods that would have matched.
        allowed: &'a [String],
    },
    /// No route has this path.
    NotFound,
    /// A route matched, but a captured value is not acceptable (it names the value and why).
    BadParam(String),
}

impl RouteTable {
    /// Builds the table; an invalid method or pattern, or two patterns that conflict, is an
    /// error naming the route.
    ///
    /// Each route costs one hash lookup and one insert into the matcher, so a table of `n`
    /// routes builds in O(n) pattern-length steps.
    pub fn build(routes: &[RouteDecl]) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        let mut by_pattern: HashMap<&str, usize> = HashMap::with_capacity(routes.len());
        for route in routes {
            let method_ok =
                !route.method.is_empty() && route.method.bytes().all(|b| b.is_ascii_uppercase());
            if !method_ok {
                return Err(format!(
                    "route {} {}: method must be an upper-case HTTP method",
                    route.method, route.path
                ));
            }
            if !route.path.starts_with('/') {
                return Err(format!(
                    "route {} {}: path must start with '/'",
                    route.method, route.path
                ));
            }
            if route.websocket && route.method != "GET" {
                return Err(format!(
                    "route {} {}: a WebSocket route must be a GET route",
                    route.method, route.path
                ));
            }
            match by_pattern
                .get(route.path.as_str())
                .map(|&i| &mut table.paths[i])
            {
                Some(existing) if existing.methods.contains(&route.method) => {
                    return Err(format!(
                        "route {} {} is declared twice",
                        route.method, route.path
                    ))
                }
                Some(existing) => {
                    existing.methods.push(route.method.clone());
                    existing.kinds.push(RouteKind::of(route));
                }
                None => {
                    by_pattern.insert(&route.path, table.paths.len());
                    table
                        .router
                        .insert(route.path.clone(), table.paths.len())
                        .map_err(|e| format!("route {} {}: {e}", route.method, route.path))?;
                    table.paths.push(PathRoutes {
                        pattern: route.path.clone(),
                        methods: vec![route.method.clone()],
                        kinds: vec![RouteKind::of(route)],
                    });
                }
            }
        }
        Ok(table)
    }

    /// Finds the route for `method` and `path` (the path below the plugin's mount point).
    pub fn lookup(&self, method: &str, path: &str) -> Lookup<'_> {
        let Ok(matched) = self.router.at(path) else {
            return Lookup::NotFound;
        };
        let entry = &self.paths[*matched.value];
        let Some(index) = entry.methods.iter().position(|m| m == method) else {
            return Lookup::MethodNotAllowed {
                allowed: &entry.methods,
            };
        };
        let mut params = BTreeMap::new();
        for (k, v) in matched.params.iter() {
            let value = match percent_decode_str(v).decode_utf8() {
                Ok(value) if value.contains('\0') => {
                    return Lookup::BadParam(format!("path parameter {k:?} contains a NUL byte"))
                }
                Ok(value) => value.into_owned(),
                Err(_) => {
                    return Lookup::BadParam(format!("path parameter {k:?} is not valid UTF-8"))
                }
            };
            params.insert(k.to_owned(), value);
        }
        Lookup::Found {
            pattern: &entry.pattern,
            kind: &entry.kinds[index],
            params,
        }
    }

    /// Every route as (method, path pattern).
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.paths.iter().flat_map(|p| {
            p.methods
                .iter()
                .map(move |m| (m.as_str(), p.pattern.as_str()))
        })
    }

    /// The number of method-and-path routes.
    pub fn len(&self) -> usize {
        self.paths.iter().map(|p| p.methods.len()).sum()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(method: &str, path: &str) -> RouteDecl {
        RouteDecl {
            method: method.into(),
            path: path.into(),
            ..RouteDecl::default()
        }
    }

    #[test]
    fn finds_routes_with_params_and_tells_405_from_404() {
        let table = RouteTable::build(&[
            decl("GET", "/items/{id}"),
            decl("PUT", "/items/{id}"),
            decl("GET", "/files/{*rest}"),
        ])
        .expect("valid");
        assert_eq!(table.len(), 3);
        match table.lookup("GET", "/items/a%20b") {
            Lookup::Found {
                pattern, params, ..
            } => {
                assert_eq!(pattern, "/items/{id}");
                assert_eq!(params["id"], "a b");
            }
            other => panic!("expected a match, got {other:?}"),
        }
        match table.lookup("GET", "/files/x/y.txt") {
            Lookup::Found { params, .. } => assert_eq!(params["rest"], "x/y.txt"),
            other => panic!("expected a match, got {other:?}"),
        }
        assert_eq!(
            table.lookup("DELETE", "/items/1"),
            Lookup::MethodNotAllowed {
                allowed: &["GET".to_string(), "PUT".to_string()]
            }
        );
        assert_eq!(table.lookup("GET", "/nothing"), Lookup::NotFound);
    }

    #[test]
    fn dot_segments_are_resolved_and_may_not_climb_out() {
        let ok = |p: &str| normalize(p).expect("normal").into_owned();
        assert_eq!(ok("/items/1"), "/items/1");
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/b/../c"), "/a/c");
        assert_eq!(ok("/a/%2e%2E/c"), "/c");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/a/..b/c"), "/a/..b/c", "not a dot segment");
        let err = normalize("/a/../../etc/passwd").expect_err("climbs out");
        assert!(err.contains("climbs above"), "{err}");
        assert!(normalize("/%2e%2e/x").is_err());
    }

    #[test]
    fn nul_and_invalid_utf8_in_params_are_refused() {
        let table = RouteTable::build(&[decl("GET", "/items/{id}")]).expect("valid");
        match table.lookup("GET", "/items/a%00b") {
            Lookup::BadParam(why) => assert!(why.contains("NUL"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        match table.lookup("GET", "/items/%ff%fe") {
            Lookup::BadParam(why) => assert!(why.contains("UTF-8"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_routes_are_refused_with_their_name() {
        let twice = RouteTable::build(&[decl("GET", "/a"), decl("GET", "/a")]);
        assert!(twice.expect_err("dup").contains("declared twice"));
        let lower = RouteTable::build(&[decl("get", "/a")]);
        assert!(lower.expect_err("lower").contains("upper-case"));
        let conflict = RouteTable::build(&[decl("GET", "/a/{x}"), decl("GET", "/a/{y}")]);
        assert!(conflict.expect_err("conflict").contains("/a/{y}"));
    }
}
