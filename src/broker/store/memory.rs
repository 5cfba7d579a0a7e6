//! The in-process store: the last snapshot, kept in memory.

use parking_lot::Mutex;

use super::{Changes, SessionStore, StoreError, StoredState};

/// Keeps the last snapshot in memory: survives a stop/start of the same broker object,
/// not a process restart. (A Python session store seeds it before each start.)
#[derive(Debug, Default)]
pub struct MemoryStore {
    saved: Mutex<StoredState>,
}

impl SessionStore for MemoryStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        Ok(self.saved.lock().clone())
    }

    fn save(&self, state: StoredState) -> Result<(), StoreError> {
        *self.saved.lock() = state;
        Ok(())
    }

    fn save_changes(&self, changes: Changes) -> Result<(), StoreError> {
        let mut saved = self.saved.lock();
        let StoredState { sessions, retained } = &mut *saved;
        sessions.retain(|s| !changes.removed_sessions.contains(&s.client_id));
        for snap in changes.sessions {
            match sessions.iter_mut().find(|s| s.client_id == snap.client_id) {
                Some(slot) => *slot = snap,
                None => sessions.push(snap),
            }
        }
        for (topic, msg) in changes.retained {
            retained.retain(|m| m.topic != topic);
            retained.extend(msg);
        }
        Ok(())
    }
}
