//! Example plugin `notes`: a small JSON CRUD service with shared state and lifecycle callbacks.
//!
//! Routes (mounted at `/plugins/notes`):
//! - `GET /notes` — every note.
//! - `POST /notes` with `{"title": …, "body": …}` — creates one, answers 201 with it.
//! - `GET /notes/{id}`, `PUT /notes/{id}`, `DELETE /notes/{id}`.

use plugd_runtime::{HttpError, Json, Plugin, Request};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Serialize)]
struct Note {
    id: u64,
    title: String,
    body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteInput {
    title: String,
    #[serde(default)]
    body: String,
}

#[derive(Default)]
struct Notes {
    next_id: Mutex<u64>,
    notes: Mutex<BTreeMap<u64, Note>>,
}

impl Notes {
    fn notes(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Note>> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn note_id(req: &Request) -> Result<u64, HttpError> {
    let raw = req.param("id").unwrap_or_default();
    raw.parse()
        .map_err(|_| HttpError::bad_request(format!("note id {raw:?} is not a number")))
}

#[tokio::main]
async fn main() -> Result<(), plugd_runtime::Error> {
    Plugin::new("notes", env!("CARGO_PKG_VERSION"))
        .with_state(Notes::default())
        .on_load(|_| async {
            tracing::info!("notes plugin loaded");
            Ok(())
        })
        .on_unload(|notes: Arc<Notes>| async move {
            tracing::info!(count = notes.notes().len(), "notes plugin unloading");
            Ok(())
        })
        .get("/notes", |_req: Request, notes: Arc<Notes>| async move {
            Json(notes.notes().values().cloned().collect::<Vec<_>>())
        })
        .post("/notes", |req: Request, notes: Arc<Notes>| async move {
            let input: NoteInput = req.json()?;
            let id = {
                let mut next = notes.next_id.lock().unwrap_or_else(|e| e.into_inner());
                *next += 1;
                *next
            };
            let note = Note {
                id,
                title: input.title,
                body: input.body,
            };
            notes.notes().insert(id, note.clone());
            Ok::<_, HttpError>((201, Json(note)))
        })
        .get(
            "/notes/{id}",
            |req: Request, notes: Arc<Notes>| async move {
                let id = note_id(&req)?;
                let note = notes.notes().get(&id).cloned();
                note.map(Json)
                    .ok_or_else(|| HttpError::not_found(format!("no note {id}")))
            },
        )
        .put(
            "/notes/{id}",
            |req: Request, notes: Arc<Notes>| async move {
                let id = note_id(&req)?;
                let input: NoteInput = req.json()?;
                let mut all = notes.notes();
                let note = all
                    .get_mut(&id)
                    .ok_or_else(|| HttpError::not_found(format!("no note {id}")))?;
                note.title = input.title;
                note.body = input.body;
                Ok::<_, HttpError>(Json(note.clone()))
            },
        )
        .delete(
            "/notes/{id}",
            |req: Request, notes: Arc<Notes>| async move {
                let id = note_id(&req)?;
                match notes.notes().remove(&id) {
                    Some(_) => Ok(()),
                    None => Err(HttpError::not_found(format!("no note {id}"))),
                }
            },
        )
        .run()
        .await
}
