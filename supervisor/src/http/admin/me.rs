//! `GET /admin/whoami`: the caller's token name and role (the dashboard hides write controls
//! from a viewer; the command line checks a token with it).

use super::doc::Denied;
use crate::http::auth::Actor;
use axum::{Extension, Json};
use plugd_api::WhoAmI;

/// The token's name and role.
#[utoipa::path(
    get, path = "/whoami", operation_id = "whoami", tag = "cluster",
    responses((status = 200, description = "Who the token is", body = WhoAmI), Denied),
)]
pub async fn whoami(Extension(actor): Extension<Actor>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: actor.name,
        role: actor.role,
    })
}
