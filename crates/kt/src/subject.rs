//! What a directory entry is about, and so which record its label holds: an oracle, named by
//! its DID ([`crate::OracleRecord`]), or a person, named by their Matrix user id
//! ([`crate::PersonRecord`]).

use std::fmt::Debug;

use oracle_calls_proto::Did;

use crate::error::{Error, Result};
use crate::person::{PersonId, PersonRecord};
use crate::record::OracleRecord;

/// A directory label and the kind of record stored under it. Implemented for [`Did`] (oracles)
/// and [`PersonId`] (people) only.
pub trait Subject: sealed::Sealed + Clone + Eq + std::hash::Hash + Debug {
    /// The record stored under this kind of label.
    type Record: Clone + PartialEq + Eq + Debug;

    /// The AKD label, as text (its UTF-8 bytes are the label).
    fn label(&self) -> &str;

    /// The record's canonical encoding.
    fn encode(record: &Self::Record) -> Vec<u8>;

    /// Decodes the value proved under this label: strictly, and, where the record names its
    /// subject, only if it names this one.
    ///
    /// # Errors
    /// [`Error::MalformedRecord`], [`Error::TooLarge`].
    fn decode(&self, value: &[u8]) -> Result<Self::Record>;
}

impl Subject for Did {
    type Record = OracleRecord;

    fn label(&self) -> &str {
        self.as_str()
    }

    fn encode(record: &OracleRecord) -> Vec<u8> {
        record.to_bytes()
    }

    fn decode(&self, value: &[u8]) -> Result<OracleRecord> {
        OracleRecord::from_bytes(value)
    }
}

impl Subject for PersonId {
    type Record = PersonRecord;

    fn label(&self) -> &str {
        self.as_str()
    }

    fn encode(record: &PersonRecord) -> Vec<u8> {
        record.to_bytes()
    }

    fn decode(&self, value: &[u8]) -> Result<PersonRecord> {
        let record = PersonRecord::from_bytes(value)?;
        if record.matrix_user_id != self.as_str() {
            return Err(Error::MalformedRecord(
                "the record names another user than its label",
            ));
        }
        Ok(record)
    }
}

/// Checks a stored `(label, value)` pair as the directory's log holds it: the label is a DID
/// or a user id, and the value decodes as that label's record.
#[cfg(feature = "directory")]
pub(crate) fn check_stored(label: &str, value: &[u8]) -> Result<()> {
    if let Ok(did) = Did::parse(label) {
        return did.decode(value).map(drop);
    }
    let person = PersonId::parse(label)?;
    person.decode(value).map(drop)
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for oracle_calls_proto::Did {}
    impl Sealed for crate::person::PersonId {}
}
