//! Where there is no epoll (not unix): parked connections are small tasks
//! (connection/park.rs), and this table takes none.

use std::net::TcpStream;

/// What resumes a parked connection, given its socket back.
pub type Resume = Box<dyn FnOnce(TcpStream) + Send>;

/// The key of nothing parked.
pub const NONE: u64 = 0;

pub fn available() -> bool {
    false
}

pub fn park(socket: TcpStream, resume: Resume) -> Result<u64, (TcpStream, Resume)> {
    Err((socket, resume))
}

pub fn watch(_key: u64) {}

pub fn wake(_key: u64) {}
