//! Each plugin's route table, built from the routes it declared in its handshake.
//!
//! Patterns use `{name}` for one segment and `{*name}` for the rest of the path (matchit's
//! syntax, the same as axum's). A path that matches with another method gives the list of
//! allowed methods, so the proxy can answer 405 instead of 404.

use percent_encoding::percent_decode_str;
use plugd_protocol::message::handshake::RouteDecl;
use std::collections::BTreeMap;

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
    /// The permission each method requires, parallel to `methods`.
    permissions: Vec<Option<String>>,
}

/// The result of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A route matched.
    Found {
        /// The pattern as the plugin declared it.
        pattern: &'a str,
        /// The permission the route requires, if any.
        permission: Option<&'a str>,
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
}

impl RouteTable {
    /// Builds the table; an invalid method or pattern, or two patterns that conflict, is an
    /// error naming the route.
    pub fn build(routes: &[RouteDecl]) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
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
            match table.paths.iter_mut().find(|p| p.pattern == route.path) {
                Some(existing) if existing.methods.contains(&route.method) => {
                    return Err(format!(
                        "route {} {} is declared twice",
                        route.method, route.path
                    ))
                }
                Some(existing) => {
                    existing.methods.push(route.method.clone());
                    existing.permissions.push(route.permission.clone());
                }
                None => {
                    table
                        .router
                        .insert(route.path.clone(), table.paths.len())
                        .map_err(|e| format!("route {} {}: {e}", route.method, route.path))?;
                    table.paths.push(PathRoutes {
                        pattern: route.path.clone(),
                        methods: vec![route.method.clone()],
                        permissions: vec![route.permission.clone()],
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
        let params = matched
            .params
            .iter()
            .map(|(k, v)| {
                let value = percent_decode_str(v).decode_utf8_lossy().into_owned();
                (k.to_owned(), value)
            })
            .collect();
        Lookup::Found {
            pattern: &entry.pattern,
            permission: entry.permissions[index].as_deref(),
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
            permission: None,
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
    fn bad_routes_are_refused_with_their_name() {
        let twice = RouteTable::build(&[decl("GET", "/a"), decl("GET", "/a")]);
        assert!(twice.expect_err("dup").contains("declared twice"));
        let lower = RouteTable::build(&[decl("get", "/a")]);
        assert!(lower.expect_err("lower").contains("upper-case"));
        let conflict = RouteTable::build(&[decl("GET", "/a/{x}"), decl("GET", "/a/{y}")]);
        assert!(conflict.expect_err("conflict").contains("/a/{y}"));
    }
}
