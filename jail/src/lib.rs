//! Confinement beneath one root, for every path that touches the disk on behalf of the
//! network: the server's reads, the swarm's piece files and the client's downloads.
//!
//! - [`path`]: [`RelPath`], a path parsed once into plain names that cannot leave a root (parse,
//!   don't validate). Its parsers differ only in what they accept on top of the shared refusals:
//!   request paths (the root itself, `.` dropped), strict names for local writes, and the
//!   portable manifest names of spec/P2P.md §2.4.
//! - [`jail`]: [`Jail`], a root directory held open; every open, create, rename and remove is
//!   resolved beneath it by the kernel (`openat2` with `RESOLVE_BENEATH`), or component by
//!   component with `O_NOFOLLOW` where the kernel lacks `openat2`.
//! - [`write`]: the creating half of [`Jail`] (files, directories, renames, removals).
//!
//! Everything here is blocking; async callers run it on blocking threads or accept a short
//! metadata syscall on the runtime thread.

pub mod jail;
pub mod path;
pub mod write;

pub use jail::{FsError, Jail, LinkResolver, Links, Meta, Resolver};
pub use path::{PathError, RelPath};
pub use write::Create;
