//! Everything that touches the served tree: request path parsing ([`path`]) and the root jail
//! ([`jail`]), both from `ferry-jail`, shared with the swarm's storage and the client's
//! downloads; bounded-memory sorted listings ([`list`]), described listings kept while inotify
//! reports no change ([`entries`]), open files kept for fetches under the same watches
//! ([`files`]) and byte ranges with the fetch reader ([`range`]). All of it is blocking and
//! runs on blocking threads, except what says it cannot wait for a disk.

pub use ferry_jail::{jail, path};
pub mod entries;
pub mod files;
pub mod list;
pub mod range;

pub use entries::EntryCache;
pub use jail::{FsError, Jail, LinkResolver, Meta, Resolver};
pub use list::{Lister, NameCache};
pub use path::{PathError, RelPath};
pub use range::FileReader;
