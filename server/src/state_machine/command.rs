//! The state machine's commands: what a normal log entry asks it to do, in
//! the server's own terms. The node proposes them, the state machine
//! applies them; how they are written into the log is
//! [`super::log_encoding`]'s business alone.

use kvstore_raft::Index;

/// One client write, as the log carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl Command {
    /// The key the command writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Command::Put { key, .. } | Command::Delete { key } => key,
        }
    }
}

/// What applying one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The entry's index.
    pub index: Index,
    /// For a delete: whether the key existed. For a put: always true.
    pub found: bool,
}
