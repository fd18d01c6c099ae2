//! What users send: files that arrive with messages (images, PDFs, text files, voice and audio),
//! fetched by a worker after the acknowledgement ([`intake`]), kept as artifacts, and turned
//! into what the model reads ([`reader`]).

pub mod background;
pub mod document;
pub mod image;
pub mod intake;
pub mod kind;
pub mod reader;
pub mod settings;
pub mod transcribe;

pub use intake::Intake;
pub use reader::{FileRef, Read, Reader, heard_quote};
pub use settings::MediaSettings;
pub use transcribe::Transcriber;
