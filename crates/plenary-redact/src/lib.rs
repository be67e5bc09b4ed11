//! plenary-redact
