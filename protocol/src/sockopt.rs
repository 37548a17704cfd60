//! The integer socket options Ferry sets that the workspace has no safe binding for (rustix,
//! socket2 and nix lack `SO_RCVLOWAT` and `TCP_NOTSENT_LOWAT`): the workspace's one place of
//! `unsafe` system calls.

use std::io;

use tokio::net::TcpStream;

/// An option [`set`] and [`get`] know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOption {
    /// `SO_RCVLOWAT`: bytes a reader waits for before it is woken (`frame_wake`).
    ReceiveLowWater,
    /// `TCP_NOTSENT_LOWAT` (Linux): unsent bytes past which the socket stops taking writes.
    NotSentLowWater,
}

/// Sets `option` to `value` (clamped to a C int).
pub fn set(socket: &TcpStream, option: IntOption, value: usize) -> io::Result<()> {
    imp::set(socket, option, value)
}

/// Reads `option` back.
pub fn get(socket: &TcpStream, option: IntOption) -> io::Result<usize> {
    imp::get(socket, option)
}

#[cfg(unix)]
#[allow(unsafe_code)]
mod imp {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd};

    use tokio::net::TcpStream;

    use super::IntOption;

    fn level_and_name(option: IntOption) -> io::Result<(libc::c_int, libc::c_int)> {
        match option {
            IntOption::ReceiveLowWater => Ok((libc::SOL_SOCKET, libc::SO_RCVLOWAT)),
            #[cfg(target_os = "linux")]
            IntOption::NotSentLowWater => Ok((libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT)),
            #[cfg(not(target_os = "linux"))]
            IntOption::NotSentLowWater => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    pub(super) fn set(socket: &TcpStream, option: IntOption, value: usize) -> io::Result<()> {
        let (level, name) = level_and_name(option)?;
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: the descriptor is borrowed from a live socket for the length of the call, and
        // the option value is a c_int on our stack whose size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(super) fn get(socket: &TcpStream, option: IntOption) -> io::Result<usize> {
        let (level, name) = level_and_name(option)?;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as above; the kernel writes at most `len` bytes into `value`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                level,
                name,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(usize::try_from(value).unwrap_or(0))
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Elsewhere no option is set: readers wake per segment and sockets keep their send buffers,
/// as before.
#[cfg(not(unix))]
mod imp {
    use std::io;

    use tokio::net::TcpStream;

    use super::IntOption;

    pub(super) fn set(_socket: &TcpStream, _option: IntOption, _value: usize) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn get(_socket: &TcpStream, _option: IntOption) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
