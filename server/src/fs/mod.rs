//! Everything that touches the served tree: request path parsing ([`path`]), the root jail
//! ([`jail`]), bounded-memory sorted listings ([`list`]) and byte ranges with the fetch reader
//! ([`range`]). All of it is blocking and runs on blocking threads.

pub mod jail;
pub mod list;
pub mod path;
pub mod range;

pub use jail::{FsError, Jail, LinkResolver, Meta, Resolver};
pub use list::Lister;
pub use path::{PathError, RelPath};
pub use range::FileReader;
