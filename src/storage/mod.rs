//! Everything ecdysis keeps: the database ([`store`]: inbox, outbox, transcript, memory, leases,
//! installations), the blob store for files ([`blob`]: a directory or S3/R2), backups, the
//! sealing of OAuth tokens at rest, and the private file modes of local data.

pub mod backup;
pub mod blob;
pub mod private_files;
pub mod secret_box;
pub mod store;
