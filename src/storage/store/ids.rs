//! Typed ids and times at the store's seams: an event id cannot be passed where a note id is
//! meant, and a time is always milliseconds since the Unix epoch.
//!
//! Each is a plain `i64` underneath: the same column type on both backends, the same number in
//! JSON (`serde(transparent)`) and in text (`Display`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use super::StoreError;

/// An `i64` newtype that reads and writes as the `i64` column it is.
macro_rules! int_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize,
            Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.parse().map(Self)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> i64 {
                id.0
            }
        }

        impl<DB: Database> Type<DB> for $name
        where
            i64: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <i64 as Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <i64 as Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: Database> Encode<'q, DB> for $name
        where
            i64: Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as Database>::ArgumentBuffer,
            ) -> Result<IsNull, BoxDynError> {
                <i64 as Encode<'q, DB>>::encode_by_ref(&self.0, buf)
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(value).map(Self)
            }
        }

        impl super::query::IntoArg for $name {
            fn into_arg(self) -> super::query::Arg {
                super::query::Arg::I64(Some(self.0))
            }
        }

        impl super::query::IntoArg for Option<$name> {
            fn into_arg(self) -> super::query::Arg {
                super::query::Arg::I64(self.map(|id| id.0))
            }
        }

        impl super::query::IntoArg for &$name {
            fn into_arg(self) -> super::query::Arg {
                super::query::Arg::I64(Some(self.0))
            }
        }

        impl super::query::IntoArg for &Option<$name> {
            fn into_arg(self) -> super::query::Arg {
                super::query::Arg::I64(self.map(|id| id.0))
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $name
        where
            i64: Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                <i64 as Decode<'r, DB>>::decode(value).map(Self)
            }
        }
    };
}

int_newtype!(
    /// An inbox row: one event an adapter handed in.
    EventId
);
int_newtype!(
    /// A conversation: (platform, workspace, channel, thread).
    ConversationId
);
int_newtype!(
    /// A transcript message.
    MessageId
);
int_newtype!(
    /// A memory note.
    NoteId
);
int_newtype!(
    /// An outbox row: one reply to deliver.
    ReplyId
);
int_newtype!(
    /// A compaction of a conversation's older turns.
    CompactionId
);
int_newtype!(
    /// A scheduled job (reminder, recurring job, heartbeat).
    ScheduleId
);
int_newtype!(
    /// Milliseconds since the Unix epoch: the one time type of the schema.
    UnixMs
);

impl UnixMs {
    /// Now, by the system clock.
    pub fn now() -> Self {
        Self(super::now_ms())
    }

    /// This time plus `ms` milliseconds (minus, for a negative `ms`).
    pub fn plus(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to this time (negative when `earlier` is later).
    pub fn since(self, earlier: UnixMs) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Where an event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxStatus {
    /// Waiting for a worker (new, or given back for a retry).
    Pending,
    /// A worker holds it until its lease runs out.
    Leased,
    Done,
    /// Finished with an error (the user was told).
    Failed,
    /// Failed, then queued again as a new event from the admin pages.
    Retried,
}

impl InboxStatus {
    pub const ALL: [InboxStatus; 5] = [
        InboxStatus::Pending,
        InboxStatus::Leased,
        InboxStatus::Done,
        InboxStatus::Failed,
        InboxStatus::Retried,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InboxStatus::Pending => "pending",
            InboxStatus::Leased => "leased",
            InboxStatus::Done => "done",
            InboxStatus::Failed => "failed",
            InboxStatus::Retried => "retried",
        }
    }

    /// The status a stored text names.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        text.parse()
            .map_err(|_| StoreError::Corrupt(format!("unknown inbox status `{text}`")))
    }
}

impl fmt::Display for InboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InboxStatus {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or(UnknownStatus)
    }
}

/// A text that names no [`InboxStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an inbox status (pending, leased, done, failed or retried)")]
pub struct UnknownStatus;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_and_print_as_numbers() {
        assert_eq!("42".parse::<NoteId>().unwrap(), NoteId(42));
        assert_eq!(EventId(7).to_string(), "7");
        assert_eq!(serde_json::to_string(&MessageId(3)).unwrap(), "3");
        assert_eq!(UnixMs(1_000).plus(500), UnixMs(1_500));
        assert_eq!(UnixMs(1_500).since(UnixMs(1_000)), 500);
    }

    #[test]
    fn statuses_round_trip() {
        for status in InboxStatus::ALL {
            assert_eq!(InboxStatus::parse(status.as_str()).unwrap(), status);
        }
        assert!(InboxStatus::parse("lost").is_err());
        assert_eq!(
            serde_json::to_string(&InboxStatus::Failed).unwrap(),
            "\"failed\""
        );
    }
}
